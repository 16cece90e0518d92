"""Where a model's train step spends its time: XLA's per-operation profile, named by layer.

Runs one model's jitted SGD train step (the same step as ``benchmarks/conv_plans.py``) under
:func:`jax.profiler.trace`, adds up the time of every compiled operation (an XLA fusion, a
native kernel's custom call, a convolution, a dot) over the traced steps, and names each by the
source operation it came from (the ``op_name`` metadata of the compiled HLO: layer path, and
whether it belongs to the forward pass or the gradient). Prints a Markdown table of the
operations that take the most time per step.

Run::

  python benchmarks/profile_step.py --model lenet5 --batch 128
  python benchmarks/profile_step.py --model small_cnn --out benchmarks/results/profile-small-cnn-cpu.md

The per-operation times come from the profiler's trace events, which add a little overhead
each; their sum is close to, not equal to, the step's wall time (printed apart).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = {  # name -> (registry name, kwargs, image)
    "lenet5": ("lenet5", dict(num_classes=10, input_size=28), (28, 28, 1)),
    "small_cnn": ("small_cnn", dict(num_classes=10), (28, 28, 1)),
    "resnet18_cifar": ("resnet18", dict(num_classes=10, cifar_stem=True), (32, 32, 3)),
}


def op_names(hlo_text: str) -> dict:
  """Compiled HLO instruction name -> the ``op_name`` of the source operation it computes.

  A fusion without metadata of its own takes the most common ``op_name`` of the instructions in
  the computation it calls; an instruction with none anywhere (XLA's own, such as an ``iota``
  it added) maps to ``""``.
  """
  names, calls, by_comp, comp = {}, {}, collections.defaultdict(list), None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      comp = head.group(1)
      continue
    inst = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line)
    if not inst:
      continue
    name = inst.group(1)
    names.setdefault(name, "")
    op = re.search(r'op_name="([^"]*)"', line)
    if op:
      target = re.search(r'custom_call_target="([^"]*)"', line)  # which native kernel
      names[name] = op.group(1) + (f" ({target.group(1)})" if target else "")
      by_comp[comp].append(op.group(1))
    called = re.search(r"calls=%([\w.\-]+)", line)
    if called:
      calls[name] = called.group(1)
  for name, comp_name in calls.items():
    if not names[name] and by_comp.get(comp_name):
      names[name] = collections.Counter(by_comp[comp_name]).most_common(1)[0][0]
  return names


def describe(op_name: str) -> tuple[str, str]:
  """``(pass, layer path)`` from an ``op_name`` such as
  ``jit(step)/transpose(jvp(LeNet5))/conv2/jvp(LeNet5)/conv2/checkpoint/conv_general_dilated``."""
  if not op_name:
    return "", "(added by XLA)"
  op_name, _, target = op_name.partition(" (")  # a native kernel's call target, if any
  which = "gradient" if "transpose(" in op_name else "forward"
  parts = [p for p in op_name.split("/") if p and "(" not in p]
  path = "/".join(p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1]) or op_name
  return which, path + (f" ({target}" if target else "")


def profile(model_name: str, batch: int, steps: int, top: int) -> str:
  import jax
  import numpy as np

  from jaxconv.bench._models import _flax_train_prepare
  from jaxconv.models import create_model

  reg, kw, image = MODELS[model_name]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, *image)).astype(np.float32)
  y = (np.arange(batch) % 10).astype(np.int32)
  prepare, wait, _ = _flax_train_prepare(create_model(reg, **kw), x, y, np.float32, 0)
  run = prepare()
  for _ in range(5):
    wait(run())
  walls = []
  for _ in range(7):
    t = time.perf_counter()
    for _ in range(steps):
      out = run()
    wait(out)
    walls.append((time.perf_counter() - t) / steps)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(steps):
        out = run()
      wait(out)
    trace = json.load(gzip.open(glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = op_names(run.compiled.as_text())
  total = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in names:
      total[e["name"]] += e["dur"] / 1e3 / steps  # ms per step
  covered = sum(total.values())
  lines = [f"## {model_name}, batch {batch}", "",
           f"Step wall time {statistics.median(walls) * 1e3:.2f} ms (median of 7 x {steps} steps); the operations "
           f"below add up to {covered:.2f} ms per step in the trace.", "",
           "| operation | ms/step | share | pass | source (layer path / op) |", "|---|---:|---:|---|---|"]
  for name, ms in total.most_common(top):
    which, path = describe(names[name])
    lines.append(f"| `{name}` | {ms:.3f} | {ms / covered:.0%} | {which} | {path} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="lenet5", choices=sorted(MODELS))
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--steps", type=int, default=20, help="steps traced (and per timed repeat)")
  ap.add_argument("--top", type=int, default=15, help="rows in the table")
  ap.add_argument("--out", default="-", help="Markdown path ('-': stdout only)")
  args = ap.parse_args(argv)
  if args.batch < 1 or args.steps < 1 or args.top < 1:
    ap.error(f"--batch, --steps and --top must be positive; got {args.batch}, {args.steps}, {args.top}")
  try:
    from jaxconv.train import keep_host_memory
  except ImportError:  # an older checkout, for a before/after comparison
    keep_host_memory = None
  if keep_host_memory is not None:
    keep_host_memory()
  import jax

  from jaxconv.bench import cpu_model

  body = profile(args.model, args.batch, args.steps, args.top)
  text = (f"Written by `python benchmarks/profile_step.py --model {args.model} --batch {args.batch}` on "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: jax {jax.__version__}, "
          f"{cpu_model()} ({os.cpu_count()} CPUs), {jax.default_backend()} backend.\n\n" + body)
  print(text)
  if args.out != "-":
    with open(args.out, "w") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
