"""Timing and agreement: the two measurements every benchmark row is made of.

Both are plain functions over callables and arrays, with the clock and the wait injectable, so
the statistics are tested on fake timers and the agreement check on hand-made arrays.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall-clock times of one measured computation.

  Attributes:
    times_s: the timed runs (seconds), warm-up excluded, in the order they ran.
    compile_s: time spent in ``prepare`` (tracing, lowering and compiling a jitted function),
      or ``None`` for eager code that compiles nothing.
    warmup: the number of untimed warm-up runs before ``times_s``.
    first_run_s: the time of the first warm-up run (``None`` without warm-up); for eager code
      (PyTorch) it holds one-off costs such as allocator growth.
  """

  times_s: tuple[float, ...]
  compile_s: Optional[float] = None
  warmup: int = 0
  first_run_s: Optional[float] = None

  @property
  def n(self) -> int:
    """Number of timed runs."""
    return len(self.times_s)

  @property
  def median_s(self) -> float:
    """Median of the timed runs (the mean of the middle two for an even count)."""
    return float(statistics.median(self.times_s))

  @property
  def min_s(self) -> float:
    return float(min(self.times_s))

  @property
  def max_s(self) -> float:
    return float(max(self.times_s))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready summary: median/min/max, every run, compile time and warm-up count."""
    return {
        "median_s": self.median_s,
        "min_s": self.min_s,
        "max_s": self.max_s,
        "n": self.n,
        "times_s": list(self.times_s),
        "compile_s": self.compile_s,
        "warmup": self.warmup,
        "first_run_s": self.first_run_s,
    }


def block(out: Any) -> Any:
  """Waits until every array in the pytree ``out`` is computed (JAX async dispatch, CUDA torch)."""
  import jax  # local: keeps this module importable (and its doctests cheap) without a backend

  out = jax.block_until_ready(out)
  torch = sys.modules.get("torch")
  if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
    torch.cuda.synchronize()
  return out


def measure(
    run: Optional[Callable[[], Any]] = None,
    *,
    prepare: Optional[Callable[[], Callable[[], Any]]] = None,
    repeats: int = 5,
    warmup: int = 1,
    budget_s: Optional[float] = None,
    min_repeats: int = 3,
    timer: Callable[[], float] = time.perf_counter,
    wait: Callable[[Any], Any] = block,
) -> tuple[Timing, Any]:
  """Times a computation: compile apart, then warm-up runs, then ``repeats`` timed runs.

  Give either ``run`` (a zero-argument callable, e.g. eager PyTorch) or ``prepare`` (a
  zero-argument callable that compiles and returns ``run``; its duration is ``compile_s``). Each
  run is timed from the call until ``wait(result)`` returns, so asynchronous dispatch is
  included. With ``budget_s``, the number of timed runs is cut to what fits the budget judging by
  the last warm-up run, but never below ``min(min_repeats, repeats)``: slow rows cost seconds,
  not minutes. :func:`measure_interleaved` does the same for several computations at once.

  Args:
    run: the computation, when nothing needs compiling.
    prepare: compiles and returns the computation (timed as ``compile_s``).
    repeats: timed runs (>= 1).
    warmup: untimed runs before timing (>= 0).
    budget_s: optional time budget for the timed runs.
    min_repeats: the fewest timed runs a budget may leave.
    timer: a clock in seconds (injectable for tests).
    wait: called on each result before the clock stops (default :func:`block`).

  Returns:
    ``(timing, result)`` where ``result`` is the output of the last timed run.

  Example:
    >>> clock = iter([0.0, 2.0,  2.0, 2.5,  3.0, 3.1,  4.0, 4.3,  5.0, 5.2]).__next__
    >>> t, out = measure(prepare=lambda: (lambda: 42), repeats=3, warmup=1, timer=clock,
    ...                  wait=lambda o: o)
    >>> out, t.compile_s, t.first_run_s, [round(x, 3) for x in t.times_s], round(t.median_s, 3)
    (42, 2.0, 0.5, [0.1, 0.3, 0.2], 0.2)
  """
  if (run is None) == (prepare is None):
    raise TypeError("measure needs exactly one of run= or prepare=.")
  if prepare is None:
    prepare, eager = (lambda: run), ("_",)
  else:
    eager = ()
  result = measure_interleaved({"_": prepare}, eager=eager, repeats=repeats, warmup=warmup, budget_s=budget_s,
                               min_repeats=min_repeats, timer=timer, waits={"_": wait})["_"]
  if isinstance(result, BaseException):
    raise result
  return result


def measure_interleaved(
    prepares: Mapping[str, Callable[[], Callable[[], Any]]],
    *,
    eager: Sequence[str] = (),
    repeats: int = 5,
    warmup: int = 1,
    budget_s: Optional[float] = None,
    min_repeats: int = 3,
    timer: Callable[[], float] = time.perf_counter,
    waits: Optional[Mapping[str, Callable[[Any], Any]]] = None,
) -> dict[str, Union[tuple[Timing, Any], Exception]]:
  """Times several computations round by round, so a busy machine slows each of them alike.

  Every ``prepare`` runs first (timed as its ``compile_s``, except for the names in ``eager``,
  which compile nothing and get ``None``); then ``warmup`` rounds, then timed rounds, each round
  running every computation once in the given order. Each computation gets its own number of
  timed runs (``repeats``, cut by ``budget_s`` as in :func:`measure`) and drops out of the rounds
  when it has them. A computation that raises is reported by its exception; the others go on.

  Args:
    prepares: name -> zero-argument callable returning the zero-argument computation.
    eager: names whose ``prepare`` compiles nothing.
    repeats, warmup, budget_s, min_repeats, timer: as in :func:`measure`.
    waits: name -> wait function (default :func:`block`).

  Returns:
    name -> ``(timing, last result)``, or the exception the computation raised.

  Example:
    >>> clock = iter(range(100)).__next__
    >>> out = measure_interleaved({"a": lambda: (lambda: "A"), "b": lambda: (lambda: "B")},
    ...                           eager=["b"], repeats=2, warmup=1, timer=clock, waits={"a": str, "b": str})
    >>> out["a"][0].compile_s, out["b"][0].compile_s   # clock ticks 0-1: compiling "a"
    (1, None)
    >>> out["a"][0].times_s, out["b"][0].times_s, out["a"][1]  # a: 2-3 warm-up, 6-7 and 10-11 timed
    ((1, 1), (1, 1), 'A')
  """
  if not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be an int >= 1; got {repeats!r}.")
  if not isinstance(warmup, int) or warmup < 0:
    raise ValueError(f"warmup must be an int >= 0; got {warmup!r}.")
  waits = dict(waits or {})
  runs: dict[str, Callable[[], Any]] = {}
  failed: dict[str, Exception] = {}
  compile_s: dict[str, Optional[float]] = {}
  for name, prepare in prepares.items():
    try:
      if name in eager:
        runs[name], compile_s[name] = prepare(), None
      else:
        t0 = timer()
        runs[name] = prepare()
        compile_s[name] = timer() - t0
    except Exception as e:  # noqa: BLE001 - reported per computation
      failed[name] = e

  def once(name):
    t0 = timer()
    out = waits.get(name, block)(runs[name]())
    return timer() - t0, out

  first: dict[str, float] = {}
  last: dict[str, float] = {}
  times: dict[str, list[float]] = {name: [] for name in runs}
  outs: dict[str, Any] = {}
  for i in range(warmup):
    for name in list(runs):
      try:
        last[name], _ = once(name)
      except Exception as e:  # noqa: BLE001
        failed[name] = e
        del runs[name]
        continue
      if i == 0:
        first[name] = last[name]
  want = {}
  for name in runs:
    n = repeats
    if budget_s is not None and last.get(name, 0) > 0:
      n = max(min(min_repeats, repeats), min(repeats, int(budget_s // last[name])))
    want[name] = n
  for r in range(max(want.values(), default=0)):
    for name in list(runs):
      if r >= want[name]:
        continue
      try:
        dt, outs[name] = once(name)
      except Exception as e:  # noqa: BLE001
        failed[name] = e
        del runs[name]
        continue
      times[name].append(dt)
  result: dict[str, Union[tuple[Timing, Any], Exception]] = {}
  for name in prepares:
    if name in failed:
      result[name] = failed[name]
    else:
      result[name] = (Timing(tuple(times[name]), compile_s[name], warmup, first.get(name)), outs.get(name))
  return result


@dataclasses.dataclass(frozen=True)
class Agreement:
  """How closely one implementation's outputs match the reference's.

  Attributes:
    max_abs_err: the largest ``|actual - expected|`` over every output array.
    rel_err: the worst, over the output arrays, of ``max|actual - expected| / max|expected|``
      (an error relative to the output's scale, robust to entries near zero).
    tol: the tolerance ``rel_err`` was compared with.
    ok: ``rel_err <= tol``, shapes equal and nothing non-finite where the reference is finite.
    detail: why ``ok`` is false, if it is.
  """

  max_abs_err: float
  rel_err: float
  tol: float
  ok: bool
  detail: str = ""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _leaves(tree: Any) -> list[np.ndarray]:
  import jax

  out = []
  for leaf in jax.tree_util.tree_leaves(tree):
    if hasattr(leaf, "detach"):  # a torch tensor
      leaf = leaf.detach().float().cpu().numpy()
    out.append(np.asarray(np.asarray(leaf).astype(np.float64)))
  return out


def agreement(actual: Any, expected: Any, *, tol: float) -> Agreement:
  """Compares two pytrees of arrays leaf by leaf, relative to each expected array's scale.

  ``rel_err = max_leaves max|a - e| / max|e|`` (``max|e|`` floored at the smallest normal
  float32, so an all-zero reference needs an all-zero answer).

  Args:
    actual: the implementation's outputs (arrays, tuples of arrays, torch tensors).
    expected: the reference's outputs, the same structure.
    tol: the largest accepted ``rel_err``.

  Returns:
    An :class:`Agreement`.

  Example:
    >>> import numpy as np
    >>> e = np.array([1.0, -2.0, 4.0])
    >>> a = agreement(e + np.array([0.0, 0.0, 4e-5]), e, tol=1e-4)
    >>> a.ok, f"{a.max_abs_err:.1e}", f"{a.rel_err:.1e}"
    (True, '4.0e-05', '1.0e-05')
    >>> agreement((e, e), (e, 2 * e), tol=1e-4).ok
    False
  """
  a_leaves, e_leaves = _leaves(actual), _leaves(expected)
  if len(a_leaves) != len(e_leaves):
    return Agreement(math.inf, math.inf, tol, False, f"{len(a_leaves)} outputs, expected {len(e_leaves)}")
  max_abs = rel = 0.0
  for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
    if a.shape != e.shape:
      return Agreement(math.inf, math.inf, tol, False, f"output {i} has shape {a.shape}, expected {e.shape}")
    if a.size == 0:
      continue
    err = np.abs(a - e)
    bad = ~np.isfinite(err) & np.isfinite(e)
    if bad.any():
      return Agreement(math.inf, math.inf, tol, False, f"output {i} has {int(bad.sum())} non-finite values")
    err = np.where(np.isfinite(err), err, 0.0)
    scale = max(float(np.max(np.abs(np.where(np.isfinite(e), e, 0.0)))), float(np.finfo(np.float32).tiny))
    max_abs = max(max_abs, float(err.max()))
    rel = max(rel, float(err.max()) / scale)
  ok = rel <= tol
  return Agreement(max_abs, rel, tol, ok, "" if ok else f"relative error {rel:.2e} > tolerance {tol:.0e}")


def default_tolerance(dtype: str, backend: str) -> float:
  """Accepted relative error of an implementation against the reference.

  float32 on CPU sums in full precision (only the order of additions differs): ``1e-4``. On
  GPU/TPU, XLA's default precision for float32 convolutions may use TF32/bfloat16 passes:
  ``2e-2``. bfloat16/float16 inputs: ``5e-2``.

  Example:
    >>> default_tolerance("float32", "cpu"), default_tolerance("bfloat16", "gpu")
    (0.0001, 0.05)
  """
  if dtype in ("bfloat16", "float16"):
    return 5e-2
  return 1e-4 if backend == "cpu" else 2e-2
