"""The training configuration: one plain, complete dataclass; derived values in one place.

``jaxconv train`` with no arguments runs ``TrainConfig()``: LeNet-5 on the bundled digits.
Every field is a CLI option (``--batch-size`` for ``batch_size``) and a key of a JSON/YAML
config file (``jaxconv train --config run.yaml``).

Example:
  >>> cfg = TrainConfig(epochs=2, batch_size=32)
  >>> d = derive(cfg, num_train=1438, num_devices=1)
  >>> d.steps_per_epoch, d.total_steps
  (44, 88)
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "warmup_cosine", "onecycle", "plateau")
PRECISIONS = ("float32", "bfloat16", "float16")
PARALLEL = ("auto", "mesh", "pmap", "none")

# Per-dataset augmentation defaults (crop padding in pixels, horizontal flip), used when the
# config leaves them None. Digits and MNIST: small shifts only (a flipped digit is another digit).
AUGMENT_DEFAULTS = {"digits": (1, False), "mnist": (2, False), "fashion_mnist": (2, True),
                    "cifar10": (4, True), "cifar100": (4, True)}

# Fields that may differ when resuming; everything else must match the checkpoint's config.
RESUME_MUTABLE = frozenset({
    "epochs", "max_steps", "workdir", "resume", "data_dir", "download", "verify", "progress", "plots",
    "log_every", "checkpoint_every", "keep", "eval_every", "prefetch", "parallel", "num_devices",
    "tensorboard"})


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs. ``jaxconv train --help`` documents each field.

  Attributes:
    model: a name from ``jaxconv.models.list_models()``.
    model_kwargs: extra keyword arguments for ``create_model`` (e.g. ``{"input_size": 32}``).
    dataset: ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``folder``,
      or ``tfds:<name>``.
    data_dir: local dataset files (otherwise the download cache is used).
    download: allow downloading datasets into the cache.
    verify: check local dataset files against the official files' checksums (``--no-verify``
      for a modified copy); their contents are sanity-checked either way.
    epochs: passes over the training set.
    max_steps: stop after this many steps (the schedule still spans ``epochs``); None = no limit.
    batch_size: global batch size (split over devices; must be divisible by their number).
    eval_batch_size: None = ``2 * batch_size``.
    optimizer: sgd, momentum, nesterov, adam or adamw.
    lr: peak learning rate.
    momentum: for sgd-type optimizers (``momentum``/``nesterov``); Adam's ``b1``.
    weight_decay: decoupled for adamw, L2 added to the gradient otherwise; applied to weights
      with ndim > 1 only (not biases or normalisation scales).
    schedule: constant, step, exponential, warmup_cosine, onecycle or plateau.
    warmup_epochs: linear warm-up (``warmup_cosine``; also prepended to ``step``/``exponential``).
    lr_decay_epochs: ``step`` boundaries in epochs (empty = at 50% and 75% of training).
    lr_decay_factor: ``step``: multiply at each boundary; ``exponential``: per-epoch factor;
      ``plateau``: reduction factor.
    plateau_patience: ``plateau``: epochs without improvement of the train loss before reducing.
    label_smoothing: in [0, 1).
    grad_clip_norm: clip gradients to this global norm; None = off.
    precision: ``float32``; ``bfloat16`` compute with float32 parameters, optimizer state,
      batch-norm statistics and loss; or ``float16`` compute, the same in float32, with dynamic
      loss scaling (for GPUs: float16 overflows where bfloat16 does not).
    crop_padding: random crop with this zero padding (a shift); None = dataset default.
    flip: random horizontal flip; None = dataset default.
    rotate: random rotation by up to this many degrees (0 = off).
    scale: random zoom by a factor in ``[1 - scale, 1 + scale]`` (0 = off).
    parallel: ``auto`` (mesh over all local devices, plain jit on one), ``mesh``, ``pmap``,
      ``none`` (one device).
    num_devices: how many local devices to use; None = all.
    seed: seeds initialisation, data order, augmentation and dropout.
    workdir: run directory (checkpoints, metrics.jsonl, summary.json, plots); None =
      ``runs/<model>-<dataset>-<time>``.
    resume: continue from the latest checkpoint in ``workdir``.
    init_from: fine-tune: a checkpoint directory (or a run's workdir) to load parameters from,
      or a torchvision weights file (.pth, .pt or .safetensors) for a model that torchvision
      has (resnet18, vgg16_bn, mobilenet_v2, ...); a head whose shape differs (another number
      of classes) is initialised afresh.
    freeze: fine-tune: ``none``, ``backbone`` (train only ``head``), or comma-separated
      top-level parameter names to freeze.
    checkpoint_every: also save every N steps (0 = only at epoch ends and the end).
    keep: keep the last K checkpoints (plus the best by test accuracy).
    eval_every: evaluate every N epochs (and at the end).
    log_every: write a metrics record every N steps.
    prefetch: batches transferred ahead to the devices.
    progress: show a progress bar on a terminal (or in a notebook); written to a file or a CI
      log, stderr gets only the one line per epoch.
    plots: write PNG plots into ``workdir`` (needs matplotlib).
    tensorboard: also write TensorBoard event files into ``workdir/tensorboard`` (needs
      tensorboardX: ``pip install 'jaxconv[tensorboard]'``).
  """
  model: str = "lenet5"
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  dataset: str = "digits"
  data_dir: Optional[str] = None
  download: bool = True
  verify: bool = True
  epochs: int = 15
  max_steps: Optional[int] = None
  batch_size: int = 64
  eval_batch_size: Optional[int] = None
  optimizer: str = "adamw"
  lr: float = 3e-3
  momentum: float = 0.9
  weight_decay: float = 1e-4
  schedule: str = "warmup_cosine"
  warmup_epochs: float = 1.0
  lr_decay_epochs: tuple = ()
  lr_decay_factor: float = 0.1
  plateau_patience: int = 2
  label_smoothing: float = 0.0
  grad_clip_norm: Optional[float] = None
  precision: str = "float32"
  crop_padding: Optional[int] = None
  flip: Optional[bool] = None
  rotate: float = 0.0
  scale: float = 0.0
  parallel: str = "auto"
  num_devices: Optional[int] = None
  seed: int = 0
  workdir: Optional[str] = None
  resume: bool = False
  init_from: Optional[str] = None
  freeze: str = "none"
  checkpoint_every: int = 0
  keep: int = 2
  eval_every: int = 1
  log_every: int = 20
  prefetch: int = 2
  progress: bool = True
  plots: bool = True
  tensorboard: bool = False

  def __post_init__(self):
    self.lr_decay_epochs = tuple(self.lr_decay_epochs)
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the field, the value and what is accepted."""
    for field, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                           ("precision", PRECISIONS), ("parallel", PARALLEL)):
      value = getattr(self, field)
      if value not in choices:
        raise ValueError(f"unknown {field} {value!r}; choose one of {', '.join(choices)}.")
    for field in ("epochs", "batch_size", "log_every", "eval_every", "prefetch", "keep"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be a positive integer; got {value!r}.")
    for field in ("max_steps", "eval_batch_size", "num_devices"):
      value = getattr(self, field)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{field} must be a positive integer or None; got {value!r}.")
    if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
      raise ValueError(f"checkpoint_every must be an integer >= 0; got {self.checkpoint_every!r}.")
    if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"lr must be a positive finite number; got {self.lr!r}.")
    if not 0 <= self.label_smoothing < 1:
      raise ValueError(f"label_smoothing must lie in [0, 1); got {self.label_smoothing!r}.")
    if self.weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay!r}.")
    if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
      raise ValueError(f"grad_clip_norm must be > 0 or None; got {self.grad_clip_norm!r}.")
    if self.crop_padding is not None and self.crop_padding < 0:
      raise ValueError(f"crop_padding must be >= 0 or None; got {self.crop_padding!r}.")
    if not (isinstance(self.rotate, (int, float)) and 0 <= self.rotate <= 180):
      raise ValueError(f"rotate must be a number of degrees in [0, 180]; got {self.rotate!r}.")
    if not (isinstance(self.scale, (int, float)) and 0 <= self.scale < 1):
      raise ValueError(f"scale must lie in [0, 1); got {self.scale!r}.")
    if self.warmup_epochs < 0:
      raise ValueError(f"warmup_epochs must be >= 0; got {self.warmup_epochs!r}.")
    if self.freeze not in ("none", "") and self.schedule == "plateau":
      raise ValueError(f"freeze={self.freeze!r} cannot be combined with schedule='plateau'; "
                       "choose another schedule for fine-tuning.")
    if not isinstance(self.model_kwargs, dict):
      raise TypeError(f"model_kwargs must be a dict; got {type(self.model_kwargs).__name__}.")

  @property
  def compute_dtype(self) -> Any:
    """The dtype the layers compute in: ``precision`` (parameters stay float32)."""
    import jax.numpy as jnp  # the config itself is plain data

    return jnp.dtype(self.precision)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["lr_decay_epochs"] = list(self.lr_decay_epochs)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
    """Builds a config from a dict, rejecting unknown keys (listing the valid ones)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(names))}.")
    return cls(**d)

  @classmethod
  def from_file(cls, path: str | Path) -> "TrainConfig":
    """Reads a ``.json`` or ``.yaml``/``.yml`` file holding a mapping of config fields."""
    return cls.from_dict(read_config_file(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
  """The mapping in a JSON or YAML config file (raises ValueError naming the file on errors)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
  text = path.read_text()
  try:
    if path.suffix in (".yaml", ".yml"):
      import yaml
      d = yaml.safe_load(text)
    elif path.suffix == ".json":
      d = json.loads(text)
    else:
      raise ValueError(f"config file {str(path)!r}: use a .json, .yaml or .yml file.")
  except (json.JSONDecodeError, ImportError) as e:
    raise ValueError(f"config file {str(path)!r} cannot be parsed: {e}") from e
  except Exception as e:  # yaml.YAMLError without importing yaml at module level
    if type(e).__module__.startswith("yaml"):
      raise ValueError(f"config file {str(path)!r} cannot be parsed: {e}") from e
    raise
  if not isinstance(d, dict):
    raise ValueError(f"config file {str(path)!r} must hold a mapping of fields; got {type(d).__name__}.")
  return d


@dataclasses.dataclass(frozen=True)
class Derived:
  """Values computed from a config and the data/devices; the only place they are computed."""
  steps_per_epoch: int
  total_steps: int
  eval_batch_size: int
  crop_padding: int
  flip: bool
  num_devices: int
  warmup_steps: int


def derive(cfg: TrainConfig, *, num_train: int, num_devices: int) -> Derived:
  """Computes the derived values and checks the batch size against the data and devices."""
  if cfg.batch_size % num_devices:
    raise ValueError(
        f"batch_size={cfg.batch_size} is not divisible by the number of devices ({num_devices}); "
        f"use a multiple of {num_devices} (e.g. {num_devices * max(1, cfg.batch_size // num_devices)}) "
        "or fewer devices (--num-devices).")
  if num_train < cfg.batch_size:
    raise ValueError(f"batch_size={cfg.batch_size} exceeds the {num_train} training examples.")
  eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
  eval_bs = -(-eval_bs // num_devices) * num_devices  # padded batches split evenly over devices
  steps_per_epoch = num_train // cfg.batch_size
  crop, flip = AUGMENT_DEFAULTS.get(cfg.dataset, (0, False))
  return Derived(
      steps_per_epoch=steps_per_epoch,
      total_steps=steps_per_epoch * cfg.epochs,
      eval_batch_size=eval_bs,
      crop_padding=crop if cfg.crop_padding is None else cfg.crop_padding,
      flip=flip if cfg.flip is None else cfg.flip,
      num_devices=num_devices,
      warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
  )


def resume_mismatches(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
  """Fields (outside ``RESUME_MUTABLE``) whose values differ from a checkpoint's config."""
  now = cfg.to_dict()
  # A field newer than the checkpoint was, when it was written, at its default.
  defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
  saved = {**defaults, **saved}
  return [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in sorted(now)
          if k not in RESUME_MUTABLE and _norm(saved.get(k)) != _norm(now[k])]


def _norm(v):
  return list(v) if isinstance(v, tuple) else v
