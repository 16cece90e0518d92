"""Fine-tuning from torchvision weights: import a checkpoint, new head, frozen backbone.

1. The checkpoint: ``--weights PATH`` takes a torchvision file (``.pth`` needs PyTorch,
   ``.safetensors`` does not). Without it, one is made here, offline: ResNet-18 trained briefly
   on the digits 0-5 and written in torchvision's layout (``torchvision_state_dict`` +
   ``write_state_dict``), exactly what ``torch.save(model.state_dict())`` would have written.
2. The data: the bundled 8x8 digits 6-9 (new classes), ``--shots`` training images per class, upsampled to
   ``--size`` pixels and repeated to three channels (the networks take RGB).
3. Fine-tuning, as ``jaxconv train --init-from PATH --freeze backbone`` does it: every weight is
   imported but the classifier, which gets 4 outputs and a fresh initialisation; first only the
   head is trained (a frozen feature extractor), then every layer; then, for comparison, the same
   network from scratch.

Real checkpoints: torchvision publishes ImageNet weights for every model of
``jaxconv.models.TORCHVISION_MODELS`` (``torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url``
gives the address; ``resnet18-f37072fd.pth`` is the file). Download it where you have a network,
optionally convert it once (``jaxconv convert resnet18 resnet18-f37072fd.pth
resnet18.safetensors``), and pass it here with ``--weights``; ImageNet weights like larger
images (``--size 64`` or more) normalised with ``jaxconv.data.IMAGENET_MEAN/STD``.

What it printed here (the made checkpoint, 20 shots, 32x32; two CPU cores, 86 s): head only
0.72, all layers from the checkpoint 0.95, from scratch 0.93 -- a linear probe on features of
six other digits is weak, while starting every layer from them beats starting from nothing.

Run (about one and a half minutes on two CPU cores)::

  python examples/finetune_pretrained.py
  python examples/finetune_pretrained.py --weights resnet18-f37072fd.pth --size 64
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def digits_rgb(classes, size, shots=None, seed=0):
  """The bundled digits of ``classes`` (relabelled 0..k-1), ``size`` x ``size``, three channels."""
  import jax

  from jaxconv.data import Dataset, load_dataset

  full = load_dataset("digits")
  rng = np.random.default_rng(seed)

  def pick(x, y, limit):
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:limit] for c in classes])
    x = jax.image.resize(x[idx].astype(np.float32), (len(idx), size, size, 1), "linear")
    x = np.clip(np.round(np.asarray(x)), 0, 255).astype(np.uint8)
    return np.repeat(x, 3, axis=-1), np.searchsorted(classes, y[idx]).astype(np.int32)

  xtr, ytr = pick(full.x_train, full.y_train, shots)
  xte, yte = pick(full.x_test, full.y_test, None)
  return Dataset.from_arrays(xtr, ytr, xte, yte, num_classes=len(classes), name=f"digits{list(classes)}")


def make_checkpoint(model: str, size: int, root: Path, epochs: int) -> Path:
  """A torchvision-layout checkpoint of ``model`` trained on the digits 0-5."""
  from jaxconv.models import torchvision_state_dict, write_state_dict
  from jaxconv.train import TrainConfig, train
  from jaxconv.train.finetune import load_variables

  print(f"no --weights: pretraining {model} on the digits 0-5 ({epochs} epochs) to make a checkpoint")
  run = root / "pretrain"
  train(TrainConfig(model=model, dataset="digits", epochs=epochs, batch_size=64, lr=3e-3,
                    workdir=str(run), progress=False, plots=False),
        dataset=digits_rgb([0, 1, 2, 3, 4, 5], size))
  path = write_state_dict(torchvision_state_dict(model, load_variables(run)), root / f"{model}-digits.safetensors")
  print(f"wrote {path} (torchvision's keys and layouts)")
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--weights", help="a torchvision checkpoint (.pth/.pt/.safetensors); default: make one")
  p.add_argument("--model", default="resnet18", help="a model of jaxconv.models.TORCHVISION_MODELS")
  p.add_argument("--size", type=int, default=32, help="image side the digits are upsampled to")
  p.add_argument("--shots", type=int, default=20, help="training examples per new class")
  p.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs")
  p.add_argument("--pretrain-epochs", type=int, default=4, help="epochs of the made checkpoint")
  p.add_argument("--workdir", default=None, help="run folders; default: a new temporary folder")
  args = p.parse_args(argv)
  from jaxconv.models import TORCHVISION_MODELS
  from jaxconv.train import TrainConfig, train

  if args.model not in TORCHVISION_MODELS:
    p.error(f"--model must be one of {', '.join(TORCHVISION_MODELS)}; got {args.model!r}.")
  if args.weights and not Path(args.weights).is_file():
    p.error(f"--weights {args.weights!r} is not a file.")
  root = Path(args.workdir or tempfile.mkdtemp(prefix="finetune-pretrained-"))
  try:
    weights = Path(args.weights) if args.weights else make_checkpoint(args.model, args.size, root, args.pretrain_epochs)
    new = digits_rgb([6, 7, 8, 9], args.size, shots=args.shots)
    common = dict(model=args.model, dataset="digits", epochs=args.epochs, batch_size=min(32, len(new.x_train)),
                  warmup_epochs=0, progress=False, plots=False)
    results = {}
    for name, kw in (("head only, frozen backbone", dict(init_from=str(weights), freeze="backbone", lr=0.03)),
                     ("all layers from the checkpoint", dict(init_from=str(weights), lr=1e-3)),
                     ("all layers from scratch", dict(lr=1e-3))):
      results[name] = train(TrainConfig(workdir=str(root / f"run{len(results)}"), **kw, **common), dataset=new)
  except (ValueError, TypeError, OSError, ImportError) as e:   # what the CLI reports in one line
    print(f"finetune_pretrained: error: {e}", file=sys.stderr)
    return 2
  print(f"\n{args.model} on {args.shots} digits per class of 4 new classes, {args.size}x{args.size} "
        f"(test: {len(new.x_test)} images), from {weights.name}:")
  for name, s in results.items():
    print(f"  {name:<32} test accuracy {s['test_top1']:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
