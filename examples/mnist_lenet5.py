"""LeNet-5 on MNIST from the IDX files: the issue's accuracy/time measurement.

Run (about 20 epochs; see benchmarks/results/training-cpu.md for the measured time and error)::

  python examples/mnist_lenet5.py --data-dir ../shared/data/mnist
  python examples/mnist_lenet5.py --data-dir ../shared/data/mnist --epochs 3   # a quick look

Without ``--data-dir`` the four IDX files are downloaded into ``~/.cache/jaxconv/data`` (MD5
checked). The same run from the command line::

  jaxconv train --dataset mnist --data-dir ../shared/data/mnist --epochs 20 --batch-size 128 --lr 3e-3
"""

import argparse

from jaxconv.train import TrainConfig, train


def config(args) -> TrainConfig:
  return TrainConfig(
      model="lenet5", dataset="mnist", data_dir=args.data_dir, epochs=args.epochs,
      batch_size=128, optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="warmup_cosine",
      warmup_epochs=1, crop_padding=2,  # random shifts of up to 2 pixels
      workdir=args.workdir, seed=args.seed, progress=not args.quiet)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data-dir", help="folder with the four MNIST IDX files (.gz)")
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--workdir", default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  summary = train(config(p.parse_args()))
  print(f"MNIST test error {100 * summary['test_error']:.2f}% after {summary['epochs']} epochs, "
        f"{summary['wall_time_s']:.0f} s")


if __name__ == "__main__":
  main()
