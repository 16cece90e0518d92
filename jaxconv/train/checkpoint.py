"""Checkpoints with orbax-checkpoint: every N steps and at the end; keep the last K and the best.

Each checkpoint holds the train state (``step``, ``params``, ``batch_stats``, ``opt_state``,
``rng``), a JSON item ``meta`` (the config, the epoch) and, where the step was evaluated, its
metrics (orbax's per-step ``metrics`` item). The best checkpoint (highest ``test_top1``) is
chosen from the metrics stored with the checkpoints, so it survives a reopened manager: resumes,
extensions and restarts keep it. Saves are asynchronous; orbax writes into
``<step>.orbax-checkpoint-tmp-*`` and renames on completion, so a process killed mid-save leaves
no checkpoint that ``latest_step`` would pick.

Example:
  >>> import tempfile, numpy as np
  >>> ck = Checkpointer(tempfile.mkdtemp(), keep=2)
  >>> ck.save(1, {"w": np.ones(3, np.float32)}, {"epoch": 0})
  >>> ck.wait(); ck.latest_step()
  1
  >>> tree, meta = ck.restore(1, {"w": np.zeros(3, np.float32)})
  >>> tree["w"].tolist(), meta["epoch"]
  ([1.0, 1.0, 1.0], 0)
  >>> ck.save(2, {"w": np.ones(3, np.float32)}, {"epoch": 1}, {"test_top1": 0.9})
  >>> ck.wait(); ck.best_step(), ck.metrics(2)
  (2, {'test_top1': 0.9})
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
    keep_best: also keep the one with the highest ``test_top1`` metric (checkpoints saved
      without metrics are never the best).
    async_save: save in a background thread (``wait()`` blocks until done).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 2, keep_best: bool = True,
               async_save: bool = True, read_only: bool = False):
    self.directory = Path(directory).absolute()
    policies = [pp.LatestN(n=keep)]
    if keep_best:
      policies.append(pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                               keep_checkpoints_without_metrics=False))
    # best_fn makes orbax write each step's metrics into the checkpoint and read them back when
    # a manager is reopened; without it they live in memory only, and a resumed run's manager
    # would rank no checkpoint as best and delete it.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies), create=not read_only,
        enable_async_checkpointing=async_save, read_only=read_only,
        best_fn=_best_metric if keep_best else None, best_mode="max")
    self.keep_best = keep_best
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, tree: Any, meta: dict, metrics: Optional[dict] = None) -> None:
    """Starts saving ``tree`` (host or device arrays) and ``meta`` (JSON-able) at ``step``."""
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The step with the highest stored ``test_top1``; ``None`` when no checkpoint has metrics."""
    if not self.keep_best:
      raise ValueError("this Checkpointer was opened with keep_best=False: it ranks no checkpoint.")
    return self.manager.best_step()

  def metrics(self, step: int) -> Optional[dict]:
    """The metrics stored with ``step`` (``None`` if it was saved without)."""
    m = self.manager.metrics(int(step))
    return dict(m) if m is not None else None

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


def _best_metric(metrics: dict) -> float:
  return float(metrics[BEST_METRIC])


def find_checkpoint_dir(path: str | os.PathLike) -> Path:
  """A run's workdir or its ``checkpoints/`` folder -> the folder holding ``<step>/``."""
  path = Path(path)
  if (path / "checkpoints").is_dir():
    return path / "checkpoints"
  if path.is_dir():
    return path
  raise FileNotFoundError(f"no checkpoint directory at {str(path)!r}.")
