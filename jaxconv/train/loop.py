"""The training loop: ``train(config) -> summary``.

A run directory (``config.workdir``) receives ``config.json``, ``metrics.jsonl`` (one JSON record
per ``log_every`` train steps and per evaluation), ``checkpoints/``, ``summary.json`` and PNG
plots (``loss.png``, ``accuracy.png``, ``lr.png``).

The data order is a function of ``(seed, epoch)`` and the step's random key of ``(rng, step)``,
so ``resume=True`` continues exactly where the last checkpoint left off.

Example (a few steps of a tiny model on in-memory data):
  >>> import tempfile, numpy as np, flax.linen as nn
  >>> class Tiny(nn.Module):
  ...   num_classes: int = 2
  ...   @nn.compact
  ...   def __call__(self, x, train=False):
  ...     return nn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))
  >>> rng = np.random.default_rng(0)
  >>> ds = Dataset.from_arrays(rng.integers(0, 255, (64, 4, 4, 1), np.uint8), np.arange(64) % 2,
  ...                          rng.integers(0, 255, (10, 4, 4, 1), np.uint8), np.arange(10) % 2)
  >>> cfg = TrainConfig(epochs=1, batch_size=16, workdir=tempfile.mkdtemp(), progress=False,
  ...                   plots=False, parallel="none")
  >>> summary = train(cfg, dataset=ds, model=lambda **kw: Tiny(num_classes=kw["num_classes"]),
  ...                 verbose=False)
  >>> summary["steps"], 0 <= summary["test_top1"] <= 1
  (4, True)
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.data.pipeline import eval_batches, prefetch, train_batches
from jaxconv.data.sources import Dataset, load_dataset
from jaxconv.train import distributed, finetune
from jaxconv.train.checkpoint import BEST_METRIC, Checkpointer, CorruptCheckpointError
from jaxconv.train.config import TrainConfig, derive, resume_mismatches
from jaxconv.train.optim import make_optimizer
from jaxconv.train.parallel import Placement
from jaxconv.train.steps import TrainState, make_eval_step, make_train_step

ModelSpec = Union[nn.Module, Callable[..., nn.Module], None]


class NonFiniteLossError(RuntimeError):
  """Training became NaN or infinite; carries the step and the last good checkpoint.

  Raised when a step's loss, gradient norm, parameters, batch statistics or optimizer state is
  not finite everywhere. Such a state is never saved, so every checkpoint of the run (the last
  one named here included) is finite everywhere.
  """

  def __init__(self, step: int, last_checkpoint: Optional[int], directory: Path, what: str = "loss"):
    self.step, self.last_checkpoint, self.what = step, last_checkpoint, what
    where = (f"the last good checkpoint (finite everywhere) is step {last_checkpoint} in {directory}"
             if last_checkpoint is not None else "no checkpoint had been saved yet")
    super().__init__(f"training became NaN/inf at step {step} ({what}); stopped. {where}. Lower the "
                     "learning rate or enable gradient clipping (grad_clip_norm).")


def _non_finite(metrics: dict) -> Optional[str]:
  """What is not finite after a step (from its metrics), or ``None``.

  A step that dynamic loss scaling skipped left the state as it was: it is a failure only once
  the scale has fallen below 1, where the gradients overflow without any scaling.
  """
  if float(metrics.get("skipped", 0.0)) == 1.0:
    if float(metrics["loss_scale"]) < 1.0:
      return "gradients (even with a loss scale below 1)"
    return None if float(metrics["finite"]) == 1.0 else "parameters, batch statistics or optimizer state"
  if not math.isfinite(float(metrics["loss"])):
    return "loss"
  if not math.isfinite(float(metrics["grad_norm"])):
    return "gradient norm"
  if float(metrics.get("finite", 1.0)) != 1.0:
    return "parameters, batch statistics or optimizer state"
  return None


def build_model(cfg: TrainConfig, num_classes: int, axis_name: Optional[str],
                model: ModelSpec = None) -> nn.Module:
  """The model: ``model`` if it is a Module, ``model(**kw)`` if callable, else the registry."""
  if isinstance(model, nn.Module):
    return model
  dtype = cfg.compute_dtype
  kw = dict(num_classes=num_classes, dtype=dtype, param_dtype=jnp.float32, axis_name=axis_name,
            **cfg.model_kwargs)
  if model is not None:
    return model(**kw)
  from jaxconv.models import create_model  # the zoo; imported on use
  return create_model(cfg.model, **kw)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_variables(model: nn.Module, key: jax.Array, image_shape: tuple) -> dict:
  # Modules are hashable: runs of the same model and input shape reuse one compilation.
  return model.init(key, jnp.zeros((1,) + image_shape, jnp.float32), train=False)


def init_state(cfg: TrainConfig, model: nn.Module, image_shape, tx) -> TrainState:
  """Initialises variables on one example and wraps them in a TrainState."""
  # The "rbg" generator compiles several times faster on CPU than threefry for initialisers.
  key = jax.random.key(cfg.seed, impl="rbg")
  variables = _init_variables(model, key, tuple(image_shape))
  return TrainState.create(model.apply, dict(variables), tx, seed=cfg.seed,
                           loss_scaling=cfg.precision == "float16")


class _Writer:
  """Appends metric records to ``metrics.jsonl`` (kept for the plots), optionally TensorBoard;
  with ``files=False`` (processes other than 0) it keeps the records and writes nothing."""

  def __init__(self, path: Path, resume_step: Optional[int], tensorboard: bool = False, files: bool = True):
    self.path = path if files else None
    self.records: list[dict] = []
    if resume_step is not None and path.exists():  # drop what ran after the restored checkpoint
      self.records = [r for r in map(json.loads, path.read_text().splitlines())
                      if r["step"] <= resume_step]
    self.tb = None
    if not files:
      return
    path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # optional extra: jaxconv[tensorboard]
      except ImportError as e:
        raise ImportError("tensorboard=True needs tensorboardX: pip install 'jaxconv[tensorboard]'") from e
      self.tb = SummaryWriter(str(path.parent / "tensorboard"))

  def write(self, record: dict) -> None:
    self.records.append(record)
    if self.path is None:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self.tb is not None:
      for k, v in record.items():
        if k not in ("split", "step", "epoch") and isinstance(v, (int, float)):
          self.tb.add_scalar(f"{record['split']}/{k}", v, record["step"])

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _default_workdir(cfg: TrainConfig) -> str:
  name = cfg.dataset.replace(":", "_").replace("/", "_")
  return os.path.join("runs", f"{cfg.model}-{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def evaluate(state, placement: Placement, eval_fn, x: np.ndarray, y: np.ndarray,
             batch_size: int) -> tuple[dict, np.ndarray]:
  """Mean loss/top-1/top-5 over every example (padded last batch masked) and the predictions."""
  totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
  preds = []
  for xb, yb, mb in eval_batches(x, y, batch_size):
    sums, pred = eval_fn(state, *placement.put_batch((xb, yb, mb)))
    sums = placement.unreplicate(sums)
    for k in totals:
      totals[k] += float(sums[k])
    preds.append(placement.gather(pred)[mb])
  n = max(totals.pop("count"), 1.0)
  return {k: v / n for k, v in totals.items()}, np.concatenate(preds) if preds else np.zeros(0, int)


def train(cfg: TrainConfig, *, dataset: Optional[Dataset] = None, model: ModelSpec = None,
          devices=None, verbose: bool = True) -> dict[str, Any]:
  """Trains per ``cfg`` and returns the end-of-run summary (also written to summary.json).

  Args:
    cfg: the run's configuration.
    dataset: in-memory data (default: ``load_dataset(cfg.dataset, cfg.data_dir)``).
    model: a Module, a factory called with ``num_classes, dtype, param_dtype, axis_name`` and
      ``cfg.model_kwargs``, or None for ``jaxconv.models.create_model(cfg.model, ...)``.
    devices: devices to use (default ``jax.local_devices()``, truncated to ``cfg.num_devices``).
    verbose: print per-epoch lines and the summary.

  Raises:
    NonFiniteLossError: the loss became NaN/inf (checkpoints up to the last good one are kept).
    ValueError: bad configuration, incompatible resume, or a workdir that already holds
      checkpoints without ``resume``.
  """
  t_start = time.perf_counter()
  # In a run of several processes only process 0 speaks (and writes files); each raises its errors.
  log = (lambda *a: print(*a, flush=True)) if verbose and distributed.is_primary() else (lambda *a: None)
  if model is None:  # fail on a bad name before loading any data
    from jaxconv.models import list_models
    if cfg.model not in list_models():
      raise ValueError(f"unknown model {cfg.model!r}; choose one of {', '.join(list_models())}.")
  ds = dataset if dataset is not None else _load_dataset(cfg)
  placement = Placement.create(cfg.parallel, devices, cfg.num_devices)
  d = derive(cfg, num_train=len(ds.x_train), num_devices=placement.num_devices)
  if cfg.init_from and not os.path.exists(cfg.init_from):
    raise FileNotFoundError(f"init_from {cfg.init_from!r} does not exist: give a run's workdir, a "
                            "checkpoint folder, or a torchvision weights file (.pth/.pt/.safetensors).")
  # Everything that can be wrong with the model is checked before the run directory exists.
  model = build_model(cfg, ds.num_classes, placement.axis_name, model)
  workdir = Path(cfg.workdir or _default_workdir(cfg))
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f"workdir {str(workdir)!r} is a file, not a folder; choose another workdir.")
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.keep)
  try:
    return _run(cfg, ds, model, placement, d, workdir, ckpt, log, t_start)
  finally:
    ckpt.close()


def _load_dataset(cfg: TrainConfig) -> Dataset:
  """The run's dataset. With several processes, process 0 loads (and downloads, if it must) first
  and the others read after it, so that processes sharing a cache never write the same files."""
  def load():
    return load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, verify=cfg.verify)

  if jax.process_count() == 1:
    return load()
  from jax.experimental import multihost_utils

  ds = load() if distributed.is_primary() else None
  multihost_utils.sync_global_devices("jaxconv: dataset loaded by process 0")
  return ds if ds is not None else load()


def _saved_config(ckpt: Checkpointer) -> dict:
  """The config stored with the newest checkpoint whose metadata reads."""
  errors = []
  for step in sorted(ckpt.all_steps(), reverse=True):
    try:
      return ckpt.restore_meta(step)["config"]
    except (CorruptCheckpointError, KeyError, TypeError) as e:
      errors.append(str(e))
  raise ValueError(f"cannot resume: no checkpoint in {ckpt.directory} has readable metadata ({errors[0]}).")


def _restore_intact(ckpt: Checkpointer, target, log) -> tuple[int, Any]:
  """Restores the newest checkpoint that verifies; removes the corrupt ones after it (each is
  reported through ``log``, in one line)."""
  found = ckpt.restore_latest_intact(target, log=log)
  if found is None:
    raise ValueError(f"cannot resume: every checkpoint in {ckpt.directory} is corrupt (see above); "
                     "start a new run in another workdir.")
  step, tree, _ = found
  for bad in [s for s in ckpt.all_steps() if s > step]:
    ckpt.delete(bad)  # corrupt; training will write that step again
  return step, tree


def _show_progress(cfg) -> bool:
  """A bar redraws itself with carriage returns: on a terminal or in a notebook (where tqdm.auto
  draws a widget), not in a file or a CI log, which get the one line per epoch instead."""
  if not cfg.progress or not distributed.is_primary():
    return False
  return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def _run(cfg, ds, model, placement, d, workdir, ckpt, log, t_start):
  """The training loop: resume or initialise, then epochs of steps, each epoch logged, evaluated
  and checkpointed; the state of the run lives in a :class:`_Run`."""
  run = _Run(cfg, ds, placement, d, workdir, ckpt, log, t_start)
  latest = run.check_resume()
  tx, lr_fn = make_optimizer(cfg, d)
  tx = finetune.freeze(tx, cfg.freeze)
  state = init_state(cfg, model, ds.image_shape, tx)
  if cfg.init_from and latest is None:
    state = run.init_from(model, state, tx)
  if latest is not None:
    latest, state = run.restore(state)
  run.start(state, latest)
  run.compile(lr_fn)

  step = run.start_step
  epoch = step // d.steps_per_epoch
  log(f"training {cfg.model} on {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test "
      f"examples, {cfg.epochs} epochs x {d.steps_per_epoch} steps, batch {cfg.batch_size} on "
      f"{placement.num_devices} device(s) ({placement.mode}); workdir {workdir}")
  while step < run.last_step:
    step, rec = run.train_epoch(step, epoch)
    epoch_done = step % d.steps_per_epoch == 0
    if epoch_done:
      epoch += 1
    is_last = step >= run.last_step
    metrics = None
    if epoch_done and (epoch % cfg.eval_every == 0 or is_last) or is_last:
      metrics = run.evaluate(step, epoch)
    if epoch_done or is_last:
      run.save(step, epoch, metrics)
    log(run.epoch_line(step, epoch, rec, metrics))
  return run.finish(step, epoch, latest)


class _Run:
  """What one training run holds between steps (state, metrics writer, best accuracy, pending
  device metrics) and the steps that read and update it."""

  def __init__(self, cfg, ds, placement, d, workdir, ckpt, log, t_start):
    self.cfg, self.ds, self.placement, self.d = cfg, ds, placement, d
    self.workdir, self.ckpt, self.log, self.t_start = workdir, ckpt, log, t_start
    self.last_step = d.total_steps if cfg.max_steps is None else min(d.total_steps, cfg.max_steps)
    self.corrupt: list[str] = []  # one line per checkpoint skipped as corrupt (stderr and the summary)
    self.pending: list[tuple[int, dict]] = []  # device metrics of steps not yet checked on the host
    self.window = [time.perf_counter(), 0]  # start of the logging window, examples in it
    self.train_time = 0.0
    self.test_metrics: dict = {}
    self.best = {"test_top1": -1.0, "step": None}

  # -- before the first step -------------------------------------------------------------------

  def check_resume(self) -> Optional[int]:
    """The latest checkpoint's step (None: none), after checking that resuming is what was asked."""
    cfg, ckpt = self.cfg, self.ckpt
    latest = ckpt.latest_step()
    if latest is not None and not cfg.resume:
      raise ValueError(f"workdir {str(self.workdir)!r} already holds checkpoints (latest step {latest}); "
                       "pass resume=True (--resume) to continue, or choose another workdir.")
    if cfg.resume and latest is None:
      self.log(f"resume: no checkpoint in {ckpt.directory} yet; starting from step 0")
    if cfg.resume and latest is not None:
      bad = resume_mismatches(_saved_config(ckpt), cfg)
      if bad:
        raise ValueError("cannot resume: the config differs from the checkpoint's in "
                         + "; ".join(bad) + ". Use the same settings or another workdir.")
    return latest

  def init_from(self, model, state: TrainState, tx) -> TrainState:
    """Fine-tuning: the state with the variables of ``cfg.init_from`` (a new head if needed)."""
    cfg = self.cfg
    loaded = finetune.load_init(cfg.init_from, cfg.model, cfg.model_kwargs, self.ds.image_shape[-1])
    variables = finetune.transplant(loaded, state.variables())
    old, new = finetune.head_classes(loaded), finetune.head_classes(variables)
    fresh = f"; head initialised afresh for {new} classes (the checkpoint's has {old})" if old != new else ""
    self.log(f"initialised from {cfg.init_from} (freeze={cfg.freeze}){fresh}")
    return TrainState.create(model.apply, variables, tx, seed=cfg.seed, loss_scaling=cfg.precision == "float16")

  def restore(self, state: TrainState) -> tuple[int, TrainState]:
    """The latest intact checkpoint (a corrupt one is reported and skipped)."""
    def report_corrupt(msg: str) -> None:
      self.corrupt.append(msg)
      print(f"jaxconv train: {msg}", file=sys.stderr, flush=True)

    latest, tree = _restore_intact(self.ckpt, jax.device_get(state.to_tree()), report_corrupt)
    self.log(f"resumed from step {latest} in {self.ckpt.directory}")
    return latest, state.from_tree(tree)

  def start(self, state: TrainState, latest: Optional[int]) -> None:
    """Writes the config, opens the metrics file, recalls the best checkpoint so far."""
    cfg, ckpt = self.cfg, self.ckpt
    self.state = state
    self.start_step = int(state.step)
    self.primary = distributed.is_primary()
    if self.primary:
      (self.workdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    self.writer = _Writer(self.workdir / "metrics.jsonl", self.start_step if latest is not None else None,
                          cfg.tensorboard, files=self.primary)
    if cfg.resume:  # where a resumed run started: null when the workdir held no checkpoint
      self.writer.write({"split": "resume", "step": self.start_step, "resumed_from_step": latest,
                         "corrupt_checkpoints": len(self.corrupt)})
    best_step = ckpt.best_step()
    if best_step is not None:  # resumed: the best so far is stored with the checkpoints
      self.best.update(test_top1=ckpt.metrics(best_step)[BEST_METRIC], step=best_step)
    self.last_saved = ckpt.latest_step()

  def compile(self, lr_fn) -> None:
    """The jitted (or pmapped) train and eval steps, and the state on the devices."""
    cfg, ds, d, placement = self.cfg, self.ds, self.d, self.placement
    mean, std = ds.channel_stats()
    compute_dtype = cfg.compute_dtype
    common = dict(num_classes=ds.num_classes, mean=mean, std=std, compute_dtype=compute_dtype,
                  axis_name=placement.axis_name)
    self.train_fn = placement.compile_train(make_train_step(
        crop_padding=d.crop_padding, flip=d.flip, rotate=cfg.rotate, scale=cfg.scale,
        label_smoothing=cfg.label_smoothing, lr_fn=lr_fn, **common))
    self.eval_fn = placement.compile_eval(make_eval_step(**common))
    self.state = placement.put_state(self.state)

  # -- the steps --------------------------------------------------------------------------------

  def train_epoch(self, step: int, epoch: int) -> tuple[int, Optional[dict]]:
    """Runs the rest of ``epoch`` (or up to the last step); returns the step reached and the last
    metrics record."""
    from tqdm.auto import tqdm  # a dependency; imported here to keep `import jaxconv` light

    cfg, d = self.cfg, self.d
    first = step % d.steps_per_epoch
    n_steps = min(d.steps_per_epoch, first + self.last_step - step) - first
    batches = prefetch(train_batches(self.ds.x_train, self.ds.y_train, cfg.batch_size, seed=cfg.seed,
                                     epoch=epoch, start=first), self.placement.put_batch, cfg.prefetch)
    bar = tqdm(total=d.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not _show_progress(cfg), leave=False, file=sys.stderr, dynamic_ncols=True)
    t_epoch = time.perf_counter()
    rec = None
    for _ in range(n_steps):
      xb, yb = next(batches)
      self.state, metrics = self.train_fn(self.state, xb, yb)
      step += 1
      self.pending.append((step, metrics))
      self.window[1] += cfg.batch_size
      bar.update(1)
      if step % cfg.log_every == 0:
        rec = self.flush(step, epoch)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['top1']:.3f}",
                        ex_s=f"{rec['examples_per_sec']:.0f}")
      # A step that ends an epoch (or the run) is saved by the loop, with its test metrics if it
      # is evaluated: saving it here first would leave it without them, and never the best.
      if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step % d.steps_per_epoch
          and step < self.last_step):
        self.flush(step, epoch)
        self.save(step, step // d.steps_per_epoch)
    bar.close()
    rec = self.flush(step, epoch) or rec
    self.train_time += time.perf_counter() - t_epoch
    return step, rec

  def flush(self, step: int, epoch: int) -> Optional[dict]:
    """Fetches pending metrics, stops on NaN, writes one record; returns its mean values."""
    if not self.pending:
      return None
    values = [self.placement.unreplicate(m) for _, m in self.pending]
    for (s, _), v in zip(self.pending, values):
      bad = _non_finite(v)
      if bad:
        self.ckpt.wait()
        raise NonFiniteLossError(s, self.ckpt.latest_step(), self.ckpt.directory, bad)
    now = time.perf_counter()
    rec = {"split": "train", "step": step, "epoch": epoch, "elapsed_s": now - self.t_start}
    rec.update({k: float(np.mean([float(v[k]) for v in values])) for k in values[0]})
    rec["lr"] = float(values[-1]["lr"])
    rec["examples_per_sec"] = self.window[1] / max(now - self.window[0], 1e-9)
    self.writer.write(rec)
    self.pending = []
    self.window = [now, 0]
    return rec

  def save(self, step: int, epoch: int, metrics: Optional[dict] = None) -> None:
    if self.last_saved == step:
      return
    meta = {"config": self.cfg.to_dict(), "epoch": epoch, "num_classes": self.ds.num_classes,
            "image_shape": list(self.ds.image_shape), "dataset": self.ds.name}
    self.ckpt.save(step, self.placement.unreplicate(self.state.to_tree()), meta, metrics)
    self.last_saved = step

  def evaluate(self, step: int, epoch: int, record: bool = True) -> Optional[dict]:
    """Test metrics (written to metrics.jsonl with ``record``); ``{test_top1}`` for the checkpoint."""
    ds = self.ds
    if not len(ds.x_test):
      return None
    m, _ = evaluate(self.state, self.placement, self.eval_fn, ds.x_test, ds.y_test, self.d.eval_batch_size)
    self.test_metrics = m
    if record:
      self.writer.write({"split": "test", "step": step, "epoch": epoch,
                         "elapsed_s": time.perf_counter() - self.t_start, **m})
    if m["top1"] > self.best["test_top1"]:
      self.best.update(test_top1=m["top1"], step=step)
    return {BEST_METRIC: m["top1"]}

  def epoch_line(self, step: int, epoch: int, rec: Optional[dict], metrics: Optional[dict]) -> str:
    line = f"epoch {epoch}/{self.cfg.epochs} step {step}"
    if rec:
      line += f"  loss {rec['loss']:.4f}  train_acc {rec['top1']:.4f}  lr {rec['lr']:.2e}"
    if metrics:
      line += f"  test_loss {self.test_metrics['loss']:.4f}  test_acc {self.test_metrics['top1']:.4f}"
    return line

  # -- after the last step ----------------------------------------------------------------------

  def finish(self, step: int, epoch: int, latest: Optional[int]) -> dict:
    """Waits for the checkpoints, writes summary.json and the plots; returns the summary."""
    cfg, ckpt, workdir = self.cfg, self.ckpt, self.workdir
    ckpt.wait()
    self.writer.close()
    if not self.test_metrics and len(self.ds.x_test):  # a resumed run that had nothing left to
      self.evaluate(step, epoch, record=False)          # train: its test record was written then
    test = self.test_metrics
    summary = {
        "model": cfg.model, "dataset": self.ds.name, "epochs": cfg.epochs, "steps": step,
        "batch_size": cfg.batch_size, "devices": self.placement.num_devices, "processes": jax.process_count(),
        "parallel": self.placement.mode,
        "test_top1": test.get("top1"), "test_top5": test.get("top5"), "test_loss": test.get("loss"),
        "test_error": None if not test else 1.0 - test["top1"],
        "best_test_top1": self.best["test_top1"] if self.best["step"] is not None else None,
        "best_step": self.best["step"], "train_time_s": self.train_time,
        "wall_time_s": time.perf_counter() - self.t_start, "workdir": str(workdir),
        "checkpoint": str(ckpt.directory / str(ckpt.latest_step())) if ckpt.latest_step() is not None else None,
        # None: started from step 0 (also when resume was asked for but the workdir held nothing).
        "resumed_from_step": latest, "resume_requested": bool(cfg.resume), "corrupt_checkpoints": self.corrupt,
    }
    if not self.primary:
      return summary
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.plots:
      try:
        from jaxconv.viz import plot_metrics
        plot_metrics(self.writer.records, workdir)
      except ImportError as e:  # matplotlib is optional
        self.log(f"(no plots: {e})")
    if summary["test_top1"] is not None:
      self.log(f"done: test accuracy {summary['test_top1']:.4f} (error {100 * summary['test_error']:.2f}%) "
               f"after {step} steps; wall time {summary['wall_time_s']:.1f} s; run dir {workdir}")
    return summary
