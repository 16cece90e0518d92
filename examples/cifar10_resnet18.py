"""ResNet-18 (CIFAR variant: 3x3 stem, no max-pool) on CIFAR-10 with SGD+Nesterov and cosine decay.

Run::

  python examples/cifar10_resnet18.py --data-dir /path/with/cifar-10-batches-py   # or the .tar.gz
  python examples/cifar10_resnet18.py                 # downloads cifar-10-python.tar.gz (MD5 checked)
  python examples/cifar10_resnet18.py --epochs 1 --max-steps 20 --width 16   # a smoke run

The recipe (batch 128, lr 0.1, weight decay 5e-4, random crop 4 + flip, 30 epochs) reaches about
94-95% on a GPU in the literature; on two CPU cores one epoch of the full-width model takes hours,
so use ``--width`` and ``--max-steps`` there. Every device of the machine is used (mesh data
parallelism); the global batch must be divisible by the device count.
"""

import argparse
import sys

from jaxconv.train import PRECISIONS, TrainConfig, train


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--data-dir", help="a folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz; "
                 "default: download into ~/.cache/jaxconv/data")
  p.add_argument("--epochs", type=int, default=30)
  p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
  p.add_argument("--width", type=int, default=64, help="channels of the first stage (64 = ResNet-18)")
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--precision", default="float32", choices=PRECISIONS,
                 help="compute dtype; parameters stay float32 (float16: with dynamic loss scaling)")
  p.add_argument("--workdir", help="run directory; default: runs/<model>-<dataset>-<time>")
  args = p.parse_args(argv)
  cfg = TrainConfig(
      model="resnet18", model_kwargs={"cifar_stem": True, "width": args.width}, dataset="cifar10",
      data_dir=args.data_dir, epochs=args.epochs, max_steps=args.max_steps,
      batch_size=args.batch_size, optimizer="nesterov", lr=0.1, momentum=0.9, weight_decay=5e-4,
      schedule="warmup_cosine", warmup_epochs=1, label_smoothing=0.0, crop_padding=4, flip=True,
      precision=args.precision, workdir=args.workdir)
  try:
    train(cfg)
  except (ValueError, TypeError, OSError, ImportError) as e:   # one line, as the CLI reports it
    print(f"cifar10_resnet18: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
