"""The trainer's input pipeline against its train step: does the host keep the device fed?

``jaxconv train`` keeps the dataset in host memory as ``uint8``, draws each batch by a seeded
permutation (:func:`jaxconv.data.train_batches`), transfers it with ``prefetch`` (two batches in
flight: the next ones copy while the current step runs) and augments and normalises on the
device, inside the step. This script times each stage alone, in images per second:

- ``host batches``: drawing shuffled batches (a gather from the uint8 array);
- ``host + transfer``: the same through ``prefetch`` with the trainer's ``Placement.put_batch``,
  waiting for every transfer;
- ``on-device augment``: the step's random crop, flip and normalisation, jitted alone;
- ``train step``: the trainer's jitted ResNet-18 (CIFAR stem) step on a batch already on the device
  (32x32 only: a ResNet-50 step at 224x224 is a GPU workload);
- ``trainer loop``: ``jaxconv.train.train`` on the same model and synthetic data, everything
  included, from its own ``examples_per_sec`` records (the median after the first record, which
  holds the compilation).

The step is host-bound when the host rates fall below the step's. Two sizes: CIFAR (32x32x3,
batch 128) and ImageNet (224x224x3, batch 256; synthetic images, the decode of JPEG files is
not part of this pipeline: datasets are decoded once, when loaded). Medians of ``--rounds``
timed passes after a warm-up.

Run::

  python benchmarks/pipeline.py --out benchmarks/results/pipeline-cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from jaxconv.data import Dataset, prefetch, train_batches
from jaxconv.data.augment import augment, normalize
from jaxconv.bench import cpu_model
from jaxconv.train import Placement, keep_host_memory

SIZES = {"cifar": ((32, 32, 3), 128, 4096), "imagenet": ((224, 224, 3), 256, 1024)}  # image, batch, examples


def _median_rate(fn, images: int, rounds: int) -> float:
  fn()  # warm-up (and compilation)
  times = []
  for _ in range(rounds):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return images / statistics.median(times)


def measure_size(name: str, rounds: int, with_step: bool) -> dict:
  image, batch, n = SIZES[name]
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(n, *image), dtype=np.uint8)
  y = rng.integers(0, 10, size=n).astype(np.int32)
  placement = Placement.create("auto")
  per_pass = (n // batch) * batch
  rates = {}

  def host():
    for _ in train_batches(x, y, batch, seed=0, epoch=0):  # each batch is a gather from x
      pass

  def transfer():
    for xb, yb in prefetch(train_batches(x, y, batch, seed=0, epoch=0), placement.put_batch, 2):
      jax.block_until_ready((xb, yb))

  rates["host batches"] = _median_rate(host, per_pass, rounds)
  rates["host + transfer"] = _median_rate(transfer, per_pass, rounds)

  mean, std = np.full(image[-1], 0.5, np.float32), np.full(image[-1], 0.25, np.float32)
  pad = 4 if name == "cifar" else 0

  @jax.jit
  def prep(key, xb):
    return normalize(augment(key, xb, crop_padding=pad, flip=True), mean, std)

  xb_dev, _ = placement.put_batch((x[:batch], y[:batch]))
  key = jax.random.key(0)
  rates["on-device augment"] = _median_rate(lambda: jax.block_until_ready(prep(key, xb_dev)), batch, rounds)
  if with_step:
    rates.update(_step_rates(x, y, batch, rounds))
  return {"image": list(image), "batch": batch, "examples": n, "devices": placement.num_devices,
          "rates": rates}


def _step_rates(x, y, batch, rounds) -> dict:
  """The train step alone, and the whole trainer loop, on ResNet-18 (CIFAR stem)."""
  from jaxconv.train import TrainConfig, train

  ds = Dataset.from_arrays(x, y, x[:batch], y[:batch], num_classes=10, name="synthetic")
  with tempfile.TemporaryDirectory() as tmp:
    steps = rounds + 3
    cfg = TrainConfig(model="resnet18", model_kwargs={"cifar_stem": True}, batch_size=batch, epochs=1,
                      max_steps=steps, log_every=1, progress=False, plots=False, workdir=os.path.join(tmp, "run"),
                      optimizer="momentum", lr=0.01, crop_padding=4, flip=True, checkpoint_every=0)
    train(cfg, dataset=ds, verbose=False)
    recs = [json.loads(line) for line in open(os.path.join(tmp, "run", "metrics.jsonl"))]
  train_recs = [r for r in recs if r["split"] == "train"][2:]  # after the compiling step and one more
  loop_rate = statistics.median(r["examples_per_sec"] for r in train_recs)
  step_rate = _isolated_step_rate(ds, batch, rounds)
  return {"train step": step_rate, "trainer loop": loop_rate}


def _isolated_step_rate(ds, batch, rounds) -> float:
  import optax

  from jaxconv.models import create_model
  from jaxconv.train import TrainState, make_train_step

  placement = Placement.create("auto")
  model = create_model("resnet18", num_classes=10, cifar_stem=True, axis_name=placement.axis_name)
  v = jax.jit(lambda k: model.init(k, np.zeros((1, *ds.image_shape), np.float32), train=False))(
      jax.random.key(0, impl="rbg"))
  state = placement.put_state(TrainState.create(model.apply, v, optax.sgd(0.01, momentum=0.9), seed=0))
  mean, std = ds.channel_stats()
  step = placement.compile_train(make_train_step(
      num_classes=10, mean=mean, std=std, crop_padding=4, flip=True, label_smoothing=0.0,
      compute_dtype=np.float32, lr_fn=lambda s, o: 0.01, axis_name=placement.axis_name))
  xb, yb = placement.put_batch((ds.x_train[:batch], ds.y_train[:batch]))
  box = [state]

  def run():
    box[0], m = step(box[0], xb, yb)
    jax.block_until_ready(m)

  return _median_rate(run, batch, rounds)


def _report(doc: dict) -> str:
  lines = ["# Input pipeline against the train step", "",
           f"Written by `{doc['command']}` on {doc['date']} in {doc['duration_s']:.0f} s: jax {doc['jax']}, "
           f"{doc['device']} ({doc['cpus']} CPUs visible; {doc['backend']} backend). Images per second, medians of {doc['rounds']} "
           "timed passes after a warm-up; see the script's docstring for each row.", ""]
  for name, r in doc["sizes"].items():
    lines += [f"## {name}: {'x'.join(map(str, r['image']))} uint8, batch {r['batch']}, "
              f"{r['devices']} device(s)", "", "| stage | images/s |", "|---|---:|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in r["rates"].items()]
    rates = r["rates"]
    host = min(rates["host + transfer"], rates["on-device augment"])
    if "train step" in rates:
      lines += ["", f"The slower of transfer and augmentation runs at {host / rates['train step']:,.0f}x the "
                f"train step's rate. The trainer loop, everything included, ran at "
                f"{rates['trainer loop'] / rates['train step']:.2f}x the step alone (timed one after the "
                "other, not interleaved: on a shared machine that ratio moves by 10-20% between runs)."]
    else:
      lines += ["", f"The host side (batches and transfer) delivers {rates['host + transfer']:,.0f} images/s at "
                "this size: a device whose step, augmentation included, runs faster would wait on this host."]
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--sizes", default="cifar,imagenet", help=f"comma-separated, from {list(SIZES)}")
  ap.add_argument("--no-step", action="store_true", help="time the pipeline stages only")
  ap.add_argument("--out", default=None, help="Markdown path; default: print only")
  args = ap.parse_args(argv)
  sizes = [s for s in args.sizes.split(",") if s]
  bad = [s for s in sizes if s not in SIZES]
  if bad or args.rounds < 1:
    ap.error(f"--sizes must name some of {list(SIZES)} and --rounds must be >= 1; got {args.sizes!r}, {args.rounds}")
  keep_host_memory()
  t0 = time.perf_counter()
  doc = {"command": "python benchmarks/pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "jax": jax.__version__, "cpus": os.cpu_count(),
         "device": cpu_model() if jax.default_backend() == "cpu" else jax.devices()[0].device_kind,
         "backend": jax.default_backend(), "rounds": args.rounds, "sizes": {}}
  for name in sizes:
    doc["sizes"][name] = measure_size(name, args.rounds, with_step=not args.no_step and name == "cifar")
    print(name, {k: round(v) for k, v in doc["sizes"][name]["rates"].items()}, flush=True)
  doc["duration_s"] = time.perf_counter() - t0
  text = _report(doc)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
