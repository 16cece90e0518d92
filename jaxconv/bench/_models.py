"""Model suites: train-step throughput (images/s) of jaxconv models against stock peers.

One train step = forward in train mode, softmax cross-entropy, gradients, SGD with momentum
(0.01, 0.9), batch-statistics update; on a fixed random batch from a seed. The jaxconv side comes
from ``jaxconv.models.create_model``; the peers are the stock Flax and PyTorch models of
:mod:`jaxconv.bench._stock`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from jaxconv.bench._harness import measure_interleaved

LEARNING_RATE = 0.01
MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class ModelCase:
  """One model-suite row: a model, its input size and batch.

  Attributes:
    name: the stock name (``lenet5``, ``resnet18_cifar``, ``resnet50``).
    zoo_names: names to try, in order, in ``jaxconv.models.list_models()``.
    zoo_kwargs: keyword arguments for ``create_model`` besides ``num_classes``.
    image: ``(H, W, C)``.
    num_classes: classifier width.
    batch: batch size; quick_batch: batch size under ``--quick`` (0: not in the quick run).
    large: GPU-sized; runs only on accelerators or with ``--include-large``.
  """

  name: str
  zoo_names: tuple[str, ...]
  zoo_kwargs: tuple[tuple[str, Any], ...]
  image: tuple[int, int, int]
  num_classes: int
  batch: int
  quick_batch: int = 0
  large: bool = False
  gpu_batch: Optional[int] = None


MODEL_SUITES: dict[str, tuple[str, ModelCase]] = {
    "lenet5_train": (
        "LeNet-5 train step on 28x28x1, batch 128",
        ModelCase("lenet5", ("lenet5",), (("input_size", 28),), (28, 28, 1), 10, 128, quick_batch=32),
    ),
    "resnet18_cifar_train": (
        "ResNet-18 (CIFAR variant) train step on 32x32x3, batch 128",
        ModelCase("resnet18_cifar", ("resnet18",), (("cifar_stem", True),), (32, 32, 3), 10, 128),
    ),
    "resnet50_train": (
        "ResNet-50 train step on 224x224x3 (GPU-sized: runs on accelerators or with --include-large)",
        ModelCase("resnet50", ("resnet50",), (), (224, 224, 3), 1000, 16, large=True, gpu_batch=128),
    ),
}


def _zoo_model(case: ModelCase, dtype: Any) -> tuple[Optional[Any], Optional[str]]:
  """``(module, None)`` from the jaxconv zoo, or ``(None, why not)``."""
  try:
    from jaxconv import models
  except Exception as e:  # noqa: BLE001 - the zoo is optional for the benchmark suite
    return None, f"jaxconv.models unavailable ({type(e).__name__}: {e}); the jaxconv column is omitted."
  available = set(models.list_models())
  for name in case.zoo_names:
    if name in available:
      return models.create_model(name, num_classes=case.num_classes, dtype=dtype, **dict(case.zoo_kwargs)), None
  return None, f"jaxconv.models has none of {list(case.zoo_names)}; the jaxconv column is omitted."


def _flax_train_prepare(model: Any, x: np.ndarray, y: np.ndarray, dtype: Any, seed: int, steps: int = 1):
  """``prepare`` for :func:`measure`, its wait function and a list that receives the loss of every
  run; with ``steps > 1`` one run is that many steps chained in one compiled loop (its last loss)."""
  import jax
  import jax.numpy as jnp
  import optax

  xj = jax.device_put(jnp.asarray(x, dtype=dtype))
  yj = jax.device_put(jnp.asarray(y))
  # The RBG generator: XLA:CPU compiles a model's random initialisation about 3x faster than with
  # threefry (LeNet-5: 3 s instead of 9 s); the statistics of the initial weights do not matter here.
  key = jax.random.key(seed, impl="rbg")
  tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)

  @jax.jit  # one compile for the whole initial state, not one per eager op
  def init(k, xb):
    variables = model.init(k, xb, train=False)
    return variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"])

  state0 = init(key, xj[:1])

  def loss_fn(p, s, xb, yb, k):
    v = {"params": p, "batch_stats": s} if s else {"params": p}
    logits, upd = model.apply(v, xb, train=True, mutable=["batch_stats"], rngs={"dropout": k})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), yb).mean()
    return loss, upd.get("batch_stats", s)

  def step(state, xb, yb, k):
    p, s, o = state
    (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s, xb, yb, k)
    updates, o = tx.update(grads, o, p)
    return (optax.apply_updates(p, updates), s, o), loss

  def chained(state, xb, yb, k):
    state, losses = jax.lax.scan(lambda st, _: step(st, xb, yb, k), state, None, length=steps)
    return state, losses[-1]

  losses: list[float] = []

  def prepare():
    compiled = jax.jit(step if steps == 1 else chained, donate_argnums=0).lower(state0, xj, yj, key).compile()
    box = [state0]  # donated by the first run; prepare runs once

    def run():
      box[0], loss = compiled(box[0], xj, yj, key)
      return loss, box[0]

    run.compiled = compiled  # for profiles and HLO counts (benchmarks/profile_step.py, accelerator.py)
    return run

  def wait(out):
    out = jax.block_until_ready(out)
    losses.append(float(out[0]))
    return out

  return prepare, wait, losses


def _forward_flops(model: Any, x: np.ndarray, dtype: Any) -> Optional[float]:
  """XLA's operation count of one eval-mode forward pass over the batch (None if unavailable)."""
  import jax
  import jax.numpy as jnp

  try:
    xj = jnp.asarray(x, dtype=dtype)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), xj[:1], train=False))
    cost = jax.jit(lambda v, xb: model.apply(v, xb, train=False)).lower(variables, xj).cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    flops = float(cost.get("flops", 0.0))
    return flops if flops > 0 else None
  except Exception:  # noqa: BLE001 - a missing cost model only loses the ceiling fraction
    return None


def _torch_train_prepare(torch: Any, name: str, case: ModelCase, x: np.ndarray, y: np.ndarray, dtype: str, seed: int):
  torch.manual_seed(seed)
  model = __import__("jaxconv.bench._stock", fromlist=["torch_model"]).torch_model(torch, name, case.num_classes)
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
  from jaxconv.bench._impls import torch_device

  dev = torch_device(torch)
  model = model.to(dev, tdtype).train()
  xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(dev, tdtype)
  yt = torch.from_numpy(y.astype(np.int64)).to(dev)
  opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
  lossf = torch.nn.CrossEntropyLoss()
  losses: list[float] = []

  def run():
    opt.zero_grad(set_to_none=True)
    loss = lossf(model(xt).float(), yt)
    loss.backward()
    opt.step()
    return loss.detach()

  def wait(out):
    losses.append(float(out))
    return out

  return run, wait, losses


def run_model_case(
    case: ModelCase,
    *,
    batch: int,
    impls: tuple[str, ...],
    dtype: str,
    repeats: int,
    warmup: int,
    budget_s: Optional[float],
    seed: int,
    torch: Any = None,
    ceiling: Optional[float] = None,
) -> dict[str, Any]:
  """Measures one model's train step for each implementation; returns the result row."""
  import jax.numpy as jnp

  from jaxconv.bench._stock import stock_flax_model

  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, *case.image), dtype=np.float32)
  y = rng.integers(0, case.num_classes, size=(batch,)).astype(np.int32)
  jdtype = jnp.dtype(dtype)
  stock = stock_flax_model(case.name, case.num_classes, jdtype)
  fwd_flops = _forward_flops(stock, x, jdtype)
  row: dict[str, Any] = {
      "model": case.name,
      "batch": batch,
      "image": list(case.image),
      "flops": 3 * fwd_flops if fwd_flops else None,
      "flops_note": "3x the forward pass's FLOPs by XLA's cost analysis of the stock Flax model",
      "results": {},
      "notes": [],
  }
  prepares, waits, losses, extra = {}, {}, {}, {}
  for impl in impls:
    try:
      if impl == "jaxconv":
        model, why = _zoo_model(case, jdtype)
        if model is None:
          row["notes"].append(why)
          continue
        extra[impl] = {"zoo_model": type(model).__name__}
        prepares[impl], waits[impl], losses[impl] = _flax_train_prepare(model, x, y, jdtype, seed)
      elif impl == "flax":
        prepares[impl], waits[impl], losses[impl] = _flax_train_prepare(stock, x, y, jdtype, seed)
      elif impl == "torch" and torch is not None:
        run, waits[impl], losses[impl] = _torch_train_prepare(torch, case.name, case, x, y, dtype, seed)
        prepares[impl] = lambda run=run: run
    except Exception as e:  # noqa: BLE001 - one failing implementation must not lose the others
      row["results"][impl] = {"error": f"{type(e).__name__}: {e}"}
  measured = measure_interleaved(prepares, eager=("torch",), waits=waits, repeats=repeats, warmup=warmup,
                                 budget_s=budget_s)
  for impl, m in measured.items():
    if isinstance(m, BaseException):
      row["results"][impl] = {"error": f"{type(m).__name__}: {m}"}
      continue
    timing = m[0]
    ls = losses[impl]
    finite = all(math.isfinite(v) for v in ls)
    res = dict(extra.get(impl, {}))
    res.update({
        "timing": timing.to_dict(),
        "images_per_s": batch / timing.median_s,
        "loss_first": ls[0] if ls else None,
        "loss_last": ls[-1] if ls else None,
        "ok": bool(ls) and finite,
        "check": "losses finite" if finite else "non-finite loss",
    })
    if row["flops"]:
      res["flops_per_s"] = row["flops"] / timing.median_s
      if ceiling:
        res["frac_ceiling"] = res["flops_per_s"] / ceiling
    row["results"][impl] = res
  return row
