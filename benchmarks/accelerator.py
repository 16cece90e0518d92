"""Train steps on an accelerator: jaxconv against stock Flax and PyTorch, float32 and bfloat16.

One train step = forward in train mode, softmax cross-entropy (float32), gradients, SGD with
momentum, batch-statistics update, on a fixed random batch. For each model below and each
precision it times:

- ``jaxconv``: the zoo model (``jaxconv.models.create_model``);
- ``stock Flax``: the same architecture from ``flax.linen.Conv/BatchNorm/Dense`` only
  (``jaxconv.bench._stock``);
- ``PyTorch`` (when installed): the same architecture in ``torch.nn``, channels_last, eager,
  and ``PyTorch compile`` (``torch.compile``; by default for ResNet-50 at batch 256 only, as it
  compiles for minutes).

float32 is each framework's default on GPUs (TF32 convolutions in both).

Precisions: ``float32``; ``bfloat16`` as mixed precision: parameters and optimizer state in
float32, layers computing in bfloat16, the loss and batch-norm statistics in float32 (jaxconv and
Flax: ``dtype=bfloat16``; PyTorch: ``torch.autocast(dtype=torch.bfloat16)``).

Reported per cell: images/s (the median of interleaved rounds after a warm-up; a round runs
``--steps`` steps back to back), the fraction of the device's datasheet peak for that dtype
that the model's FLOPs reach (model FLOPs = 3 x 2 x the multiply-accumulates of the forward
pass, from ``jaxconv.summary``), compile time (JAX: lowering and compiling the step; PyTorch:
the first step) and memory (JAX: the compiled step's arguments, outputs and temporaries from
``memory_analysis``; PyTorch on CUDA: ``torch.cuda.max_memory_allocated`` over its steps).

Rows: ResNet-18 (CIFAR stem, 32x32) at batch 128 and 512; ResNet-50 at 224x224, batch 128 and
256; MobileNetV2 at 224x224, batch 128; VGG-16 at 224x224, batch 64.

``--smoke`` (the default on CPU) runs one row per model in bfloat16 at 32x32, batch 2, one timed
round, with the JAX steps compiled concurrently: it checks that every path runs (CI runs it,
about two minutes on two cores), it measures nothing.

Run::

  python benchmarks/accelerator.py                      # on a GPU: every row, about 8 minutes
  python benchmarks/accelerator.py --rows resnet50_b256 --precisions bfloat16
  python benchmarks/accelerator.py --smoke --out /tmp/smoke.md   # CPU, about two minutes

It writes ``benchmarks/results/accelerator-<device>.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import math
import os
import pathlib
import re
import sys
import time
from typing import Any, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Row:
  """One model at one batch size."""
  model: str  # the stock name (jaxconv.bench._stock)
  zoo: str  # the jaxconv.models name
  zoo_kwargs: tuple
  image: int  # height = width
  batch: int
  num_classes: int


ROWS = {
    "resnet18_cifar_b128": Row("resnet18_cifar", "resnet18", (("cifar_stem", True),), 32, 128, 10),
    "resnet18_cifar_b512": Row("resnet18_cifar", "resnet18", (("cifar_stem", True),), 32, 512, 10),
    "resnet50_b128": Row("resnet50", "resnet50", (), 224, 128, 1000),
    "resnet50_b256": Row("resnet50", "resnet50", (), 224, 256, 1000),
    "mobilenet_v2_b128": Row("mobilenet_v2", "mobilenet_v2", (), 224, 128, 1000),
    "vgg16_b64": Row("vgg16", "vgg16", (), 224, 64, 1000),
}
PRECISIONS = ("float32", "bfloat16")
IMPLS = ("jaxconv", "stock Flax", "PyTorch", "PyTorch compile")


def model_flops(row: Row, image: int) -> float:
  """Model FLOPs of one train step per example: 3 x 2 x the forward pass's MACs."""
  from jaxconv.summary import summary

  model = _zoo_model(row, "float32")
  return 6.0 * summary(model, (image, image, 3)).total_macs


# Top-level HLO instructions that launch no work of their own.
_FREE_OPS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "opt-barrier", "after-all",
             "partition-id", "replica-id"}


def hlo_profile(text: str) -> dict:
  """Counts in a compiled step's HLO outside fused computations (what launches work): fusions,
  convolutions (custom calls to a convolution library included), copies and transposes (layout
  changes), reductions and every other instruction; ``kernels`` is their sum."""
  counts: collections.Counter = collections.Counter()
  inside = False
  for line in text.splitlines():
    s = line.strip()
    if s.endswith("{") and not s.startswith(("ROOT", "%")) or (s.startswith("%") and s.endswith("{") and "->" in s):
      inside = "fused" in s.split()[0] or s.split()[0].startswith(("%region", "region"))
      continue
    m = re.search(r"\s([a-z][a-z0-9\-]*)\((?:%|\))", s)
    if inside or "=" not in s or m is None or m.group(1) in _FREE_OPS:
      continue
    op = m.group(1)
    if op == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', s)
      op = "convolution" if target and "conv" in target.group(1).lower() else f"custom-call {target.group(1) if target else ''}"
    key = op if op in ("fusion", "convolution", "copy", "transpose", "reduce", "all-reduce") else "other"
    counts[key] += 1
  counts["kernels"] = sum(counts.values())
  return dict(counts)


def _zoo_model(row: Row, precision: str):
  import jax.numpy as jnp

  from jaxconv.models import create_model

  return create_model(row.zoo, num_classes=row.num_classes, dtype=jnp.dtype(precision), **dict(row.zoo_kwargs))


def _jax_prepare(model, x, y, precision: str, steps: int):
  """``prepare``, wait and losses for the harness (the bench suite's train step, ``steps`` chained
  in one compiled loop); ``prepare`` also records the compiled step's memory and HLO counts."""
  import jax.numpy as jnp

  from jaxconv.bench._models import _flax_train_prepare

  prepare_step, wait, losses = _flax_train_prepare(model, x, y, jnp.dtype(precision), 0, steps=steps)
  info = {}

  def prepare():
    run = prepare_step()
    info["hlo"] = hlo_profile(run.compiled.as_text())
    mem = run.compiled.memory_analysis()
    if mem is not None:
      info["memory_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                 + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    return run

  return prepare, wait, losses, info


def _torch_prepare(torch, row: Row, image: int, x, y, precision: str, steps: int, compile_model: bool):
  """``prepare``, wait, losses and memory for the harness (PyTorch runs eagerly; the first steps hold
  torch.compile's work)."""
  from jaxconv.bench._impls import torch_device
  from jaxconv.bench._models import LEARNING_RATE, MOMENTUM
  from jaxconv.bench._stock import torch_model

  torch.manual_seed(0)
  dev = torch_device(torch)
  model = torch_model(torch, row.model, row.num_classes, image).to(dev).to(memory_format=torch.channels_last).train()
  xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(dev).contiguous(memory_format=torch.channels_last)
  yt = torch.from_numpy(y.astype(np.int64)).to(dev)
  opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
  lossf = torch.nn.CrossEntropyLoss()
  fwd = torch.compile(model) if compile_model else model
  dev_type = "cuda" if dev.startswith("cuda") else "cpu"
  info = {}

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
      logits = fwd(xt)
    loss = lossf(logits.float(), yt)
    loss.backward()
    opt.step()
    return loss

  def prepare():
    if dev_type == "cuda":
      torch.cuda.reset_peak_memory_stats()

    def run():
      for _ in range(steps):
        loss = step()
      return loss

    return run

  losses: list[float] = []

  def wait(out):
    losses.append(out.item())  # synchronises
    if dev_type == "cuda":
      info["memory_bytes"] = max(info.get("memory_bytes", 0), int(torch.cuda.max_memory_allocated()))
    return out

  return prepare, wait, losses, info


def run_row(name: str, row: Row, *, image: int, batch: int, precision: str, impls, steps: int,
            repeats: int, warmup: int, torch: Any, compile_torch: bool, compile_together: bool = False) -> dict:
  """Times one row in one precision: every implementation, interleaved.

  ``compile_together`` compiles the JAX steps concurrently (the smoke run: it measures nothing).
  """
  import jax
  import jax.numpy as jnp

  from jaxconv.bench._harness import measure_interleaved
  from jaxconv.bench._stock import stock_flax_model

  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, image, image, 3), dtype=np.float32)
  y = rng.integers(0, row.num_classes, size=(batch,)).astype(np.int32)
  prepares, waits, losses, infos, eager, failed = {}, {}, {}, {}, [], {}
  for impl in impls:
    try:  # one failing implementation must not lose the others
      if impl in ("jaxconv", "stock Flax"):
        model = (_zoo_model(row, precision) if impl == "jaxconv"
                 else stock_flax_model(row.model, row.num_classes, jnp.dtype(precision)))
        prepares[impl], waits[impl], losses[impl], infos[impl] = _jax_prepare(model, x, y, precision, steps)
      elif torch is not None and (impl == "PyTorch" or (impl == "PyTorch compile" and compile_torch)):
        prepares[impl], waits[impl], losses[impl], infos[impl] = _torch_prepare(
            torch, row, image, x, y, precision, steps, impl == "PyTorch compile")
        eager.append(impl)
    except Exception as e:  # noqa: BLE001 - reported in the row
      failed[impl] = e
  if compile_together:  # the JAX steps compile in threads (XLA releases the GIL); their times overlap
    jax_impls = [i for i in prepares if i not in eager]

    def timed(prepare):
      t = time.perf_counter()
      return prepare(), time.perf_counter() - t

    with concurrent.futures.ThreadPoolExecutor(max(1, len(jax_impls))) as pool:
      done = {impl: pool.submit(timed, prepares[impl]) for impl in jax_impls}
    for impl, fut in done.items():
      if fut.exception() is not None:  # reported by the harness, like any failing prepare
        prepares[impl] = lambda e=fut.exception(): _raise(e)
        continue
      run, infos[impl]["compile_s"] = fut.result()
      prepares[impl] = lambda run=run: run
      eager.append(impl)
  measured = {**failed, **measure_interleaved(prepares, eager=eager, waits=waits, repeats=repeats, warmup=warmup)}
  out = {"row": name, "model": row.model, "image": image, "batch": batch, "precision": precision,
         "device": jax.devices()[0].device_kind, "results": {}}
  for impl, m in measured.items():
    if isinstance(m, BaseException):
      out["results"][impl] = {"error": f"{type(m).__name__}: {str(m)[:300]}"}
      continue
    timing, loss = m[0], losses[impl][-1]
    compile_s = infos[impl].get("compile_s", timing.compile_s)
    if compile_s is None:  # PyTorch: its first step
      compile_s = timing.first_run_s
    out["results"][impl] = {
        "images_per_s": batch * steps / timing.median_s, "step_ms": 1e3 * timing.median_s / steps,
        "min_ms": 1e3 * timing.min_s / steps, "max_ms": 1e3 * timing.max_s / steps, "compile_s": compile_s,
        "memory_bytes": infos[impl].get("memory_bytes"), "hlo": infos[impl].get("hlo"), "loss": loss,
        "finite": math.isfinite(loss)}
  return out


def _raise(e: BaseException):
  raise e


def _cell(r: dict, key: str, fmt: str) -> str:
  v = r.get(key)
  return "-" if v is None else format(v, fmt)


def report(doc: dict) -> str:
  peak_note = "; ".join(f"{p}: {v['device']} {v['flops_per_s'] / 1e12:.0f} TFLOP/s" for p, v in doc["peaks"].items()
                        if v) or "no datasheet peak for this device"
  lines = [f"# Train steps: jaxconv, stock Flax and PyTorch on {doc['device']}", "",
           f"Written by `{doc['command']}` on {doc['date']} in {doc['duration_s']:.0f} s: {doc['versions']}. "
           f"{doc['steps']} steps per timed round, medians of {doc['repeats']} interleaved rounds after "
           f"{doc['warmup']} warm-up round(s); datasheet peaks ({peak_note}). See the script's docstring for "
           "each column.", ""]
  if doc["skipped"]:
    lines += [f"Not run (past --max-minutes): {', '.join(doc['skipped'])}.", ""]
  if doc["smoke"]:
    lines += ["Smoke run: every row at 32x32 and batch 2 (whatever its name says), steps compiled "
              "concurrently; it checks that every path runs and measures nothing.", ""]
  lines += ["| row | precision | implementation | images/s | step (ms) | vs stock Flax | vs PyTorch | "
            "model TFLOP/s | of peak | compile (s) | memory (GiB) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in doc["rows"]:
    res = r["results"]
    flax_ips = res.get("stock Flax", {}).get("images_per_s")
    torch_ips = res.get("PyTorch", {}).get("images_per_s")
    peak = doc["peaks"].get(r["precision"])
    for impl, c in res.items():
      if "error" in c:
        lines.append(f"| {r['row']} | {r['precision']} | {impl} | error: {c['error']} | | | | | | | |")
        continue
      ips = c["images_per_s"]
      tflops = ips * r["flops_per_example"] / 1e12
      frac = f"{tflops * 1e12 / peak['flops_per_s']:.1%}" if peak else "-"
      vs = lambda ref: f"{ips / ref:.2f}x" if ref else "-"  # noqa: E731
      mem = f"{c['memory_bytes'] / 2**30:.2f}" if c.get("memory_bytes") else "-"
      lines.append(f"| {r['row']} | {r['precision']} | {impl} | {ips:,.1f} | {c['step_ms']:.2f} "
                   f"[{c['min_ms']:.2f}-{c['max_ms']:.2f}] | {vs(flax_ips)} | {vs(torch_ips)} | {tflops:.3g} | "
                   f"{frac} | {_cell(c, 'compile_s', '.1f')} | {mem} |")
  lines += ["", "## The compiled steps side by side", "",
            "Instructions of each compiled step outside fused computations, per step (a timed round chains "
            f"{doc['steps']} steps in one loop): fusions, convolutions, copies and transposes (layout "
            "changes), reductions, all-reduces and the rest (`kernels` is their sum).", "",
            "| row | precision | implementation | kernels | fusion | convolution | copy | transpose | reduce | "
            "all-reduce | other |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in doc["rows"]:
    for impl, c in r["results"].items():
      h = c.get("hlo")
      if h:
        lines.append(f"| {r['row']} | {r['precision']} | {impl} | " + " | ".join(
            str(h.get(k, 0)) for k in ("kernels", "fusion", "convolution", "copy", "transpose", "reduce",
                                       "all-reduce", "other")) + " |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rows", default=None, help=f"comma-separated, from {', '.join(ROWS)} (default: all; "
                  "with --smoke one per model)")
  ap.add_argument("--precisions", default=None, help="comma-separated: float32, bfloat16 (default: both; "
                  "with --smoke bfloat16)")
  ap.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, from {', '.join(IMPLS)}")
  ap.add_argument("--torch-compile", choices=("resnet50_b256", "all", "none"), default="resnet50_b256",
                  help="rows that also time torch.compile (default: ResNet-50 at batch 256)")
  ap.add_argument("--max-minutes", type=float, default=8.0, help="start no row after this many minutes "
                  "(the report lists those skipped)")
  ap.add_argument("--smoke", action="store_true", help="32x32 images, batch 2, one round (the default on CPU)")
  ap.add_argument("--steps", type=int, default=None, help="steps per timed round (default 10; 1 with --smoke)")
  ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 1 with --smoke)")
  ap.add_argument("--out", default=None, help="Markdown path ('-': print only); default "
                  "benchmarks/results/accelerator-<device>.md")
  args = ap.parse_args(argv)
  pick = lambda text, what: [v for v in text.split(",") if v] or ap.error(f"--{what} is empty")  # noqa: E731
  rows = pick(args.rows or ",".join(ROWS), "rows")
  precisions = pick(args.precisions or ",".join(PRECISIONS), "precisions")
  impls = pick(args.impls, "impls")
  for values, valid, what in ((rows, ROWS, "rows"), (precisions, PRECISIONS, "precisions"), (impls, IMPLS, "impls")):
    bad = [v for v in values if v not in valid]
    if bad:
      ap.error(f"unknown --{what} {bad}; choose from {', '.join(valid)}")

  import jax

  from jaxconv.bench._env import datasheet_peak, device_slug
  from jaxconv.bench._impls import import_torch

  backend = jax.default_backend()
  smoke = args.smoke or backend == "cpu"
  steps = args.steps or (1 if smoke else 10)
  repeats = args.repeats or (1 if smoke else 5)
  if steps < 1 or repeats < 1:
    ap.error(f"--steps and --repeats must be >= 1; got {steps}, {repeats}")
  if smoke and args.rows is None:  # one row per model: batch sizes do not matter here
    rows = [n for i, n in enumerate(rows) if ROWS[n].model not in {ROWS[m].model for m in rows[:i]}]
  if smoke and args.precisions is None:  # the mixed-precision path: float32 is its special case
    precisions = ["bfloat16"]
  torch, why = import_torch() if any(i.startswith("PyTorch") for i in impls) else (None, "not asked for")
  kind = jax.devices()[0].device_kind
  t0 = time.perf_counter()
  doc = {"command": "python benchmarks/accelerator.py " + " ".join(argv if argv is not None else sys.argv[1:]),
         "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
         "device": kind if backend != "cpu" else f"CPU ({os.cpu_count()} cores)", "smoke": smoke,
         "versions": f"jax {jax.__version__}, " + (f"torch {torch.__version__}" if torch else f"no PyTorch ({why})"),
         "steps": steps, "repeats": repeats, "warmup": 1,
         "peaks": {p: datasheet_peak(kind, p) for p in precisions}, "rows": [], "skipped": []}
  for name in rows:
    row = ROWS[name]
    image, batch = (32, 2) if smoke else (row.image, row.batch)
    flops = model_flops(row, image)
    for precision in precisions:
      if time.perf_counter() - t0 > 60 * args.max_minutes:
        doc["skipped"].append(f"{name} {precision}")
        continue
      compile_torch = args.torch_compile in ("all", name)
      r = run_row(name, row, image=image, batch=batch, precision=precision, impls=impls, steps=steps,
                  repeats=repeats, warmup=1, torch=torch, compile_torch=compile_torch and not smoke,
                  compile_together=smoke)
      r["flops_per_example"] = flops
      doc["rows"].append(r)
      cells = {k: (f"{v['images_per_s']:.1f} img/s" if "images_per_s" in v else v["error"][:80])
               for k, v in r["results"].items()}
      print(f"{name} {precision}: {cells}", flush=True)
  doc["duration_s"] = time.perf_counter() - t0
  text = report(doc)
  out = args.out or os.path.join("benchmarks", "results", f"accelerator-{device_slug(backend, kind)}.md")
  if out != "-":
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(text)
  print(text)
  failed = [(r["row"], r["precision"], k) for r in doc["rows"] for k, v in r["results"].items()
            if "error" in v or not v["finite"]]
  if failed:
    print(f"accelerator.py: {len(failed)} cell(s) failed or gave a non-finite loss: {failed}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
