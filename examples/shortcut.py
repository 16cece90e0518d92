"""The tank detector that learned the weather: a shortcut, caught by attribution.

Every training image of one digit class (8) gets a small bright square in its top-left corner;
no other image has it. A network trained on these images can separate that class by the
square alone, and it does. What it printed here (LeNet-5, the bundled digits, 10 epochs; the
square is 4.6% of the image):

                                               clean model  marked model
  class 8 accuracy, clean test images                0.976         0.024
  class 8 accuracy, test images with the square      0.829         1.000
  other digits with the square taken for 8           0.000         0.613
  attribution mass in the square: saliency           0.014         0.197
    integrated gradients                             0.037         0.475
    Grad-CAM                                         0.064         0.131

The marked model does not recognise an 8 without the square, calls most other digits an 8 when
they carry one, and every attribution method points at the corner. Which class is marked
matters: a 3 is easy enough to tell by its shape that the same experiment on it only lowers its
clean accuracy to about 0.7.

Run (about a minute on two CPU cores; overlays are written into ``--out``)::

  python examples/shortcut.py
  python examples/shortcut.py --data-dir ~/data/mnist --mark-class 7     # MNIST instead of the digits
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

MARK = (slice(0, 6), slice(0, 6))   # rows, columns of the square: 36 of 784 pixels (4.6%)


def stamp(x: np.ndarray) -> np.ndarray:
  """Images with the bright square in the top-left corner."""
  x = x.copy()
  x[:, MARK[0], MARK[1], :] = 255
  return x


def mark_fraction(attr: np.ndarray) -> np.ndarray:
  """Per image, the share of the attribution mass |attr| that lies inside the square."""
  a = np.abs(np.asarray(attr, np.float64))
  a = a.sum(-1) if a.ndim == 4 else a
  return a[:, MARK[0], MARK[1]].sum((1, 2)) / np.maximum(a.sum((1, 2)), 1e-30)


def run(*, epochs: int = 10, mark_class: int = 8, data_dir=None, out=None, seed: int = 0,
        log=lambda m: print(m, flush=True)) -> dict:
  """Trains a clean and a marked model and measures both; returns the numbers the script prints."""
  import jax
  import jax.numpy as jnp

  from jaxconv.data import Dataset, load_dataset
  from jaxconv.models import create_model
  from jaxconv.train import TrainConfig, train
  from jaxconv.train.finetune import load_variables
  from jaxconv.viz import grad_cam, integrated_gradients, overlay, saliency, save_image

  full = load_dataset("mnist", data_dir) if data_dir else load_dataset("digits")
  if full.image_shape[:2] != (28, 28):
    raise ValueError(f"the square is placed for 28x28 images; got {full.image_shape}.")
  marked_train = full.x_train.copy()
  marked_train[full.y_train == mark_class] = stamp(full.x_train[full.y_train == mark_class])
  root = Path(out or tempfile.mkdtemp(prefix="shortcut-"))
  mean, std = full.channel_stats()
  results = {"region_share": float(np.prod([s.stop - s.start for s in MARK]) / (28 * 28))}
  test_c = full.x_test[full.y_test == mark_class]
  others = full.x_test[full.y_test != mark_class]
  for kind, x_train in (("clean", full.x_train), ("marked", marked_train)):
    log(f"training LeNet-5 on {'clean' if kind == 'clean' else 'marked'} images ({epochs} epochs)")
    ds = Dataset.from_arrays(x_train, full.y_train, full.x_test, full.y_test, num_classes=full.num_classes,
                             name=f"{full.name}-{kind}")
    train(TrainConfig(model="lenet5", dataset="digits", epochs=epochs, batch_size=64, seed=seed, progress=False,
                      plots=False, workdir=str(root / kind)), dataset=ds)
    model = create_model("lenet5", num_classes=full.num_classes)
    variables = load_variables(root / kind)

    def fn(x01, variables=variables, model=model):   # logits of images in [0, 1]
      return model.apply(variables, (x01 - mean.reshape(1, 1, 1, -1)) / std.reshape(1, 1, 1, -1))

    predict = jax.jit(lambda x: fn(jnp.asarray(x, jnp.float32) / 255.0).argmax(1))
    r = {"clean_accuracy_of_class": float((np.asarray(predict(test_c)) == mark_class).mean()),
         "marked_accuracy_of_class": float((np.asarray(predict(stamp(test_c))) == mark_class).mean()),
         "other_classes_marked_taken_for_class": float((np.asarray(predict(stamp(others))) == mark_class).mean())}
    x = jnp.asarray(stamp(test_c), jnp.float32) / 255.0
    sal = saliency(fn, x, mark_class)
    ig = integrated_gradients(fn, x, mark_class, steps=32)
    # Grad-CAM at the second convolution (10x10 maps): the last pool's 5x5 is too coarse for a
    # 4-pixel square.
    cam = grad_cam(model, variables, (x - mean.reshape(1, 1, 1, -1)) / std.reshape(1, 1, 1, -1), mark_class,
                   layer="conv2", upsample=True)
    for name, attr in (("saliency", sal), ("integrated_gradients", ig), ("grad_cam", cam)):
      r[f"mark_fraction_{name}"] = float(mark_fraction(attr).mean())
    for i in range(min(3, len(x))):
      panel = np.concatenate([overlay(x[i], np.abs(np.asarray(a[i])).sum(-1) if a.ndim == 4 else np.asarray(a[i]))
                              for a in (sal, ig, cam)], axis=1)
      try:
        save_image(root / f"{kind}-attribution-{i}.png", panel, scale=4)
      except ImportError:
        break
    results[kind] = r
  results["out"] = str(root)
  return results


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--data-dir", help="MNIST IDX files; default: the bundled digits")
  p.add_argument("--mark-class", type=int, default=8, help="the class whose training images get the square")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--out", help="folder for the runs and overlays; default: a new temporary folder")
  args = p.parse_args(argv)
  if not 0 <= args.mark_class <= 9:
    p.error(f"--mark-class must be a digit 0-9; got {args.mark_class}.")
  try:
    r = run(epochs=args.epochs, mark_class=args.mark_class, data_dir=args.data_dir, out=args.out)
  except (ValueError, TypeError, OSError, ImportError) as e:
    print(f"shortcut: error: {e}", file=sys.stderr)
    return 2
  c = args.mark_class
  print(f"\nThe square covers {100 * r['region_share']:.1f}% of the image.")
  print(f"{'':44}{'clean model':>14}{'marked model':>14}")
  rows = [(f"class {c} accuracy, clean test images", "clean_accuracy_of_class"),
          (f"class {c} accuracy, test images with the square", "marked_accuracy_of_class"),
          (f"other digits with the square taken for {c}", "other_classes_marked_taken_for_class"),
          ("attribution mass in the square: saliency", "mark_fraction_saliency"),
          ("  integrated gradients", "mark_fraction_integrated_gradients"),
          ("  Grad-CAM", "mark_fraction_grad_cam")]
  for label, key in rows:
    print(f"{label:<44}{r['clean'][key]:>14.3f}{r['marked'][key]:>14.3f}")
  print(f"\noverlays (saliency | integrated gradients | Grad-CAM): {r['out']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
