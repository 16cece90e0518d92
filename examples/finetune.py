"""Fine-tuning a pretrained feature extractor on a new, small dataset.

1. Pretrain LeNet-5 on the digits 0-4 (scikit-learn's bundled digits, or MNIST with --data-dir).
2. Fine-tune on digits 5-9 with only ``--shots`` examples per class: load the checkpoint, give
   the model a new head (5 classes), freeze the feature extractor (``freeze="backbone"``, i.e.
   every parameter group but ``head``, through ``optax.multi_transform``), train the head.
3. Compare with fine-tuning every layer, and with the same small training set from scratch.

What it printed on the bundled digits (20 shots): head only 0.82, all layers from the pretrained
ones 0.93, from scratch 0.98 -- five digit classes are a narrow pretraining task, and 8x8 digits
are easy enough that 100 examples suffice from scratch. Pretraining on MNIST (``--data-dir``)
gives the extractor more to transfer.

Run (under a minute on two CPU cores)::

  python examples/finetune.py
  python examples/finetune.py --data-dir ~/data/mnist --shots 10
"""

import argparse
import sys
import tempfile

from jaxconv.data import Dataset, load_dataset
from jaxconv.train import TrainConfig, train


def subset(ds: Dataset, classes, shots=None, seed=0) -> Dataset:
  """The examples of ``classes`` relabelled 0..k-1; at most ``shots`` per class for training."""
  import numpy as np
  rng = np.random.default_rng(seed)

  def pick(x, y, limit):
    idx = []
    for new, c in enumerate(classes):
      where = np.flatnonzero(y == c)
      idx.append(rng.permutation(where)[:limit] if limit else where)
    idx = np.concatenate(idx)
    return x[idx], np.searchsorted(classes, y[idx])

  xtr, ytr = pick(ds.x_train, ds.y_train, shots)
  xte, yte = pick(ds.x_test, ds.y_test, None)
  return Dataset.from_arrays(xtr, ytr, xte, yte, num_classes=len(classes), name=f"{ds.name}{classes}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--data-dir", help="MNIST IDX files; default: the bundled digits")
  p.add_argument("--shots", type=int, default=20, help="training examples per new class")
  p.add_argument("--workdir", default=None, help="run folders; default: a new temporary folder")
  args = p.parse_args(argv)
  try:
    return _run(args)
  except (ValueError, TypeError, OSError, ImportError) as e:   # one line, as the CLI reports it
    print(f"finetune: error: {e}", file=sys.stderr)
    return 2


def _run(args) -> int:
  root = args.workdir or tempfile.mkdtemp(prefix="finetune-")
  full = load_dataset("mnist", args.data_dir) if args.data_dir else load_dataset("digits")
  old, new = subset(full, [0, 1, 2, 3, 4]), subset(full, [5, 6, 7, 8, 9], shots=args.shots)
  common = dict(model="lenet5", progress=False, plots=False, dataset="digits")
  train(TrainConfig(epochs=5 if args.data_dir else 15, batch_size=64, workdir=f"{root}/pretrain",
                    **common), dataset=old)
  batch = min(32, len(new.x_train))
  results = {}
  pre = f"{root}/pretrain"
  for name, kw in (("head only, frozen extractor", dict(init_from=pre, freeze="backbone", lr=0.1)),
                   ("all layers from the pretrained ones", dict(init_from=pre, lr=3e-3)),
                   ("all layers from scratch", dict(lr=3e-3))):  # a linear probe takes a larger lr
    results[name] = train(TrainConfig(epochs=30, batch_size=batch, warmup_epochs=0,
                                      workdir=f"{root}/{len(results)}", **kw, **common), dataset=new)
  print(f"\n{args.shots} examples per class of 5 new classes (test: {len(new.x_test)} examples):")
  for name, s in results.items():
    print(f"  {name:<38} test accuracy {s['test_top1']:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
