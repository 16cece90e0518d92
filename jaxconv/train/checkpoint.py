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

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Optional

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

BEST_METRIC = "test_top1"


# Orbax's absl WARNINGs that report what was asked for, and read like failures in a terminal:
# the two it logs for every manager opened read-only (how eval and fine-tuning read a run), and
# the one for every checkpoint saved without metrics (those between evaluations, which are never
# the best by design).
_EXPECTED_NOTICES = ("Given directory is read only", "read_only=True, setting",
                     "Requested `tracked_metric`; did not provide metrics")


class _DropExpectedNotices(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not any(n in msg for n in _EXPECTED_NOTICES)


@contextlib.contextmanager
def _quiet():
  logger, notice = logging.getLogger("absl"), _DropExpectedNotices()
  logger.addFilter(notice)
  try:
    yield
  finally:
    logger.removeFilter(notice)


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
    with _quiet():
      options = ocp.CheckpointManagerOptions(
          preservation_policy=pp.AnyPreservationPolicy(policies), create=not read_only,
          enable_async_checkpointing=async_save, read_only=read_only,
          best_fn=_best_metric if keep_best else None, best_mode="max")
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.keep_best = keep_best

  def save(self, step: int, tree: Any, meta: dict, metrics: Optional[dict] = None) -> None:
    """Starts saving ``tree`` (host arrays) and ``meta`` (JSON-able) at ``step``.

    ``meta`` is stored with a SHA-256 checksum of every array of ``tree`` (``"checksums"``),
    which :meth:`restore` compares.
    """
    meta = {**meta, CHECKSUMS: checksums(tree)}
    with _quiet():
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
    """``(tree, meta)`` at ``step``, verified; ``target`` (a tree of arrays) fixes structure and dtypes.

    Raises:
      CorruptCheckpointError: the step's files cannot be read (truncated, missing, bad
        metadata), or an array differs from the checksum stored when it was saved; the message
        is one line naming the step and the file or array.
    """
    state_args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    out = self._read(step, ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
    tree, meta = out["state"], out["meta"]
    stored = meta.get(CHECKSUMS) if isinstance(meta, dict) else None
    if stored is not None:  # checkpoints written before checksums existed carry none
      got = checksums(tree)
      bad = sorted(k for k in set(stored) | set(got) if stored.get(k) != got.get(k))
      if bad:
        raise CorruptCheckpointError(step, self.directory / str(step),
                                     f"array {bad[0]} differs from its checksum at save"
                                     + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return tree, meta

  def restore_meta(self, step: int) -> dict:
    """The ``meta`` item at ``step`` (raises :class:`CorruptCheckpointError` if unreadable)."""
    return self._read(step, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest_intact(self, target: Any = None, log=None) -> Optional[tuple[int, Any, dict]]:
    """``(step, tree, meta)`` of the newest checkpoint that restores and verifies, or ``None``.

    Each newer one that fails is reported through ``log`` in one line and skipped (it is left
    on disk for inspection; the next save of that step replaces it).
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        tree, meta = self.restore(step, target)
      except CorruptCheckpointError as e:
        if log is not None:
          log(f"{e}; falling back to an earlier checkpoint")
        continue
      return step, tree, meta
    return None

  def _read(self, step: int, args) -> Any:
    try:
      return self.manager.restore(int(step), args=args)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds; all mean "unreadable"
      raise CorruptCheckpointError(step, self.directory / str(step), _first_line(e)) from None

  def delete(self, step: int) -> None:
    self.manager.delete(int(step))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


CHECKSUMS = "checksums"


class CorruptCheckpointError(ValueError):
  """A checkpoint that cannot be read or fails its checksums (one-line message; a ValueError, so
  the command line reports it as bad input, in one line)."""

  def __init__(self, step: int, path: Path, why: str):
    self.step, self.path = step, path
    super().__init__(f"checkpoint step {step} ({path}) is corrupt: {why}")


def checksums(tree: Any) -> dict[str, str]:
  """SHA-256 of every array of ``tree`` (its bytes, dtype and shape), keyed by its path (``a/0/b``)."""
  import jax
  import numpy as np

  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    out["/".join(_key_name(k) for k in path)] = h.hexdigest()
  return out


def _key_name(k) -> str:
  """One path element as text, the same whether the tree was restored with a target (tuples,
  dataclasses) or without one (lists, dicts)."""
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _first_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  text = lines[0] if lines else type(e).__name__
  return f"{type(e).__name__}: {text[:300]}"


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
