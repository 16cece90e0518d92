"""Fine-tuning: load a checkpoint's variables, re-initialise the head, freeze chosen parts.

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
