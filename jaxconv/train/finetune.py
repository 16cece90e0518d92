"""Fine-tuning: load a checkpoint's variables, re-initialise the head, freeze chosen parts.

The starting point is a jaxconv run (its workdir or checkpoint folder) or a torchvision weights
file (``.pth``/``.pt``/``.safetensors``, through :func:`jaxconv.models.load_torchvision`).

Every zoo model names its classifier ``head`` (the model contract), so a new number of classes
only changes ``params["head"]``. Freezing routes gradients of frozen top-level parameter groups
to ``optax.set_to_zero()`` through ``optax.multi_transform``.

Example:
  >>> import numpy as np, optax, jax.numpy as jnp
  >>> fresh = {"params": {"conv": {"kernel": np.zeros((3, 3))}, "head": {"kernel": np.zeros((3, 5))}}}
  >>> loaded = {"params": {"conv": {"kernel": np.ones((3, 3))}, "head": {"kernel": np.ones((3, 10))}}}
  >>> out = transplant(loaded, fresh)
  >>> float(out["params"]["conv"]["kernel"][0, 0]), out["params"]["head"]["kernel"].shape
  (1.0, (3, 5))
  >>> tx = freeze(optax.sgd(1.0), "backbone")
  >>> params = {"conv": jnp.ones(2), "head": jnp.ones(2)}
  >>> updates, _ = tx.update({"conv": jnp.ones(2), "head": jnp.ones(2)}, tx.init(params), params)
  >>> updates["conv"].tolist(), updates["head"].tolist()
  ([0.0, 0.0], [-1.0, -1.0])
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import optax

HEAD = "head"


def load_variables(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """``{"params", "batch_stats"}`` from a run's workdir or checkpoint folder (latest step)."""
  from jaxconv.train.checkpoint import Checkpointer, find_checkpoint_dir
  ckpt = Checkpointer(find_checkpoint_dir(path), read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {str(path)!r}.")
    tree, _ = ckpt.restore(step)
  finally:
    ckpt.close()
  return {"params": tree["params"], "batch_stats": tree.get("batch_stats") or {}}


def is_weights_file(path: str | os.PathLike) -> bool:
  """Whether ``path`` names a torchvision weights file rather than a jaxconv checkpoint folder."""
  from jaxconv.models import weights
  return str(path).lower().endswith(weights.WEIGHT_SUFFIXES)


def load_init(path: str | os.PathLike, model: str, model_kwargs: dict, channels: int) -> dict[str, Any]:
  """The variables to start fine-tuning from: a jaxconv checkpoint, or a torchvision weights file.

  A weights file is read for the zoo model ``model`` (one of
  :data:`jaxconv.models.TORCHVISION_MODELS`) with its classifier as the file has it (the
  trainer's :func:`transplant` then initialises a head of another size afresh); for one-channel
  images (``channels == 1``) the first convolution's RGB kernel is summed, so a gray image is
  seen as the RGB image with three equal channels.
  """
  if not is_weights_file(path):
    return load_variables(path)
  from jaxconv.models import TORCHVISION_MODELS, load_torchvision
  if model not in TORCHVISION_MODELS:
    raise ValueError(f"init_from={str(path)!r} is a torchvision weights file, but model {model!r} has no "
                     f"torchvision counterpart; choose one of {', '.join(TORCHVISION_MODELS)}.")
  if channels not in (1, 3):
    raise ValueError(f"torchvision weights take RGB (3-channel) or grayscale images; the dataset has "
                     f"{channels} channels.")
  _, variables = load_torchvision(model, path, in_channels=channels, **model_kwargs)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}


def head_classes(variables: dict) -> int | None:
  """The number of outputs of the ``head`` layer (its kernel's last axis), or None."""
  kernel = variables.get("params", {}).get(HEAD, {}).get("kernel")
  return None if kernel is None else int(np.shape(kernel)[-1])


def transplant(loaded: dict, fresh: dict) -> dict:
  """``fresh`` variables with every leaf taken from ``loaded`` where path and shape match.

  Leaves under ``head`` whose shape differs (another number of classes) keep their fresh
  initialisation; any other missing or mismatched leaf raises ValueError (a different model).
  """
  flat_loaded = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(loaded)}

  def pick(path, new):
    name = jax.tree_util.keystr(path)
    old = flat_loaded.get(name)
    if old is not None and np.shape(old) == np.shape(new):
      return np.asarray(old, dtype=np.asarray(new).dtype)
    if f"['{HEAD}']" in name:
      return new
    got = "missing" if old is None else f"shape {np.shape(old)}"
    raise ValueError(f"cannot load {name}: the checkpoint has it {got}, the model needs "
                     f"{np.shape(new)}; is it the same model?")

  return jax.tree_util.tree_map_with_path(pick, fresh)


def freeze(tx: optax.GradientTransformation, spec: str) -> optax.GradientTransformation:
  """Wraps ``tx`` so that the parameter groups named by ``spec`` are not updated.

  Args:
    tx: the optimizer for the trainable parameters.
    spec: ``none``; ``backbone`` (all top-level groups but ``head``); or comma-separated
      top-level parameter names.
  """
  if spec in (None, "", "none"):
    return tx

  def labels(params):
    if spec == "backbone":
      frozen = set(params) - {HEAD}
    else:
      frozen = {s.strip() for s in spec.split(",") if s.strip()}
      unknown = sorted(frozen - set(params))
      if unknown:
        raise ValueError(f"freeze={spec!r} names {unknown}, which are not top-level parameter "
                         f"groups; choose among {sorted(params)} (or 'backbone', 'none').")
    return {k: jax.tree.map(lambda _, f=k in frozen: "frozen" if f else "trainable", v)
            for k, v in params.items()}

  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
