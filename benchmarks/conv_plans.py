"""Whole-model train steps under each convolution plan: which per-pass rules pay off in a model.

The layer benchmark (``benchmarks/conv_grad.py``) times each convolution alone; a model also
runs batch norm, activations and the optimizer, and XLA fuses some of them into the
convolutions. This script times one SGD train step (forward in train mode, cross-entropy,
gradients, momentum update, batch statistics) of

* ResNet-18, CIFAR variant (32x32x3, batch 128): the model of issue 7's target;
* MobileNetV2 (32x32x3, batch 64): depthwise convolutions;

under these plans, compiled separately and timed interleaved round by round (medians after a
warm-up, compile time apart):

* ``all xla``: ``conv_config(forward="xla", backward="xla")``, i.e. XLA's own gradients;
* ``auto without native``: the rules for machines without the native kernels (XLA forward and
  input gradient, Winograd/im2col kernel gradients, depthwise as fused multiply-adds);
* ``auto without winograd``: the default with the native Winograd kernels turned off (the
  native direct and depthwise kernels stay);
* ``auto``: the current default (on AVX-512 CPUs: the native kernels, ``jaxconv/ops/_native``);
* stock Flax (``flax.linen.Conv``/``BatchNorm``, the benchmark suite's stock ResNet) and PyTorch
  (``torch.set_num_threads`` = the cores JAX sees) as peers, for ResNet-18.

Compare within one run: absolute numbers move by up to 15% between runs minutes apart on the
shared 2-core machine (ResNet-18 with the rules now called ``auto without native``, no PyTorch:
46 and 40 images/s in two runs), while the ratios of one run stay within a few percent (that
plan / stock Flax: 1.43 and 1.43; session 3's native direct kernels / PyTorch over four runs:
0.96-1.03).

Run::

  python benchmarks/conv_plans.py            # ~4 min on 2 cores
  python benchmarks/conv_plans.py --rounds 3 --models resnet18_cifar

It writes ``benchmarks/results/conv-plans-<backend>.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import unittest.mock

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jaxconv.ops._conv_grad as cg  # noqa: E402
from jaxconv.bench._env import _cpu_model  # noqa: E402
from jaxconv.bench._models import MODEL_SUITES, _flax_train_prepare, _torch_train_prepare  # noqa: E402
from jaxconv.bench._stock import stock_flax_model  # noqa: E402
from jaxconv.models import create_model  # noqa: E402
from jaxconv.ops import conv_config  # noqa: E402

MODELS = {
    "resnet18_cifar": (lambda: create_model("resnet18", num_classes=10, cifar_stem=True), (32, 32, 3), 128),
    "mobilenet_v2": (lambda: create_model("mobilenet_v2", num_classes=10), (32, 32, 3), 64),
}


def _plans():
  return {
      "all xla": lambda: conv_config(forward="xla", backward="xla"),
      # The rules of session 2 (commit c884c2e): what auto picks where the native kernels are
      # not available (no AVX-512 or no compiler).
      "auto without native": lambda: unittest.mock.patch.object(cg._native, "available", lambda: False),
      # Auto with the native Winograd kernels turned off (the direct and depthwise ones stay).
      "auto without winograd": lambda: unittest.mock.patch.object(cg, "_winograd_pays", lambda *a: False),
      "auto": lambda: conv_config(),
  }


def run_model(name: str, rounds: int, torch_ok: bool) -> dict:
  build, image, batch = MODELS[name]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, *image)).astype(np.float32)
  y = (np.arange(batch) % 10).astype(np.int32)
  runs, waits, compile_s = {}, {}, {}
  for plan, ctx in _plans().items():
    prepare, wait, _ = _flax_train_prepare(build(), x, y, np.float32, 0)
    t = time.perf_counter()
    with ctx():
      runs[plan] = prepare()  # traces and compiles under the plan
    compile_s[plan] = time.perf_counter() - t
    waits[plan] = wait
  if name == "resnet18_cifar":
    prepare, wait, _ = _flax_train_prepare(stock_flax_model("resnet18_cifar", 10), x, y, np.float32, 0)
    t = time.perf_counter()
    runs["stock Flax"] = prepare()
    compile_s["stock Flax"] = time.perf_counter() - t
    waits["stock Flax"] = wait
    if torch_ok:
      import torch

      case = MODEL_SUITES["resnet18_cifar_train"][1]
      runs["PyTorch"], waits["PyTorch"], _ = _torch_train_prepare(torch, "resnet18_cifar", case, x, y, "float32", 0)
  for k in runs:  # warm-up
    waits[k](runs[k]())
  times = {k: [] for k in runs}
  for _ in range(rounds):
    for k in runs:
      t = time.perf_counter()
      waits[k](runs[k]())
      times[k].append(time.perf_counter() - t)
  med = {k: statistics.median(v) for k, v in times.items()}
  spread = {k: (min(v), max(v)) for k, v in times.items()}
  return dict(batch=batch, med=med, spread=spread, compile_s=compile_s)


def report(results: dict, rounds: int, duration: float, torch_threads) -> str:
  backend = jax.default_backend()
  lines = [
      f"# Train steps under each convolution plan ({backend.upper()})",
      "",
      f"Written by `python benchmarks/conv_plans.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
      f"UTC in {duration:.0f} s. jax {jax.__version__}, {_cpu_model()} ({os.cpu_count()} CPUs visible), "
      f"load average at the end {os.getloadavg()[0]:.1f}; PyTorch threads: {torch_threads}.",
      f"One SGD train step per call, float32; medians of {rounds} interleaved rounds after a warm-up "
      "(min-max in brackets); compile time apart. Ratios are against `all xla` (jaxconv's models "
      "with XLA's own convolution gradients).",
      "",
  ]
  for name, r in results.items():
    med = r["med"]
    lines += [f"## {name}, batch {r['batch']}", "",
              "| plan | images/s | step (s) | vs all xla | vs stock Flax | vs PyTorch | compile (s) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for k, t in med.items():
      lo, hi = r["spread"][k]
      vs = lambda ref: f"{med[ref] / t:.2f}x" if ref in med else "-"
      comp = r["compile_s"].get(k)
      lines.append(f"| {k} | {r['batch'] / t:.1f} | {t:.3f} [{lo:.3f}-{hi:.3f}] | {vs('all xla')} | "
                   f"{vs('stock Flax')} | {vs('PyTorch')} | {f'{comp:.1f}' if comp is not None else '-'} |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--out", default=None, help="Markdown path ('-': stdout only); default "
                  "benchmarks/results/conv-plans-<backend>.md")
  args = ap.parse_args(argv)
  names = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    ap.error(f"unknown models {unknown}; choose from {list(MODELS)}")
  torch_ok, torch_threads = not args.no_torch, "-"
  if torch_ok:
    try:
      import torch

      torch.set_num_threads(os.cpu_count() or 1)
      torch_threads = torch.get_num_threads()
    except ImportError:
      torch_ok = False
  t0 = time.perf_counter()
  results = {}
  for name in names:
    results[name] = run_model(name, args.rounds, torch_ok)
    print(name, {k: f"{results[name]['batch'] / v:.1f} img/s" for k, v in results[name]["med"].items()}, flush=True)
  text = report(results, args.rounds, time.perf_counter() - t0, torch_threads)
  print(text)
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 f"conv-plans-{jax.default_backend()}.md")
  if out != "-":
    with open(out, "w") as f:
      f.write(text)
    print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
