"""``jaxconv eval``: evaluate a checkpoint on its dataset's test split; accuracy and confusion matrix.

The model, dataset and preprocessing come from the config stored in the checkpoint, so
``jaxconv eval --workdir runs/my-run`` needs nothing else (``--data-dir`` if the files moved).
Writes ``eval-<step>.json`` and ``confusion-<step>.png`` into the run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """``[C, C]`` counts; row = true class, column = predicted class.

  Example:
    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
    [[1, 0], [1, 1]]
  """
  idx = np.asarray(labels, np.int64) * num_classes + np.asarray(preds, np.int64)
  return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def evaluate_checkpoint(path: str, *, step: Optional[int] = None, best: bool = False,
                        data_dir: Optional[str] = None, batch_size: Optional[int] = None,
                        dataset=None, model=None) -> dict[str, Any]:
  """Restores a checkpoint and evaluates it on the test split.

  Args:
    path: a run's workdir (or its ``checkpoints/`` folder).
    step: which step (default: the latest; ``best=True``: the best by test accuracy).
    data_dir: overrides the dataset location stored in the config.
    batch_size: evaluation batch size (default: the run's).
    dataset, model: as for :func:`jaxconv.train.train` (default: from the stored config).

  Returns:
    ``{"step", "top1", "top5", "loss", "count", "confusion" ([C, C] list), "class_names"}``.
  """
  import jax
  from jaxconv.data.sources import load_dataset
  from jaxconv.train.checkpoint import Checkpointer, find_checkpoint_dir
  from jaxconv.train.config import TrainConfig, derive
  from jaxconv.train.loop import build_model, evaluate, init_state
  from jaxconv.train.optim import make_optimizer
  from jaxconv.train.parallel import Placement
  from jaxconv.train.steps import make_eval_step
  from jaxconv.train import finetune

  ckpt = Checkpointer(find_checkpoint_dir(path), read_only=True)
  try:
    if best:
      step = ckpt.best_step()
      if step is None:
        raise ValueError(f"{path}: no checkpoint carries a test accuracy; drop --best.")
    elif step is None:
      step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {path!r}.")
    if step not in ckpt.all_steps():
      raise ValueError(f"step={step} is not among the checkpoints {ckpt.all_steps()} in {path!r}.")
    saved = ckpt.restore_meta(step)["config"]
    cfg = TrainConfig.from_dict(dict(saved, resume=False))
    if data_dir is not None:
      cfg.data_dir = data_dir
    ds = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download,
                                                          verify=cfg.verify)
    placement = Placement.create(cfg.parallel, None, None)
    if (batch_size or cfg.batch_size) % placement.num_devices:
      placement = Placement.create("none")
    d = derive(cfg, num_train=max(len(ds.x_train), cfg.batch_size), num_devices=placement.num_devices)
    mdl = build_model(cfg, ds.num_classes, placement.axis_name, model)
    tx, _ = make_optimizer(cfg, d)
    state = init_state(cfg, mdl, ds.image_shape, finetune.freeze(tx, cfg.freeze))
    tree, _ = ckpt.restore(step, jax.device_get(state.to_tree()))
  finally:
    ckpt.close()
  state = placement.put_state(state.from_tree(tree))
  mean, std = ds.channel_stats()
  eval_fn = placement.compile_eval(make_eval_step(
      num_classes=ds.num_classes, mean=mean, std=std,
      compute_dtype=cfg.compute_dtype,
      axis_name=placement.axis_name))
  bs = batch_size or d.eval_batch_size
  bs = -(-bs // placement.num_devices) * placement.num_devices
  metrics, preds = evaluate(state, placement, eval_fn, ds.x_test, ds.y_test, bs)
  cm = confusion_matrix(ds.y_test, preds, ds.num_classes)
  return {"step": int(step), **metrics, "count": int(len(ds.y_test)), "confusion": cm.tolist(),
          "class_names": list(ds.class_names)}


def format_confusion(cm: np.ndarray, class_names: Sequence[str]) -> str:
  """A text table of the confusion matrix (rows: true, columns: predicted)."""
  cm = np.asarray(cm)
  names = [str(n)[:6] for n in class_names]
  w = max(6, len(str(cm.max())) + 1)
  head = " " * 8 + "".join(f"{n:>{w}}" for n in names)
  rows = [f"{n:>7} " + "".join(f"{v:>{w}}" for v in row) for n, row in zip(names, cm)]
  return "\n".join(["true \\ predicted", head] + rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs ``jaxconv eval``; 0 on success, 2 on bad input."""
  p = argparse.ArgumentParser(prog="jaxconv eval", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="the run directory (or its checkpoints/ folder)")
  g = p.add_mutually_exclusive_group()
  g.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  g.add_argument("--best", action="store_true", help="the checkpoint with the best test accuracy")
  p.add_argument("--data-dir", help="dataset files, if not where the run found them")
  p.add_argument("--batch-size", type=int, help="evaluation batch size")
  p.add_argument("--no-plot", action="store_true", help="do not write confusion-<step>.png")
  args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
  try:
    r = evaluate_checkpoint(args.workdir, step=args.step, best=args.best, data_dir=args.data_dir,
                            batch_size=args.batch_size)
  except (ValueError, TypeError, OSError, ImportError) as e:
    print(f"jaxconv eval: error: {e}", file=sys.stderr)
    return 2
  print(f"step {r['step']}: test accuracy {r['top1']:.4f} (error {100 * (1 - r['top1']):.2f}%), "
        f"top-5 {r['top5']:.4f}, loss {r['loss']:.4f} on {r['count']} examples")
  if len(r["class_names"]) <= 20:
    print(format_confusion(np.array(r["confusion"]), r["class_names"]))
  out = Path(args.workdir)
  if (out / "checkpoints").is_dir():
    (out / f"eval-{r['step']}.json").write_text(json.dumps(r, indent=1))
    if not args.no_plot:
      try:
        from jaxconv.viz import plot_confusion_matrix
        plot_confusion_matrix(np.array(r["confusion"]), r["class_names"], out / f"confusion-{r['step']}.png")
      except ImportError as e:
        print(f"(no plot: {e})", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
