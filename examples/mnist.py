"""MNIST from the IDX files with LeNet-5 or the small CNN: the accuracy/time measurements of
benchmarks/results/training-cpu.md.

Two recipes (see benchmarks/results/training-cpu.md for the measured times and errors)::

  # LeNet-5, 20 epochs, random shifts: 0.59% test error in under 10 minutes on two CPU cores
  python examples/mnist.py --data-dir ~/data/mnist
  # small_cnn (VGG-style, batch norm), 20 epochs, shifts + rotations up to 10 degrees + zoom 0.9-1.1
  python examples/mnist.py --data-dir ~/data/mnist --model small_cnn
  python examples/mnist.py --data-dir ~/data/mnist --epochs 3   # a quick look

Without ``--data-dir`` the four IDX files are downloaded into ``~/.cache/jaxconv/data`` (MD5
checked). The same runs from the command line::

  jaxconv train --dataset mnist --data-dir ~/data/mnist --epochs 20 --batch-size 128 --lr 3e-3
  jaxconv train --model small_cnn --dataset mnist --data-dir ~/data/mnist --epochs 20 \\
      --batch-size 128 --lr 3e-3 --rotate 10 --scale 0.1
"""

import argparse
import sys

from jaxconv.train import TrainConfig, train

# Augmentation per model: LeNet-5 is too small to gain from rotations; the small CNN needs them.
RECIPES = {
    "lenet5": dict(crop_padding=2),  # random shifts of up to 2 pixels
    "small_cnn": dict(crop_padding=2, rotate=10.0, scale=0.1),
}


def config(args) -> TrainConfig:
  return TrainConfig(
      model=args.model, dataset="mnist", data_dir=args.data_dir, epochs=args.epochs,
      batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="warmup_cosine",
      warmup_epochs=1, workdir=args.workdir, seed=args.seed, progress=not args.quiet,
      **RECIPES[args.model])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--data-dir", help="folder with the four MNIST IDX files (.gz or not); default: download "
                 "into ~/.cache/jaxconv/data")
  p.add_argument("--model", choices=sorted(RECIPES), default="lenet5")
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--workdir", default=None, help="run directory; default: runs/<model>-<dataset>-<time>")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  try:
    summary = train(config(p.parse_args(argv)))
  except (ValueError, TypeError, OSError, ImportError) as e:   # one line, as the CLI reports it
    print(f"mnist: error: {e}", file=sys.stderr)
    return 2
  print(f"MNIST test error {100 * summary['test_error']:.2f}% after {summary['epochs']} epochs, "
        f"{summary['wall_time_s']:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
