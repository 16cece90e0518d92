"""Per-layer summary of a Flax model: shapes, parameters, multiply-accumulates, receptive fields.

:func:`summary` never runs the model. It traces ``model.apply`` into a jaxpr (with parameters from
``jax.eval_shape(model.init, ...)``, so nothing is allocated) and walks the equations:

* **Multiply-accumulates** are computed analytically from shapes, for convolutions and matrix
  products only (``conv_general_dilated``, ``dot_general``), as torchvision's published GFLOPS
  count them. XLA's cost analysis is not used: it returns zero on some backends.
* **Receptive fields** are propagated per variable through every equation: sliding windows
  (convolutions, pools, padding, slicing) compose with :meth:`ReceptiveField.then`; elementwise
  ops, residual additions and channel concatenations take the union of their operands' fields;
  reductions over spatial axes (global pooling), flattening and matrix products over spatial axes
  make a dimension *global*. Sub-jaxprs (``jit``, ``custom_jvp_call``, ``custom_vjp_call``,
  ``checkpoint``, ``cond``) are walked recursively, so any composition of modules is handled.
* **Layers** are the Flax module calls, recorded with :func:`flax.linen.intercept_methods`: each
  module call marks its inputs and outputs with an identity primitive, which tells the walk where
  a module starts and ends. Rows are the leaf modules (``Conv``, ``Dense``, ``BatchNorm``...) in
  call order, plus a row for each convolution, matrix product, pooling window or spatial
  reduction written as a plain function inside a non-leaf module (``nn.max_pool``, ``x.mean``).

Receptive-field convention, per input spatial dimension (in input pixels): ``size``, the extent
from the first to the last input pixel one output unit sees (dilated kernels can leave holes
inside it), ``jump`` between neighbouring units, and ``start``, the first input pixel seen by
unit 0 (negative: in the padding). ``jump == 0`` means the dimension was pooled or
broadcast away: every unit along it sees the same region, ``[start, start + size)``. Fields are
not clipped to the input.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jax.interpreters import ad, batching

from jaxconv.ops.shapes import ReceptiveField

__all__ = ["LayerInfo", "Summary", "summary"]

FORMATS = ("table", "json", "markdown")


# ----------------------------------------------------------------------------------------------
# The marker primitive: identity on any number of arrays, recording which module call begins or
# ends. It only ever appears in jaxprs that summary() builds and walks; it is never executed, but
# it has an implementation and the usual rules so that Flax's lifted transforms can trace it.

_mark_p = jex_core.Primitive("jaxconv_summary_mark")
_mark_p.multiple_results = True
_mark_p.def_impl(lambda *args, **_: list(args))
_mark_p.def_abstract_eval(lambda *avals, **_: list(avals))
batching.primitive_batchers[_mark_p] = lambda args, dims, **params: (_mark_p.bind(*args, **params), dims)
ad.primitive_jvps[_mark_p] = lambda primals, tangents, **params: (
    _mark_p.bind(*primals, **params),
    list(tangents),
)


def _mark(tree: Any, call: int, kind: str) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  idx = [i for i, v in enumerate(leaves) if isinstance(v, jax.Array)]
  outs = _mark_p.bind(*[leaves[i] for i in idx], call=call, kind=kind)
  for i, o in zip(idx, outs):
    leaves[i] = o
  return jax.tree_util.tree_unflatten(treedef, leaves)


# ----------------------------------------------------------------------------------------------
# Receptive-field state of one traced variable: for each input spatial dimension d, the axis of
# the variable that runs along d (None when d was reduced or broadcast away: jump 0), and the 1-D
# ReceptiveField of unit 0 along d.


@dataclasses.dataclass(frozen=True)
class _State:
  axes: tuple[Optional[int], ...]
  rfs: tuple[ReceptiveField, ...]  # 1-D fields, one per input spatial dimension
  exact: bool = True


def _rf1(size, jump, start) -> ReceptiveField:
  return ReceptiveField((size,), (jump,), (start,))


def _num(v):
  """Fractions with denominator 1 become ints."""
  if isinstance(v, Fraction) and v.denominator == 1:
    return int(v)
  return v


def _hull(rf: ReceptiveField, n: int) -> ReceptiveField:
  """The region seen by any of ``n`` units along a dimension: a jump-0 field."""
  (z,), (j,), (s,) = rf.size, rf.jump, rf.start
  lo = s + min(0, (n - 1) * j)
  hi = s + max(0, (n - 1) * j) + z
  return _rf1(_num(hi - lo), 0, _num(lo))


def _normalize(st: Optional[_State], shape: Sequence[int]) -> Optional[_State]:
  """Dimensions lying on a size-1 axis (or an axis that no longer exists) become global."""
  if st is None:
    return None
  axes, rfs = list(st.axes), list(st.rfs)
  for d, a in enumerate(axes):
    if a is not None and (a >= len(shape) or shape[a] == 1):
      axes[d] = None
      rfs[d] = _hull(rfs[d], 1)
  return _State(tuple(axes), tuple(rfs), st.exact)


def _collapse(st: _State, d: int, shape: Sequence[int], exact: bool = True) -> _State:
  """Makes dimension ``d`` global (reduced, flattened or mixed along its axis)."""
  a = st.axes[d]
  if a is None:
    return st
  axes, rfs = list(st.axes), list(st.rfs)
  rfs[d] = _hull(rfs[d], shape[a])
  axes[d] = None
  return _State(tuple(axes), tuple(rfs), st.exact and exact)


def _collapse_all(st: Optional[_State], shape: Sequence[int], exact: bool = True) -> Optional[_State]:
  if st is None:
    return None
  for d in range(len(st.axes)):
    st = _collapse(st, d, shape, exact)
  return st


def _keep_axes(ndim: int, dropped) -> dict[int, int]:
  """Old axis -> new axis when the axes in ``dropped`` are removed (a reduction, a squeeze)."""
  kept = [a for a in range(ndim) if a not in dropped]
  return {a: k for k, a in enumerate(kept)}


def _remap(st: Optional[_State], mapping: dict, shape_in: Sequence[int]) -> Optional[_State]:
  """Moves axes by ``mapping`` (old axis -> new axis); axes not in it are collapsed (hull)."""
  if st is None:
    return None
  for d, a in enumerate(st.axes):
    if a is not None and a not in mapping:
      st = _collapse(st, d, shape_in)
  axes = tuple(None if a is None else mapping[a] for a in st.axes)
  return _State(axes, st.rfs, st.exact)


def _union1(a: ReceptiveField, b: ReceptiveField) -> ReceptiveField:
  s = min(a.start[0], b.start[0])
  e = max(a.start[0] + a.size[0], b.start[0] + b.size[0])
  return _rf1(_num(e - s), a.jump[0], _num(s))


def _union(states: Sequence[Optional[_State]], shape: Sequence[int]) -> Optional[_State]:
  """Receptive field of an elementwise combination (residual add, concatenation on channels)."""
  states = [s for s in states if s is not None]
  if not states:
    return None
  out = states[0]
  for other in states[1:]:
    axes, rfs, exact = [], [], out.exact and other.exact
    for d in range(len(out.axes)):
      a1, r1, a2, r2 = out.axes[d], out.rfs[d], other.axes[d], other.rfs[d]
      if a1 is not None and a2 is not None and (a1 != a2 or r1.jump != r2.jump):
        # Misaligned maps (should not happen in a CNN): the conservative hull.
        r1, r2, a1, a2, exact = _hull(r1, shape[a1]), _hull(r2, shape[a2]), None, None, False
      if a1 is None and a2 is None:
        axes.append(None)
        rfs.append(_union1(r1, r2))
        continue
      if a1 is None:  # make (a1, r1) the per-unit one and (r2) the global one
        a1, r1, a2, r2 = a2, r2, a1, r1
      if a2 is not None:
        axes.append(a1)
        rfs.append(ReceptiveField.union(r1, r2) if r1.jump == r2.jump else _union1(r1, r2))
        continue
      # Per-unit field r1 on axis a1, global field r2: exact if one contains the other.
      n = shape[a1]
      h = _hull(r1, n)
      g0, g1 = r2.start[0], r2.start[0] + r2.size[0]
      if g0 <= h.start[0] and h.start[0] + h.size[0] <= g1:
        axes.append(None)
        rfs.append(r2)
      elif all(
          r1.start[0] + i * r1.jump[0] <= g0 and g1 <= r1.start[0] + i * r1.jump[0] + r1.size[0]
          for i in (0, n - 1)
      ):
        axes.append(a1)
        rfs.append(r1)
      else:
        axes.append(None)
        rfs.append(_union1(h, r2))
        exact = False
    out = _State(tuple(axes), tuple(rfs), exact)
  return out


def _window(rf: ReceptiveField, k: int, stride: int, lo: int, dil: int, base_dil: int) -> tuple[ReceptiveField, bool]:
  """One sliding window along one dimension; ``base_dil > 1`` is an input dilation (transposed
  convolution), whose field is the envelope over output positions (fractional jump)."""
  if base_dil == 1:
    return rf.then(k, stride, lo, dil), True
  (z,), (j,), (s,) = rf.size, rf.jump, rf.start
  L = base_dil
  size = z + Fraction(j) * (k - 1) * dil / L
  start = s - Fraction(j) * lo / L
  jump = Fraction(j) * stride / L
  exact = ((k - 1) * dil) % L == 0 and lo % L == 0 and stride % L == 0
  return _rf1(_num(size), _num(jump), _num(start)), exact


# ----------------------------------------------------------------------------------------------
# Results.


def _rf_to_json(rf: Optional[ReceptiveField]) -> Optional[dict]:
  if rf is None:
    return None

  def conv(v):
    return int(v) if isinstance(v, int) or (isinstance(v, Fraction) and v.denominator == 1) else float(v)

  return {k: [conv(v) for v in getattr(rf, k)] for k in ("size", "jump", "start")}


def _fmt_int(n: int) -> str:
  return f"{n:,}"


def _fmt_macs(n: int) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.3f}{unit}"
  return str(n)


def _fmt_rf(rf: Optional[ReceptiveField]) -> tuple[str, str, str]:
  if rf is None:
    return "-", "-", "-"

  def f(vs):
    return "x".join(str(v) if isinstance(v, int) else f"{float(v):g}" for v in vs)

  return f(rf.size), f(rf.jump), ",".join(str(v) if isinstance(v, int) else f"{float(v):g}" for v in rf.start)


def _fmt_shape(shape) -> str:
  if shape is None:
    return "-"
  if shape and isinstance(shape[0], tuple):
    return " ".join(_fmt_shape(s) for s in shape)
  return "[" + ",".join(str(d) for d in shape) + "]"


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """One row of a :class:`Summary`.

  Attributes:
    name: the Flax module path (``"layer1/0/conv1"``), or ``"<parent>/<op>_<k>"`` for an op
      called as a plain function inside a non-leaf module (``"max_pool_0"``).
    type: the module class name (``"Conv"``), or the op (``"max_pool"``, ``"avg_pool"``,
      ``"reduce_mean"``, ``"conv"``, ``"matmul"``) for a functional row.
    output_shape: shape of the output including the batch dimension; a tuple of shapes when the
      module returns several arrays.
    params: number of parameters owned by this module (counted at its first call only).
    macs: multiply-accumulates per example (convolutions and matrix products).
    receptive_field: of the output with respect to the input (see the module docstring), or
      ``None`` if the output does not depend on the input.
    depth: nesting depth of the module (0 = the model itself).
  """

  name: str
  type: str
  output_shape: Any
  params: int
  macs: int
  receptive_field: Optional[ReceptiveField]
  depth: int

  def to_dict(self) -> dict:
    shape = self.output_shape
    return {
        "name": self.name,
        "type": self.type,
        "output_shape": [list(s) for s in shape] if shape and isinstance(shape[0], tuple) else list(shape or ()),
        "params": self.params,
        "macs": self.macs,
        "receptive_field": _rf_to_json(self.receptive_field),
        "depth": self.depth,
    }


@dataclasses.dataclass(frozen=True)
class Summary:
  """What :func:`summary` returns: printable (``str(s)``), exportable (:meth:`to_json`,
  :meth:`to_markdown`, :meth:`to_dict`).

  Attributes:
    model: the model's name (class name, or registry name).
    input_shape: the traced input shape, ``(batch_size, *input_shape)``.
    output_shape: shape of the output (a tuple of shapes for several outputs).
    layers: the rows, in call order.
    total_params: size of the ``params`` collection (every leaf counted once).
    other_variables: size of every other collection (``{"batch_stats": 9600}``).
    total_macs: multiply-accumulates per example, over the whole model.
    receptive_field: of the model's output (union over its arrays).
    output_fields: the field of each output array, keyed by its path in the output pytree
      (``"[1]['stage1']"`` for ``feats["stage1"]`` of ``(logits, feats)``).
    exact: False if a receptive field somewhere was over-approximated (a primitive with no exact
      rule, a misaligned merge, an input dilation); the reported fields then bound the true ones.
    notes: why, when ``exact`` is False.

  Example:
    >>> import json
    >>> import flax.linen as nn
    >>> from jaxconv import summary
    >>> s = summary(nn.Conv(4, (3, 3), strides=2, padding="VALID"), (9, 9, 1))
    >>> d = json.loads(s.to_json())
    >>> d["total_macs"], d["layers"][0]["output_shape"], d["receptive_field"]
    (576, [1, 4, 4, 4], {'size': [3, 3], 'jump': [2, 2], 'start': [0, 0]})
    >>> print(s.to_markdown().splitlines()[4])
    | Conv | Conv | [1,4,4,4] | 40 | 576 | 3x3 | 2x2 | 0,0 |
  """

  model: str
  input_shape: tuple[int, ...]
  output_shape: Any
  layers: tuple[LayerInfo, ...]
  total_params: int
  other_variables: dict
  total_macs: int
  receptive_field: Optional[ReceptiveField]
  exact: bool
  notes: tuple[str, ...] = ()
  output_fields: dict = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict:
    shape = self.output_shape
    return {
        "model": self.model,
        "input_shape": list(self.input_shape),
        "output_shape": [list(s) for s in shape] if shape and isinstance(shape[0], tuple) else list(shape),
        "total_params": self.total_params,
        "other_variables": dict(self.other_variables),
        "total_macs": self.total_macs,
        "receptive_field": _rf_to_json(self.receptive_field),
        "output_fields": {k: _rf_to_json(v) for k, v in self.output_fields.items()},
        "exact": self.exact,
        "notes": list(self.notes),
        "layers": [layer.to_dict() for layer in self.layers],
    }

  def to_json(self, indent: Optional[int] = 2) -> str:
    """The summary as a JSON document (see :meth:`to_dict` for the fields)."""
    return json.dumps(self.to_dict(), indent=indent)

  def _rows(self) -> list[list[str]]:
    rows = []
    for layer in self.layers:
      size, jump, start = _fmt_rf(layer.receptive_field)
      rows.append([
          layer.name,
          layer.type,
          _fmt_shape(layer.output_shape),
          _fmt_int(layer.params),
          _fmt_macs(layer.macs),
          size,
          jump,
          start,
      ])
    return rows

  _HEADER = ("Layer", "Type", "Output shape", "Params", "MACs", "RF size", "RF jump", "RF start")

  def _footer(self) -> list[str]:
    size, jump, start = _fmt_rf(self.receptive_field)
    lines = [
        f"Input shape: {_fmt_shape(self.input_shape)}   Output shape: {_fmt_shape(self.output_shape)}",
        f"Total params: {_fmt_int(self.total_params)}",
    ]
    for k, v in self.other_variables.items():
      lines.append(f"Other variables ({k}): {_fmt_int(v)}")
    lines.append(f"Total MACs per example: {_fmt_int(self.total_macs)} ({_fmt_macs(self.total_macs)})")
    lines.append(f"Output receptive field: size {size}, jump {jump}, start {start}")
    if not self.exact:
      lines.append("Receptive fields are upper bounds: " + "; ".join(self.notes))
    return lines

  def __str__(self) -> str:
    rows = self._rows()
    cols = list(zip(self._HEADER, *rows))
    widths = [max(len(c) for c in col) for col in cols]
    right = {3, 4}

    def line(cells):
      return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "=" * len(line(self._HEADER))
    out = [f"Summary of {self.model}", rule, line(self._HEADER), "-" * len(rule)]
    out += [line(r) for r in rows]
    out += [rule] + self._footer()
    return "\n".join(out)

  def to_markdown(self) -> str:
    """The summary as a GitHub-flavoured Markdown table followed by the totals."""
    out = [f"### Summary of {self.model}", "", "| " + " | ".join(self._HEADER) + " |"]
    out.append("|" + "|".join("---:" if i in (3, 4) else "---" for i in range(len(self._HEADER))) + "|")
    for r in self._rows():
      out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    out.append("")
    out += [f"- {line}" for line in self._footer()]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# Tracing and walking.


@dataclasses.dataclass
class _Call:
  id: int
  path: tuple[str, ...]
  type: str
  parent: Optional[int]
  children: int = 0
  macs: int = 0  # inclusive
  out_shape: Any = None
  rf: Optional[_State] = None
  is_row: bool = False


_WINDOW_OPS = {
    "reduce_window_max": "max_pool",
    "reduce_window_min": "min_pool",
    "reduce_window_sum": "avg_pool",
    "reduce_window": "pool",
    "conv_general_dilated": "conv",
}
_REDUCE_OPS = {
    "reduce_sum": "reduce_mean",  # a mean is a sum and a division; either way a global pool
    "reduce_max": "reduce_max",
    "reduce_min": "reduce_min",
    "reduce_prod": "reduce_prod",
    "argmax": "argmax",
    "argmin": "argmin",
    "reduce_and": "reduce_and",
    "reduce_or": "reduce_or",
}
_SUBJAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
# Primitives whose sub-jaxpr is the function they compute, with the same inputs and outputs
# (other primitives with a jaxpr parameter, such as reduce_window's reducer, are not calls).
_CALL_PRIMITIVES = {
    "pjit", "jit", "closed_call", "core_call", "named_call", "remat", "remat2", "checkpoint",
    "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
}
_AXIS_SCANS = {"cumsum": "axis", "cumprod": "axis", "cummax": "axis", "cummin": "axis",
               "cumlogsumexp": "axis", "sort": "dimension"}


def _as_jaxpr(j):
  return j.jaxpr if hasattr(j, "consts") else j


class _Walker:
  """Walks a jaxpr once, propagating receptive-field states and attributing work to calls."""

  def __init__(self, calls: dict, nd: int, batch: int, max_depth: Optional[int]):
    self.calls = calls
    self.nd = nd
    self.batch = batch
    self.max_depth = max_depth
    self.stack: list[int] = []
    self.rows: list[tuple] = []  # ("call", id) or ("op", LayerInfo-ish dict)
    self.total_macs = 0
    self.notes: list[str] = []
    self.exact = True
    self.fn_counts: dict = {}

  def note(self, msg: str):
    self.exact = False
    if msg not in self.notes:
      self.notes.append(msg)

  # -- environment helpers
  @staticmethod
  def read(env, v):
    if isinstance(v, jex_core.Literal):
      return None
    return env.get(v)

  @staticmethod
  def shape(v):
    return tuple(getattr(v.aval, "shape", ()))

  # -- the walk
  def walk(self, jaxpr, in_states, mult=1):
    env = {}
    for v, s in zip(jaxpr.invars, in_states):
      env[v] = s
    for eqn in jaxpr.eqns:
      outs = self.eqn(eqn, [self.read(env, v) for v in eqn.invars], mult)
      for v, s in zip(eqn.outvars, outs):
        if not isinstance(v, jex_core.DropVar):
          env[v] = _normalize(s, self.shape(v)) if s is not None else None
    return [self.read(env, v) for v in jaxpr.outvars]

  def add_macs(self, macs: int):
    macs //= self.batch
    self.total_macs += macs
    for c in self.stack:
      self.calls[c].macs += macs
    return macs

  def owner_is_row_or_inside(self) -> bool:
    return any(self.calls[c].is_row for c in self.stack)

  def functional_row(self, label, eqn, state, macs):
    if self.owner_is_row_or_inside():
      return
    parent = self.calls[self.stack[-1]] if self.stack else None
    prefix = "/".join(parent.path) if parent is not None else ""
    key = (prefix, label)
    k = self.fn_counts.get(key, 0)
    self.fn_counts[key] = k + 1
    name = f"{prefix}/{label}_{k}" if prefix else f"{label}_{k}"
    depth = (len(parent.path) + 1) if parent is not None else 0
    self.rows.append(("op", dict(name=name, type=label, output_shape=self.shape(eqn.outvars[0]),
                                 params=0, macs=macs, state=state, depth=depth)))

  def mark(self, eqn, ins):
    cid, kind = eqn.params["call"], eqn.params["kind"]
    c = self.calls[cid]
    if kind == "begin":
      self.stack.append(cid)
      c.is_row = self.is_row(c) and not self.owner_is_row_or_inside_excluding(cid)
    else:
      if cid not in self.stack:  # begin mark dropped (a call without array arguments)
        self.stack.append(cid)
        c.is_row = self.is_row(c) and not self.owner_is_row_or_inside_excluding(cid)
      while self.stack and self.stack[-1] != cid:
        self.stack.pop()
      self.stack.pop()
      shapes = tuple(self.shape(v) for v in eqn.outvars)
      c.out_shape = shapes[0] if len(shapes) == 1 else (shapes or None)
      if len(shapes) == 1:
        c.rf = ins[0]
      else:  # several outputs: the union of their (global) fields
        c.rf = _union([_collapse_all(s, sh) for s, sh in zip(ins, shapes)], ())
      if c.is_row:
        self.rows.append(("call", cid))
    return list(ins)

  def owner_is_row_or_inside_excluding(self, cid):
    return any(self.calls[c].is_row for c in self.stack if c != cid)

  def is_row(self, c: _Call) -> bool:
    if c.children == 0:
      return True
    return self.max_depth is not None and len(c.path) >= self.max_depth

  def eqn(self, eqn, ins, mult):
    """The output states of one equation: its rule from :attr:`_RULES`, else elementwise."""
    prim = eqn.primitive.name
    if eqn.primitive is _mark_p:
      return self.mark(eqn, ins)
    if prim in _CALL_PRIMITIVES:
      outs = self._call(eqn, ins, mult)
      if outs is not None:
        return outs
    rule = self._RULES.get(prim)
    if rule is None:
      if prim.startswith("reduce_window"):
        rule = "_reduce_window_rule"
      elif prim in _REDUCE_OPS:
        rule = "_reduce"
      elif prim in _AXIS_SCANS:
        rule = "_axis_scan"
      else:
        rule = "_elementwise"
    return getattr(self, rule)(eqn, ins, mult)

  # Primitive -> the method that gives its output states (receptive fields, and MACs for work).
  _RULES = {"cond": "_cond", "scan": "_loop", "while": "_loop", "conv_general_dilated": "_conv_rule",
            "dot_general": "_dot_rule", "reduce": "_reduce", "pad": "_pad", "slice": "_slice",
            "split": "_split", "rev": "_rev", "transpose": "_transpose", "squeeze": "_squeeze",
            "broadcast_in_dim": "_broadcast", "reshape": "_reshape", "concatenate": "_concatenate"}

  def _out_shape(self, eqn):
    return self.shape(eqn.outvars[0]) if eqn.outvars else ()

  # -- sub-jaxprs

  def _cond(self, eqn, ins, mult):
    results, macs_before = [], self.total_macs
    best = 0
    for br in eqn.params["branches"]:
      t0 = self.total_macs
      results.append(self.walk(_as_jaxpr(br), ins[1:], mult))
      best = max(best, self.total_macs - t0)
    # Count the most expensive branch once, not every branch.
    extra = (self.total_macs - macs_before) - best
    self.total_macs -= extra
    for c in self.stack:
      self.calls[c].macs -= extra
    return [_union([r[i] for r in results] + [_collapse_all(ins[0], ())], self.shape(v))
            for i, v in enumerate(eqn.outvars)]

  def _loop(self, eqn, ins, mult):
    prim = eqn.primitive.name
    body = eqn.params["jaxpr"] if prim == "scan" else eqn.params["body_jaxpr"]
    n = eqn.params["length"] if prim == "scan" else 1
    if prim == "while":
      self.note("MACs inside a while loop are counted for one iteration")
    body_j = _as_jaxpr(body)
    flat = [_collapse_all(s, self.shape(v)) if s is not None else None for s, v in zip(ins, eqn.invars)]
    n_in = len(body_j.invars)
    self.walk(body_j, (flat[-n_in:] if prim == "while" else flat)[:n_in], mult * n)
    merged = _union([s for s in flat if s is not None], ())
    if merged is not None:
      self.note(f"receptive field through {prim} made global")
    return [_State(merged.axes, merged.rfs, False) if merged is not None else None for _ in eqn.outvars]

  def _call(self, eqn, ins, mult):
    """A call primitive (pjit, custom_jvp_call, ...): walk its body; None if it has none to walk."""
    for pname in _SUBJAXPR_PARAMS:
      sub = eqn.params.get(pname)
      if sub is not None and hasattr(_as_jaxpr(sub), "eqns"):
        sj = _as_jaxpr(sub)
        if len(sj.invars) == len(ins) and len(sj.outvars) == len(eqn.outvars):
          return self.walk(sj, ins, mult)
    return None

  # -- work

  def _conv_rule(self, eqn, ins, mult):
    return [self.conv(eqn, ins, mult)]

  def _dot_rule(self, eqn, ins, mult):
    return [self.dot(eqn, ins, mult)]

  # -- receptive-field rules

  def _reduce_window_rule(self, eqn, ins, mult):
    return self.reduce_window(eqn, ins)

  def _reduce(self, eqn, ins, mult):
    prim = eqn.primitive.name
    axes = eqn.params["axes" if prim != "reduce" else "dimensions"]
    in_shape = self.shape(eqn.invars[0])
    st = ins[0]
    spatial = st is not None and any(a in axes for a in st.axes if a is not None)
    out = _remap(st, _keep_axes(len(in_shape), axes), in_shape)
    if spatial:
      self.functional_row(_REDUCE_OPS.get(prim, "reduce"), eqn, out, 0)
    return [out] * len(eqn.outvars)

  def _pad(self, eqn, ins, mult):
    st, out_shape = ins[0], self._out_shape(eqn)
    if st is None:
      return [_union([ins[1]], out_shape)]
    rfs = list(st.rfs)
    exact = st.exact
    for d, a in enumerate(st.axes):
      if a is None:
        continue
      lo, _, interior = eqn.params["padding_config"][a]
      rf, ex = _window(rfs[d], 1, 1, lo, 1, interior + 1)
      rfs[d], exact = rf, exact and ex
    return [_union([_State(st.axes, tuple(rfs), exact), _collapse_all(ins[1], ())], out_shape)]

  def _slice(self, eqn, ins, mult):
    st = ins[0]
    if st is None:
      return [None]
    strides = eqn.params["strides"] or (1,) * len(self._out_shape(eqn))
    rfs = list(st.rfs)
    for d, a in enumerate(st.axes):
      if a is not None:
        rfs[d] = rfs[d].then(1, strides[a], -eqn.params["start_indices"][a])
    return [_State(st.axes, tuple(rfs), st.exact)]

  def _split(self, eqn, ins, mult):
    st = ins[0]
    axis = eqn.params["axis"]
    outs, offset = [], 0
    for size in eqn.params["sizes"]:
      if st is None:
        outs.append(None)
      else:
        rfs = tuple(rf.then(1, 1, -offset) if a == axis else rf for a, rf in zip(st.axes, st.rfs))
        outs.append(_State(st.axes, rfs, st.exact))
      offset += size
    return outs

  def _rev(self, eqn, ins, mult):
    st = ins[0]
    if st is None:
      return [None]
    in_shape = self.shape(eqn.invars[0])
    rfs = list(st.rfs)
    for d, a in enumerate(st.axes):
      if a is not None and a in eqn.params["dimensions"]:
        (z,), (j,), (s,) = rfs[d].size, rfs[d].jump, rfs[d].start
        rfs[d] = _rf1(z, -j, s + (in_shape[a] - 1) * j)
    return [_State(st.axes, tuple(rfs), st.exact)]

  def _transpose(self, eqn, ins, mult):
    perm = eqn.params["permutation"]
    return [_remap(ins[0], {old: new for new, old in enumerate(perm)}, self.shape(eqn.invars[0]))]

  def _squeeze(self, eqn, ins, mult):
    in_shape = self.shape(eqn.invars[0])
    dims = {d % len(in_shape) for d in eqn.params["dimensions"]}
    return [_remap(ins[0], _keep_axes(len(in_shape), dims), in_shape)]

  def _broadcast(self, eqn, ins, mult):
    in_shape = self.shape(eqn.invars[0])
    bd = eqn.params["broadcast_dimensions"]
    return [_remap(ins[0], {a: bd[a] for a in range(len(in_shape))}, in_shape)]

  def _reshape(self, eqn, ins, mult):
    in_shape = self.shape(eqn.invars[0])
    mapping, blocks = self.reshape_map(in_shape, self._out_shape(eqn))
    st = ins[0]
    if st is not None and blocks:
      # An axis split into (outer, block...): a unit of the outer axis stands for a block of
      # consecutive elements, a window of size = stride = block (as in a reshape-and-mean pool).
      rfs = tuple(rf.then(blocks[a], blocks[a]) if a in blocks else rf for a, rf in zip(st.axes, st.rfs))
      st = _State(st.axes, rfs, st.exact)
    return [_remap(st, mapping, in_shape)]

  def _concatenate(self, eqn, ins, mult):
    dim = eqn.params["dimension"]
    sts = []
    for s, v in zip(ins, eqn.invars):
      if s is not None and dim in s.axes:
        self.note("receptive field of a concatenation along a spatial axis made global")
        s = _collapse(s, s.axes.index(dim), self.shape(v), exact=False)
      sts.append(s)
    return [_union(sts, self._out_shape(eqn))]

  def _axis_scan(self, eqn, ins, mult):
    prim, out_shape = eqn.primitive.name, self._out_shape(eqn)
    axis = eqn.params[_AXIS_SCANS[prim]]
    outs = []
    merged = _union([s for s in ins], out_shape) if all(
        s is None or self.shape(v) == out_shape for s, v in zip(ins, eqn.invars)) else None
    for v in eqn.outvars:
      st = merged
      if st is not None and axis in st.axes:
        st = _collapse(st, st.axes.index(axis), self.shape(v), exact=False)
        self.note(f"receptive field through {prim} along a spatial axis made global")
      outs.append(st)
    return outs

  def _elementwise(self, eqn, ins, mult):
    """Every operand with a field has the output's shape: the union; otherwise conservative."""
    out_shape, outv = self._out_shape(eqn), eqn.outvars
    if all(s is None or self.shape(v) == out_shape or all(a is None for a in s.axes)
           for s, v in zip(ins, eqn.invars)) and all(self.shape(v) == out_shape for v in outv):
      st = _union(ins, out_shape)
      return [st] * len(outv)
    states = [_collapse_all(s, self.shape(v), exact=False) for s, v in zip(ins, eqn.invars)]
    merged = _union(states, ())
    if merged is not None:
      self.note(f"no receptive-field rule for {eqn.primitive.name}: made global")
    return [merged] * len(outv)

  @staticmethod
  def reshape_map(in_shape, out_shape) -> tuple[dict, dict]:
    """Old axis -> new axis for axes that survive a reshape, and {old axis: block} for axes split
    into an outer axis and inner ones of total size ``block``. Merged axes are absent."""

    def prefix(shape):
      p, out = 1, []
      for n in shape:
        out.append(p)
        p *= n
      return out

    pi, po = prefix(in_shape), prefix(out_shape)
    mapping, blocks = {}, {}
    for a, (n, p) in enumerate(zip(in_shape, pi)):
      if n == 1:
        continue
      for b, (m, q) in enumerate(zip(out_shape, po)):
        if q != p or m == 1:
          continue
        if m == n:
          mapping[a] = b
        elif n % m == 0 and m < n:
          rest, c = n // m, b + 1
          while c < len(out_shape) and rest % out_shape[c] == 0 and rest > 1:
            rest //= out_shape[c]
            c += 1
          if rest == 1:
            mapping[a] = b
            blocks[a] = n // m
        break
    return mapping, blocks

  def conv(self, eqn, ins, mult):
    p = eqn.params
    dn = p["dimension_numbers"]
    lhs_shape, rhs_shape = self.shape(eqn.invars[0]), self.shape(eqn.invars[1])
    out_shape = self.shape(eqn.outvars[0])
    lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    ksize = [rhs_shape[i] for i in rspec[2:]]
    rhs_in, rhs_out = rhs_shape[rspec[1]], rhs_shape[rspec[0]]
    lhs_dil = p["lhs_dilation"] or (1,) * len(ksize)
    if ins[0] is None and ins[1] is None:  # computed from parameters alone (an initialiser)
      return None
    if any(d > 1 for d in lhs_dil):
      lhs_sp = [lhs_shape[i] for i in lspec[2:]]
      macs = lhs_shape[lspec[0]] * math.prod(lhs_sp) * math.prod(ksize) * rhs_in * rhs_out
    else:
      macs = math.prod(out_shape) * math.prod(ksize) * rhs_in
    macs = self.add_macs(macs * mult)

    st = ins[0]
    out = None
    if st is not None:
      rfs, axes, exact = list(st.rfs), list(st.axes), st.exact
      mapping = {lspec[0]: ospec[0]}
      for k, (la, oa) in enumerate(zip(lspec[2:], ospec[2:])):
        mapping[la] = oa
      for d, a in enumerate(st.axes):
        if a is None:
          continue
        if a in lspec[2:]:
          k = list(lspec[2:]).index(a)
          rf, ex = _window(rfs[d], ksize[k], p["window_strides"][k], p["padding"][k][0],
                           (p["rhs_dilation"] or (1,) * len(ksize))[k], lhs_dil[k])
          if not ex:
            self.note("receptive field of an input-dilated (transposed) convolution is an envelope")
          rfs[d], exact = rf, exact and ex
      out = _remap(_State(tuple(axes), tuple(rfs), exact), mapping, lhs_shape)
    if ins[1] is not None:  # a kernel computed from the input: conservative
      self.note("receptive field of a convolution with an input-dependent kernel made global")
      out = _union([out, _collapse_all(ins[1], rhs_shape, exact=False)], out_shape)
    self.functional_row("conv", eqn, out, macs)
    return out

  def dot(self, eqn, ins, mult):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = self.shape(eqn.invars[0]), self.shape(eqn.invars[1])
    out_shape = self.shape(eqn.outvars[0])
    if ins[0] is None and ins[1] is None:  # computed from parameters alone (an initialiser)
      return None
    macs = self.add_macs(math.prod(ls[a] for a in lc) * math.prod(out_shape) * mult)
    nb = len(lb)
    lfree = [a for a in range(len(ls)) if a not in lc and a not in lb]
    rfree = [a for a in range(len(rs)) if a not in rc and a not in rb]
    lmap = {a: i for i, a in enumerate(lb)}
    lmap.update({a: nb + i for i, a in enumerate(lfree)})
    rmap = {a: i for i, a in enumerate(rb)}
    rmap.update({a: nb + len(lfree) + i for i, a in enumerate(rfree)})
    out = _union([_remap(ins[0], lmap, ls), _remap(ins[1], rmap, rs)], out_shape)
    self.functional_row("matmul", eqn, out, macs)
    return out

  def reduce_window(self, eqn, ins):
    p = eqn.params
    n_ops = len(eqn.outvars)
    outs = []
    label = _WINDOW_OPS.get(eqn.primitive.name, "pool")
    for st, v in zip(ins[:n_ops], eqn.outvars):
      if st is None:
        outs.append(None)
        continue
      rfs, exact = list(st.rfs), st.exact
      for d, a in enumerate(st.axes):
        if a is None:
          continue
        rf, ex = _window(rfs[d], p["window_dimensions"][a], p["window_strides"][a], p["padding"][a][0],
                         p["window_dilation"][a], p["base_dilation"][a])
        if not ex:
          self.note("receptive field of an input-dilated pooling window is an envelope")
        rfs[d], exact = rf, exact and ex
      outs.append(_State(st.axes, tuple(rfs), exact))
    if ins[0] is not None and any(a is not None for a in ins[0].axes):
      self.functional_row(label, eqn, _union(outs, self.shape(eqn.outvars[0])), 0)
    return outs


def _count(tree) -> int:
  return int(sum(math.prod(getattr(x, "shape", ())) for x in jax.tree_util.tree_leaves(tree)))


def _own_params(params: Any, path: tuple[str, ...], inclusive: bool) -> int:
  node = params
  for p in path:
    if not hasattr(node, "get") or p not in node:
      return 0
    node = node[p]
  if not hasattr(node, "items"):
    return _count(node)
  if inclusive:
    return _count(node)
  return sum(_count(v) for v in node.values() if not hasattr(v, "items"))


def _canonical_input_shape(input_shape: Any) -> tuple[int, ...]:
  if isinstance(input_shape, str):
    raise TypeError(
        f"input_shape must be a sequence of ints (*spatial, channels), e.g. (224, 224, 3); got the "
        f"string {input_shape!r}."
    )
  if not isinstance(input_shape, Sequence) or not all(
      isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in input_shape
  ):
    raise TypeError(
        f"input_shape must be a sequence of ints (*spatial, channels), e.g. (224, 224, 3); got "
        f"{input_shape!r}."
    )
  shape = tuple(int(v) for v in input_shape)
  if not 2 <= len(shape) <= 4:
    raise ValueError(
        f"input_shape must have 1, 2 or 3 spatial dimensions and a channel dimension (2 to 4 "
        f"ints, no batch dimension), e.g. (224, 224, 3); got {input_shape!r} of length {len(shape)}."
    )
  if any(v < 1 for v in shape):
    raise ValueError(f"input_shape must contain positive sizes; got {input_shape!r}.")
  return shape


def _accepts(model, name: str) -> bool:
  try:
    sig = inspect.signature(type(model).__call__)
  except (TypeError, ValueError):
    return False
  return name in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def summary(
    model: Any,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    dtype: Any = jnp.float32,
    max_depth: Optional[int] = None,
    variables: Any = None,
    **apply_kwargs: Any,
) -> Summary:
  """Per-layer shapes, parameters, multiply-accumulates and receptive fields of a Flax model.

  Nothing is computed on arrays: the parameters come from ``jax.eval_shape(model.init, ...)`` and
  the forward pass is only traced (``jax.make_jaxpr``), so it costs no memory and takes seconds
  even for ResNet-152 at 224x224.

  MACs of a convolution are ``prod(out_spatial) * C_out * prod(k) * C_in / groups`` per example
  (bias not counted); of a matrix product, ``prod(contracted) * prod(out)``. Other ops count 0,
  as in torchvision's published GFLOPS. Receptive fields compose per spatial dimension:
  ``size' = size + (k - 1) * d * jump``, ``jump' = jump * s``, ``start' = start - pad_lo * jump``,
  and merge as the union of intervals at residual additions and concatenations.

  Args:
    model: a ``flax.linen.Module``, or a model name for :func:`jaxconv.models.create_model`.
    input_shape: one example's shape without the batch dimension, ``(*spatial, C)``: e.g.
      ``(224, 224, 3)``.
    batch_size: batch size traced (shapes include it; MACs are per example).
    dtype: input dtype.
    max_depth: if given, modules at this nesting depth are rows, with everything inside them
      folded in (``max_depth=1``: one row per top-level block). Default: the leaf modules.
    variables: the model's variables (or their shapes); default ``jax.eval_shape(model.init, ...)``.
    **apply_kwargs: passed to ``model.init`` and ``model.apply`` (``train=False`` is passed when the
      model accepts ``train`` and it is not given).

  Returns:
    A :class:`Summary`; ``print(s)`` shows the table, ``s.to_json()`` and ``s.to_markdown()``
    export it.

  Raises:
    ValueError, TypeError: for a bad ``input_shape``, ``batch_size`` or ``max_depth``, an unknown
      model name, or a model that is not a Flax module.

  Example:
    >>> import flax.linen as nn
    >>> from jaxconv import summary
    >>> class Tiny(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = nn.relu(nn.Conv(8, (3, 3), padding=1)(x))
    ...     x = nn.max_pool(x, (2, 2), strides=(2, 2))
    ...     return nn.Dense(10)(x.mean(axis=(1, 2)))
    >>> s = summary(Tiny(), (16, 16, 3))
    >>> [(l.name, l.type, l.params, l.macs) for l in s.layers]
    [('Conv_0', 'Conv', 224, 55296), ('max_pool_0', 'max_pool', 0, 0), ('reduce_mean_0', 'reduce_mean', 0, 0), ('Dense_0', 'Dense', 90, 80)]
    >>> s.layers[1].receptive_field
    ReceptiveField(size=(4, 4), jump=(2, 2), start=(-1, -1))
    >>> s.total_params, s.total_macs
    (314, 55376)
  """
  import flax.linen as nn

  name = None
  if isinstance(model, str):
    from jaxconv import models  # lazily: models sit above this tool

    name = model
    model = models.create_model(model)
  if not isinstance(model, nn.Module):
    raise TypeError(
        f"model must be a flax.linen.Module or a registered model name; got {type(model).__name__}."
    )
  shape = _canonical_input_shape(input_shape)
  if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
  if max_depth is not None and (not isinstance(max_depth, (int, np.integer)) or max_depth < 0):
    raise ValueError(f"max_depth must be None or an int >= 0; got {max_depth!r}.")
  nd = len(shape) - 1
  if "train" not in apply_kwargs and _accepts(model, "train"):
    apply_kwargs["train"] = False

  x = jax.ShapeDtypeStruct((batch_size,) + shape, jnp.dtype(dtype))
  if variables is not None:
    variables = jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v)), variables)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

  calls: dict[int, _Call] = {}
  stack: list[int] = []

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name == "setup" or (stack and calls[stack[-1]].path == tuple(mod.path)
                                          and calls[stack[-1]].type == type(mod).__name__):
      return next_fun(*args, **kwargs)
    cid = len(calls)
    parent = stack[-1] if stack else None
    calls[cid] = _Call(cid, tuple(str(p) for p in mod.path), type(mod).__name__, parent)
    if parent is not None:
      calls[parent].children += 1
    args, kwargs = _mark((args, kwargs), cid, "begin")
    stack.append(cid)
    try:
      out = next_fun(*args, **kwargs)
    finally:
      stack.pop()
    return _mark(out, cid, "end")

  if variables is None:
    # One trace of init gives both the variables' shapes and the forward computation (tracing
    # apply after an eval_shape of init would trace the model twice). Parameter initialisers do
    # not depend on the input, so they add neither MACs nor receptive fields.
    def fwd(x):
      with nn.intercept_methods(interceptor):
        return model.init_with_output(rngs, x, **apply_kwargs)

    args = (x,)
  else:

    def fwd(variables, x):
      with nn.intercept_methods(interceptor):
        return model.apply(variables, x, rngs={"dropout": rngs["dropout"]}, **apply_kwargs)

    args = (variables, x)

  # Trace jaxconv's convolutions in their plain XLA formulation: the analysis then reads one
  # conv_general_dilated per convolution rather than the per-tap products other plans use.
  from jaxconv.ops import conv_config

  with conv_config(forward="xla"):
    closed, out_shapes = jax.make_jaxpr(fwd, return_shape=True)(*args)
  if variables is None:
    out_shapes, variables = out_shapes
  n_out = len(jax.tree_util.tree_leaves(out_shapes))
  jaxpr = closed.jaxpr

  walker = _Walker(calls, nd, batch_size, max_depth)
  in_state = _normalize(
      _State(tuple(range(1, nd + 1)), tuple(ReceptiveField.identity(1) for _ in range(nd))), (batch_size,) + shape
  )
  # The input is the last argument traced; everything else (variables) has no field.
  outs = walker.walk(jaxpr, [None] * (len(jaxpr.invars) - 1) + [in_state])[:n_out]

  params = variables.get("params", {}) if hasattr(variables, "get") else {}
  seen_paths: set = set()
  rows = []
  for kind, item in walker.rows:
    if kind == "op":
      st = item.pop("state")
      rows.append(LayerInfo(receptive_field=_to_rf(st), **item))
      continue
    c = calls[item]
    n_params = 0
    if c.path not in seen_paths:
      seen_paths.add(c.path)
      n_params = _own_params(params, c.path, inclusive=c.children > 0)
    rows.append(LayerInfo(
        name="/".join(c.path) or c.type,
        type=c.type,
        output_shape=c.out_shape,
        params=n_params,
        macs=c.macs,
        receptive_field=_to_rf(c.rf),
        depth=len(c.path),
    ))
  # Parameters owned directly by non-leaf modules that are not rows (rare): attribute them to
  # a row of their own so that the rows add up to the total.
  for c in calls.values():
    if not c.is_row and c.path not in seen_paths and not _inside_row(c, calls):
      own = _own_params(params, c.path, inclusive=False)
      seen_paths.add(c.path)
      if own:
        rows.append(LayerInfo("/".join(c.path) or c.type, c.type + " (own params)", c.out_shape, own, 0,
                              _to_rf(c.rf), len(c.path)))

  shapes = tuple(tuple(v.aval.shape) for v in jaxpr.outvars[:n_out])
  states = [_collapse_all(s, sh) for s, sh in zip(outs, shapes)] if len(shapes) > 1 else outs
  out_rf = _union(states, shapes[0] if len(shapes) == 1 else ())
  collections = variables if hasattr(variables, "items") else {}
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(out_shapes)[0]]
  return Summary(
      model=name or type(model).__name__,
      input_shape=(batch_size,) + shape,
      output_shape=shapes[0] if len(shapes) == 1 else shapes,
      layers=tuple(rows),
      total_params=_count(params),
      other_variables={k: _count(v) for k, v in collections.items() if k != "params"},
      total_macs=walker.total_macs,
      receptive_field=_to_rf(out_rf),
      exact=walker.exact and (out_rf is None or out_rf.exact),
      notes=tuple(walker.notes),
      output_fields={p: _to_rf(st) for p, st in zip(paths, outs)},
  )


def _inside_row(c: _Call, calls: dict) -> bool:
  p = c.parent
  while p is not None:
    if calls[p].is_row:
      return True
    p = calls[p].parent
  return False


def _to_rf(st: Optional[_State]) -> Optional[ReceptiveField]:
  if st is None:
    return None
  return ReceptiveField(
      size=tuple(r.size[0] for r in st.rfs),
      jump=tuple(r.jump[0] for r in st.rfs),
      start=tuple(r.start[0] for r in st.rfs),
  )
