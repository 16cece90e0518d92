"""``jaxconv viz``: an illustrated report of what a trained CNN has learned.

From a training run (``--workdir RUN``: its model, checkpoint and dataset) or from a torchvision
weights file (``--model NAME --weights PATH``, shown on ``--dataset``'s test images), writes PNG
files and an ``index.html``: first-layer filters, feature maps of one test image per class,
Grad-CAM and integrated-gradients overlays for correct and misclassified test images, and
activation-maximization images of a few channels of a layer.

Examples::

  jaxconv train --workdir runs/lenet                # LeNet-5 on the bundled digits
  jaxconv viz --workdir runs/lenet                  # -> runs/lenet/viz/index.html
  jaxconv viz --model resnet18 --weights resnet18.safetensors --dataset cifar10 --out viz-r18
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxconv viz", description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a training run's directory")
  src.add_argument("--model", help="a zoo model name, with --weights")
  p.add_argument("--weights", help="torchvision weights (.pth/.pt/.safetensors) for --model")
  p.add_argument("--dataset", default="digits", help="test images for --model (a run uses its own)")
  p.add_argument("--data-dir", help="dataset files, if not where the run found them")
  p.add_argument("--out", help="report folder (default: RUN/viz, or viz-MODEL)")
  p.add_argument("--layer", help="module path for Grad-CAM, feature maps and feature visualization "
                 "(default: the model's last convolutional stage)")
  p.add_argument("--channels", type=int, default=4, help="channels of the layer to visualise")
  p.add_argument("--examples", type=int, default=4, help="correct and misclassified images shown (each)")
  p.add_argument("--steps", type=int, default=128, help="feature-visualization steps")
  p.add_argument("--seed", type=int, default=0, help="PRNG seed")
  return p


def _from_run(workdir: str, data_dir: Optional[str]):
  from jaxconv.data import load_dataset
  from jaxconv.models import create_model
  from jaxconv.train import TrainConfig
  from jaxconv.train.finetune import load_variables

  config = Path(workdir) / "config.json"
  if not config.is_file():
    raise FileNotFoundError(f"{workdir!r} is not a training run (no config.json); pass a run's --workdir.")
  cfg = TrainConfig.from_dict(dict(json.loads(config.read_text()), resume=False))
  ds = load_dataset(cfg.dataset, data_dir or cfg.data_dir, download=cfg.download, verify=cfg.verify)
  model = create_model(cfg.model, num_classes=ds.num_classes, **cfg.model_kwargs)
  return model, load_variables(workdir), ds, Path(workdir) / "viz"


def _from_weights(name: str, weights: Optional[str], dataset: str, data_dir: Optional[str]):
  from jaxconv.data import load_dataset
  from jaxconv.models import load_torchvision

  if not weights:
    raise ValueError("--model needs --weights (a torchvision .pth/.pt/.safetensors file).")
  ds = load_dataset(dataset, data_dir)
  model, variables = load_torchvision(name, weights, in_channels=ds.image_shape[-1])
  return model, variables, ds, Path(f"viz-{name}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs ``jaxconv viz``; 0 on success, 2 on bad input."""
  args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
  for name in ("channels", "examples", "steps"):
    if getattr(args, name) < 1:
      print(f"jaxconv viz: error: --{name} must be a positive integer; got {getattr(args, name)}.", file=sys.stderr)
      return 2
  try:
    if args.workdir:
      model, variables, ds, out = _from_run(args.workdir, args.data_dir)
    else:
      model, variables, ds, out = _from_weights(args.model, args.weights, args.dataset, args.data_dir)
    from jaxconv.viz.report import write_report
    mean, std = ds.channel_stats()
    index = write_report(model, variables, ds.x_test, ds.y_test, args.out or out, class_names=ds.class_names,
                         mean=mean, std=std, layer=args.layer, channels=args.channels, examples=args.examples,
                         steps=args.steps, seed=args.seed)
  except (ValueError, TypeError, OSError, ImportError) as e:
    print(f"jaxconv viz: error: {e}", file=sys.stderr)
    return 2
  print(f"report: {index}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
