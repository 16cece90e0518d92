"""The native kernels and the batch-chunked formulations under sharded ``jit``, ``shard_map``,
``pmap`` and ``vmap``, on the 8 host devices of ``conftest.py``.

* A ResNet train step with the batch sharded over 8 devices (``jit`` of ``NamedSharding``
  inputs, automatic axes, no mesh context: what users ran): the compiled HLO has the native
  custom calls and no all-gather of a batch-sized array, and loss, gradients and batch
  statistics equal the single-device step's.
* The same step under ``jax.make_mesh``'s default explicit axes and under automatic axes (in
  ``jax.set_mesh``), native kernels on and off (``conv_config(native=False)``, with a small
  ``chunk_bytes`` so the batch-chunked formulations run their scans): compiled and compared for
  a representative subset (a CIFAR ResNet of one block per stage and a MobileNetV2, i.e. direct,
  Winograd, depthwise, im2col and Winograd-XLA formulations). Every kind of model of the registry
  (one per block kind and option set, at most two repeats of each block) is traced and lowered
  under explicit axes with the native kernels on (compiling all of them in all four modes takes
  minutes on 2 cores).
* ``shard_map``, ``pmap`` and ``vmap`` (batched kernels, a sharded mapped axis) of a native
  convolution, forward and gradients, equal the unsharded result.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxconv.models import create_model, list_models
from jaxconv.ops import _native, conv, conv_config, native_status
from helpers import normal

NATIVE = native_status().available
needs_native = pytest.mark.skipif(not NATIVE, reason="the native kernels are not available here")
# Unoptimised XLA compilation: tiny inputs run once, compile time dominates (as in test_models.py).
jit = functools.partial(jax.jit, compiler_options=dict(xla_backend_optimization_level=0,
                                                       xla_llvm_disable_expensive_passes=True))
BATCH = 16


def _close(got, want, rel=1e-4):
  """Every leaf within ``rel`` of the leaf's largest magnitude (float32 sums in another order)."""
  for (path, a), b in zip(jax.tree.flatten_with_path(got)[0], jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, jax.tree_util.keystr(path)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= rel * max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-1), (jax.tree_util.keystr(path), err)


def _batch_gathers(hlo: str, batch: int) -> list:
  """The all-gathers in compiled HLO text whose result has a dimension of the batch's size."""
  bad = []
  for line in hlo.splitlines():
    m = re.search(r"=\s*(.*?)\s+all-gather(?:-start)?\(", line)
    if m and any(batch in map(int, d.split(",")) for d in re.findall(r"\[([\d,]+)\]", m.group(1))):
      bad.append(line.strip()[:160])
  return bad


def _native_calls(hlo: str) -> int:
  return hlo.count('custom_call_target="jaxconv_')


def _train_step(model):
  """Forward in train mode (batch statistics, dropout), cross-entropy, gradients of the mean loss."""

  def step(variables, x, y):
    def loss_fn(params):
      logits, upd = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(2)})
      return _xent(logits, y), upd

    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, grads, upd

  return step


def _xent(logits, y):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.take_along_axis(logp, y[:, None], 1).mean()


SUBSET = {
    # One basic block per stage: an identity shortcut (stage 1) and strided projections (2-4).
    "resnet_cifar": (lambda: create_model("resnet18", num_classes=5, cifar_stem=True, width=8).clone(
        stage_sizes=(1, 1, 1, 1)), (16, 16, 3)),
    # SiLU, not ReLU6: at 8 channels most layers run on the narrow kernels, which sum in another
    # order than per-shard XLA; a float32 rounding that moves a pre-activation across ReLU6's
    # kink changes that gradient outright (measured: 8e-4 relative in a depthwise kernel
    # gradient, single device against sharded, with unoptimised compilation; below 1e-5 with SiLU).
    "mobilenet_v2": (lambda: create_model("mobilenet_v2", num_classes=5, width_mult=0.25, cifar_stem=True,
                                          act=jax.nn.silu,
                                          inverted_residual_setting=((1, 16, 1, 1), (6, 24, 2, 2))), (16, 16, 3)),
}


@functools.lru_cache(maxsize=None)
def _setup(name):
  build, shape = SUBSET[name]
  model = build()
  x = normal(jax.random.key(1), (BATCH, *shape))
  y = jnp.arange(BATCH) % 5
  variables = jax.device_get(jit(functools.partial(model.init, train=False))(jax.random.key(0), x))
  return model, variables, x, y


def _step(name):
  return _train_step(_setup(name)[0])


@functools.lru_cache(maxsize=None)
def _reference(name, native):
  """The single-device step (its formulations chunk the batch: ``chunk_bytes`` is small)."""
  model, variables, x, y = _setup(name)
  with conv_config(native=native, chunk_bytes=1 << 14):
    return jax.device_get(jit(_step(name))(variables, x, y))


@needs_native
def test_resnet_step_sharded_batch_runs_native_per_shard():
  """``jit`` of batch-sharded ``NamedSharding`` inputs, automatic axes, no mesh context."""
  model, variables, x, y = _setup("resnet_cifar")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  xs, ys = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (x, y))
  vs = jax.device_put(variables, NamedSharding(mesh, P()))
  compiled = jit(_train_step(model)).lower(vs, xs, ys).compile()
  hlo = compiled.as_text()
  assert _native_calls(hlo) > 10
  assert _batch_gathers(hlo, BATCH) == []
  # each device runs the forward kernels on its own 2 images (kernel gradients: [KH, KW, C, O])
  firsts = {int(m) for m in re.findall(r'= f32\[(\d+),\d+,\d+,\d+\]\{[^}]*\} custom-call\([^\n]*'
                                       r'custom_call_target="jaxconv_', hlo)}
  assert 2 in firsts and BATCH not in firsts, firsts
  out = jax.device_get(compiled(vs, xs, ys))
  _close(out, _reference("resnet_cifar", True))


@pytest.mark.parametrize("name, axis_type, native", [
    *(("resnet_cifar", t, n) for t in ("explicit", "auto") for n in (True, False)),
    ("mobilenet_v2", "explicit", True), ("mobilenet_v2", "explicit", False)])
def test_subset_step_under_mesh(name, axis_type, native):
  if native and not NATIVE:
    pytest.skip("the native kernels are not available here")
  model, variables, x, y = _setup(name)
  types = {} if axis_type == "explicit" else dict(axis_types=(AxisType.Auto,))
  mesh = jax.make_mesh((8,), ("data",), **types)  # jax.make_mesh's default: explicit axes
  with conv_config(native=native, chunk_bytes=1 << 14), jax.set_mesh(mesh):
    xs, ys = jax.device_put(x, P("data")), jax.device_put(y, P("data"))
    vs = jax.device_put(variables, P())
    compiled = jit(_step(name)).lower(vs, xs, ys).compile()
    out = jax.device_get(compiled(vs, xs, ys))
  hlo = compiled.as_text()
  assert _batch_gathers(hlo, BATCH) == []
  assert (_native_calls(hlo) > 0) == native
  _close(out, _reference(name, native))


# Tiny configurations of every registry model (widths, heads and inputs cut down).
_KW = {"resnet": dict(width=4, cifar_stem=True), "densenet": dict(growth_rate=4, init_features=8, bn_size=1, cifar_stem=True),
       "mobilenet_v2": dict(width_mult=0.25, cifar_stem=True), "alexnet": dict(hidden=8, pool_size=1),
       "vgg": dict(hidden=8, pool_size=1), "small_cnn": dict(widths=[4, 8], hidden=8)}
_SHAPE = {"lenet5": (32, 32, 1), "small_cnn": (28, 28, 1), "alexnet": (64, 64, 3), "squeezenet1_0": (64, 64, 3),
          "squeezenet1_1": (64, 64, 3)}


# How many times a model repeats its blocks (blocks per stage, dense layers per block, inverted
# residuals per setting, VGG's layer list) is data; everything else about a model decides its code
# paths (block kind, batch norm, SE, stem, ...).
_REPEATS = ("stage_sizes", "block_config", "inverted_residual_setting", "config")


def _code_paths(name):
  m = create_model(name)
  return (type(m).__name__, *((f.name, repr(getattr(m, f.name))) for f in dataclasses.fields(m)
                              if f.name not in (*_REPEATS, "parent", "name")))


def _shallow(model):
  """``model`` with at most two repeats of each block (two, so that identity shortcuts and dense
  concatenations stay): the code paths of the variant, a fraction of its tracing."""
  two = lambda n: min(n, 2)
  if hasattr(model, "stage_sizes"):
    return model.clone(stage_sizes=tuple(map(two, model.stage_sizes)))
  if hasattr(model, "block_config"):
    return model.clone(block_config=tuple(map(two, model.block_config)))
  if hasattr(model, "inverted_residual_setting"):
    return model.clone(inverted_residual_setting=tuple((t, c, two(n), s) for t, c, n, s in model.inverted_residual_setting))
  return model


def _repeats(name):
  """How many blocks (VGG: layers) ``name`` has in all."""
  m = create_model(name)
  count = {"stage_sizes": sum, "block_config": sum,
           "inverted_residual_setting": lambda rows: sum(n for _, _, n, _ in rows),
           "config": lambda layers: sum(c != "M" for c in layers)}
  return sum(f(getattr(m, k)) for k, f in count.items() if hasattr(m, k))


# For each kind of code paths, the model of the registry with the fewest blocks (resnet18 for
# resnet34, vgg11_bn for vgg13_bn..vgg19_bn, ...): the others differ from it only in their repeats,
# and tracing them all costs minutes of the suite.
_KINDS: dict = {}
for _name in list_models():
  _KINDS.setdefault(_code_paths(_name), []).append(_name)
_FAMILIES = sorted(min(names, key=_repeats) for names in _KINDS.values())


@pytest.mark.parametrize("name", _FAMILIES)
def test_every_model_traces_under_explicit_mesh(name):
  """Trace and lower (not compile) a train step (forward in train mode with dropout and batch
  statistics, gradients of the mean loss) under explicit axes, native kernels as configured,
  for every kind of model of the registry (at most two repeats of each block)."""
  kw = next((v for k, v in _KW.items() if name.startswith(k) or k in name), {})
  model = _shallow(create_model(name, num_classes=5, **kw))
  shape = (8, *_SHAPE.get(name, (32, 32, 3)))
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape))
  mesh = jax.make_mesh((8,), ("data",))
  with jax.set_mesh(mesh):
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=P("data"))
    y = jax.ShapeDtypeStruct(shape[:1], jnp.int32, sharding=P("data"))
    vs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=P()), variables)
    traced = jax.jit(_train_step(model)).trace(vs, x, y)
    loss, grads, _ = traced.out_info
    assert loss.shape == () and jax.tree.structure(grads) == jax.tree.structure(vs["params"])
    for g in jax.tree.leaves(grads):  # parameter gradients are replicated, like the parameters
      assert all(s is None for s in g.sharding.spec), g.sharding
    text = traced.lower().as_text()
  if NATIVE and name != "small_cnn":  # small_cnn's 4 and 8 channels stay on XLA
    assert "CustomSPMDPartitioning" in text


# ------------------------------------------------------------------------- one convolution


def _conv_problem(n=BATCH):
  x = normal(jax.random.key(0), (n, 8, 8, 16))
  w = normal(jax.random.key(1), (3, 3, 16, 32), scale=0.1)
  return x, w


def _loss(x, w):
  return (conv(x, w, padding="SAME") ** 2).mean()


@needs_native
@pytest.mark.parametrize("algorithm", ["direct", "winograd", "depthwise"])
def test_primitive_partitioning_rules(algorithm):
  """Only the batch stays sharded: spatial and channel shardings of ``x`` and any sharding of
  the kernel are gathered; a batch the mesh does not divide is gathered too."""
  x, w = _conv_problem()
  if algorithm == "depthwise":
    w = w[:, :, :1, :16]
  stride = (2, 2) if algorithm == "direct" else (1, 1)

  def loss(x, w):
    y = _native.conv(x, w, stride, ((1, 1), (1, 1)), (1, 1), algorithm)
    return (y ** 2).mean()

  step = jax.value_and_grad(loss, argnums=(0, 1))
  want = jax.device_get(jax.jit(step)(x, w))
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  for xspec, wspec, n in ((P(("data", "model")), P(), BATCH), (P("data", "model"), P(None, None, None, "model"), BATCH),
                          (P("data", None, None, "model"), P(), BATCH), (P("data"), P(), 12)):
    xs = jax.device_put(x[:n], NamedSharding(mesh, xspec))
    ws = jax.device_put(w, NamedSharding(mesh, wspec))
    got = jax.device_get(jax.jit(step)(xs, ws))
    ref = want if n == BATCH else jax.device_get(jax.jit(step)(x[:n], w))
    _close(got, ref, 1e-5)


@needs_native
@pytest.mark.parametrize("check_vma", [True, False])
def test_shard_map_of_native_conv(check_vma):
  """Forward and gradients inside ``shard_map`` (the kernels run on the local shard as they are),
  with JAX's varying-axes checks on (the replicated kernel is cast to varying) and off."""
  x, w = _conv_problem()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))

  def loss(x, w):
    y = jax.shard_map(lambda a, b: conv(a, b, padding="SAME"), mesh=mesh, in_specs=(P("data"), P()),
                      out_specs=P("data"), check_vma=check_vma)(x, w)
    return (y ** 2).mean()

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  assert _native_calls(step.lower(x, w).compile().as_text()) >= 3
  _close(jax.device_get(step(x, w)), jax.device_get(jax.jit(jax.value_and_grad(_loss, argnums=(0, 1)))(x, w)))


@needs_native
def test_pmap_of_native_conv():
  x, w = _conv_problem()

  def step(x, w):
    loss, (dx, dw) = jax.value_and_grad(_loss, argnums=(0, 1))(x, w)
    return jax.lax.pmean(loss, "i"), dx, jax.lax.pmean(dw, "i")

  loss, dx, dw = jax.device_get(jax.pmap(step, axis_name="i", in_axes=(0, None))(x.reshape(8, 2, *x.shape[1:]), w))
  want = jax.device_get(jax.jit(jax.value_and_grad(_loss, argnums=(0, 1)))(x, w))
  # each device's loss is the mean over its 2 images: its input gradient is 8x the global one
  _close((loss[0], dx.reshape(x.shape) / 8, dw[0]), (want[0], *want[1]))


@needs_native
def test_persistent_cache_key_names_the_kernel():
  """The partitioned call names its kernel: with the address of the partitioner's callbacks left
  out of the persistent compilation cache's key (as conftest.py runs the suite), a sharded
  program compiled again with the in-memory caches cleared (as in a new process) is a cache
  hit, and one that differs only in its kernel (Winograd, not direct: same shapes) is a miss."""
  assert jax.config.jax_remove_custom_partitioning_ptr_from_cache_key
  x = normal(jax.random.key(0), (BATCH, 5, 7, 24))  # shapes no other test compiles
  w = normal(jax.random.key(1), (3, 3, 24, 8), scale=0.1)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  events = []

  def listen(event, **_):
    if event in ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"):
      events.append(event.rsplit("_", 1)[1])

  def compile_(algorithm):
    jax.clear_caches()
    lowered = jax.jit(lambda x, w: _native.conv(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), algorithm)).lower(xs, w)
    events.clear()
    lowered.compile()
    return lowered.as_text(), list(events)

  jax.monitoring.register_event_listener(listen)
  try:
    text, _ = compile_("direct")
    assert 'jaxconv_kernel = "direct/' in text
    assert compile_("direct")[1] == ["hits"]
    assert compile_("winograd")[1] == ["misses"]
  finally:
    jax.monitoring.unregister_event_listener(listen)


@needs_native
def test_vmap_with_batched_kernels_over_a_sharded_axis():
  """``vmap`` of a native convolution over kernels too maps with a scan; under explicit axes
  with the mapped axis sharded each device maps over its own slice."""
  x = normal(jax.random.key(0), (8, 2, 6, 6, 16))
  w = normal(jax.random.key(1), (8, 3, 3, 16, 32))
  f = lambda x, w: _native.conv(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))
  step = jax.value_and_grad(lambda x, w: (jax.vmap(f)(x, w) ** 2).sum(), argnums=(0, 1))
  want = jax.device_get(jax.jit(step)(x, w))
  with jax.set_mesh(jax.make_mesh((8,), ("data",))):
    got = jax.jit(step)(jax.device_put(x, P("data")), jax.device_put(w, P("data")))
    assert got[1][1].sharding.spec[0] == "data"
  _close(jax.device_get(got), want, 1e-5)
