"""Checkpoints with orbax-checkpoint: every N steps and at the end; keep the last K and the best.

Each checkpoint holds the train state (``step``, ``params``, ``batch_stats``, ``opt_state``,
``rng``) and a JSON item ``meta`` (the config, the epoch, the metrics). Saves are asynchronous;
orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames on completion, so a process
killed mid-save leaves no checkpoint that ``latest_step`` would pick.

Example:
  >>> import tempfile, numpy as np
  >>> ck = Checkpointer(tempfile.mkdtemp(), keep=2)
  >>> ck.save(1, {"w": np.ones(3, np.float32)}, {"epoch": 0})
  >>> ck.wait(); ck.latest_step()
  1
  >>> tree, meta = ck.restore(1, {"w": np.zeros(3, np.float32)})
  >>> tree["w"].tolist(), meta["epoch"]
  ([1.0, 1.0, 1.0], 0)
  >>> ck.close()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

BEST_METRIC = "test_top1"


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` with the run's keep/best policy.

  Args:
    directory: where ``<step>/`` folders go (created).
    keep: keep the last ``keep`` checkpoints.
    keep_best: also keep the one with the highest ``test_top1`` metric.
    async_save: save in a background thread (``wait()`` blocks until done).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 2, keep_best: bool = True,
               async_save: bool = True, read_only: bool = False):
    self.directory = Path(directory).absolute()
    policies = [pp.LatestN(n=keep)]
    if keep_best:
      policies.append(pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies), create=not read_only,
        enable_async_checkpointing=async_save, read_only=read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, tree: Any, meta: dict, metrics: Optional[dict] = None) -> None:
    """Starts saving ``tree`` (host or device arrays) and ``meta`` (JSON-able) at ``step``."""
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self.manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def restore(self, step: int, target: Any = None) -> tuple[Any, dict]:
    """``(tree, meta)`` at ``step``; ``target`` (a tree of arrays) fixes structure and dtypes."""
    state_args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    out = self.manager.restore(int(step), args=ocp.args.Composite(
        state=state_args, meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(int(step), args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def find_checkpoint_dir(path: str | os.PathLike) -> Path:
  """A run's workdir or its ``checkpoints/`` folder -> the folder holding ``<step>/``."""
  path = Path(path)
  if (path / "checkpoints").is_dir():
    return path / "checkpoints"
  if path.is_dir():
    return path
  raise FileNotFoundError(f"no checkpoint directory at {str(path)!r}.")
