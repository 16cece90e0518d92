"""``jaxconv bench``: run benchmark suites, write JSON, Markdown and PNG reports.

Examples::

  jaxconv bench --quick --out /tmp/bench            # smoke test, about a minute on 2 CPU cores
  jaxconv bench                                      # every suite -> benchmarks/results/<device>/
  jaxconv bench --suite resnet_cifar --suite resnet18_cifar_train --repeats 7
  jaxconv bench --render benchmarks/results/cpu      # re-render report.md/PNGs from results.json,
                                                     # embedding a hand-written analysis.md there
  python -m benchmarks --list

Exit status: 0 when every row agrees with the reference, 1 when a row disagrees, errors or the
NumPy-loop anchor fails, 2 for bad arguments (unknown suite, unwritable output folder), 130 when
interrupted (the partial results are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

from jaxconv.bench import _cases, _impls, _runner

QUICK = {"repeats": 2, "warmup": 1, "budget_s": 0.5, "model_budget_s": 2.0, "ceiling_size": 1024}
FULL = {"repeats": 5, "warmup": 1, "budget_s": 2.0, "model_budget_s": 20.0, "ceiling_size": None}


def _split(values: Optional[Sequence[str]]) -> list[str]:
  return [v.strip() for item in (values or []) for v in item.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="jaxconv bench",
      description="Benchmark jaxconv's convolutions against the einsum reference, stock Flax (XLA) and PyTorch.",
      epilog="Suites: " + ", ".join(_runner.all_suites()),
  )
  p.add_argument("--suite", action="extend", nargs="+", metavar="NAME", help="suites to run (space- or comma-separated, repeatable; "
                 "default: every layer suite and the model suites that fit the device). See --list.")
  p.add_argument("--quick", action="store_true", help="smoke test: a few shapes at batch 2, LeNet only; checks "
                 "every row's correctness in about a minute on two CPU cores")
  p.add_argument("--out", metavar="DIR", help="output folder (default benchmarks/results/<device>, "
                 "or benchmarks/results/<device>-quick with --quick)")
  p.add_argument("--include-large", action="store_true", help="also run the GPU-sized model (ResNet-50) on CPU and the optional "
                 "layer suites (resnet_cifar_b128)")
  p.add_argument("--repeats", type=int, metavar="N", help="timed runs per measurement (default 5; 2 with --quick)")
  p.add_argument("--warmup", type=int, metavar="N", help="untimed runs before timing (default 1)")
  p.add_argument("--budget", type=float, metavar="S", help="seconds of timed runs per layer measurement before "
                 "repeats are cut (never below 3; default 2, 0.5 with --quick)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  p.add_argument("--impl", action="extend", nargs="+", metavar="NAME", help=f"implementations (default all: {', '.join(_impls.IMPLS)})")
  p.add_argument("--mode", action="extend", nargs="+", metavar="MODE", help=f"modes (default all: {', '.join(_cases.MODES)})")
  p.add_argument("--batch-scale", type=int, metavar="K", help="multiply every layer case's batch by K "
                 "(default 1 on CPU, 8 on GPU/TPU, where the CPU-sized batches are too little work per call)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-anchor", action="store_true", help="skip the NumPy-loop anchor of the reference")
  p.add_argument("--list", action="store_true", help="list the suites and their cases, then exit")
  p.add_argument("--render", metavar="DIR", help="re-render report.md and the PNGs from DIR/results.json, then exit")
  return p


def _list() -> str:
  lines = []
  for name, (desc, cases) in _cases.LAYER_SUITES.items():
    lines.append(f"{name}: {desc}")
    lines += [f"    {c.name:<26} {c.describe():<40} {c.flops() / 1e9:8.3f} GFLOP fwd" + ("  [quick]" if c.quick else "")
              for c in cases]
  from jaxconv.bench._models import MODEL_SUITES

  for name, (desc, case) in MODEL_SUITES.items():
    lines.append(f"{name}: {desc}" + (f"  [quick: batch {case.quick_batch}]" if case.quick_batch else ""))
  return "\n".join(lines)


def _failures(doc: dict[str, Any]) -> list[str]:
  out = []
  for name, s in doc.get("suites", {}).items():
    for r in s.get("rows", []):
      label = f"{name} {r.get('case', r.get('model'))} {r.get('mode', 'train')}"
      for impl, x in r["results"].items():
        if "error" in x:
          out.append(f"{label} {impl}: {x['error']}")
        elif x.get("agreement") and not x["agreement"]["ok"]:
          out.append(f"{label} {impl}: {x['agreement']['detail']}")
        elif x.get("ok") is False:
          out.append(f"{label} {impl}: {x.get('check')}")
      a = r.get("anchor")
      if a and ("error" in a or not a["agreement"]["ok"]):
        out.append(f"{label} anchor: {a.get('error') or a['agreement']['detail']}")
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of ``jaxconv bench`` (see the module docstring)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:  # --help, or argparse's own errors (already printed): a status, not an exit
    return int(e.code or 0)
  if args.list:
    print(_list())
    return 0
  if args.render:
    path = os.path.join(args.render, _runner.RESULTS_FILE)
    try:
      with open(path) as f:
        doc = json.load(f)
    except (OSError, ValueError) as e:
      print(f"jaxconv bench: cannot read {path!r}: {e}", file=sys.stderr)
      return 2
    from jaxconv.bench import _report

    _report.write_report(doc, args.render)
    return 0

  try:
    suites = _runner.check_suites(_split(args.suite)) if args.suite else None
    impls = _split(args.impl) or list(_impls.IMPLS)
    bad = [i for i in impls if i not in _impls.IMPLS]
    if bad:
      raise ValueError(f"unknown implementation(s) {bad}; valid: {', '.join(_impls.IMPLS)}.")
    modes = _split(args.mode) or list(_cases.MODES)
    bad = [m for m in modes if m not in _cases.MODES]
    if bad:
      raise ValueError(f"unknown mode(s) {bad}; valid: {', '.join(_cases.MODES)}.")
    for flag, v, lo in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0)):
      if v is not None and v < lo:
        raise ValueError(f"{flag} must be >= {lo}; got {v}.")
    if args.batch_scale is not None and args.batch_scale < 1:
      raise ValueError(f"--batch-scale must be >= 1; got {args.batch_scale}.")
    if args.budget is not None and args.budget <= 0:
      raise ValueError(f"--budget must be > 0 seconds; got {args.budget}.")
  except ValueError as e:
    print(f"jaxconv bench: {e}", file=sys.stderr)
    return 2

  import jax  # after the cheap checks: initialising the backend takes a moment

  from jaxconv.bench._env import device_slug

  backend = jax.default_backend()
  slug = device_slug(backend, jax.devices()[0].device_kind)
  out = args.out or os.path.join("benchmarks", "results", slug + ("-quick" if args.quick else ""))
  try:
    out = _runner.check_out_dir(out)
  except ValueError as e:
    print(f"jaxconv bench: {e}", file=sys.stderr)
    return 2
  if suites is None:
    suites = _runner.default_suites(backend, args.include_large)
  preset = dict(QUICK if args.quick else FULL)
  for key, v in (("repeats", args.repeats), ("warmup", args.warmup), ("budget_s", args.budget)):
    if v is not None:
      preset[key] = v
  try:
    doc = _runner.execute(
        out, suites=suites, quick=args.quick, dtype=args.dtype, impls=tuple(impls), modes=tuple(modes),
        seed=args.seed, anchor=not args.no_anchor, argv=argv,
        batch_scale=args.batch_scale or (1 if backend == "cpu" else 8), **preset,
    )
  except KeyboardInterrupt:
    print(f"jaxconv bench: interrupted; partial results kept in {out}", file=sys.stderr)
    return 130
  failures = _failures(doc)
  if failures:
    print(f"jaxconv bench: {len(failures)} problem(s):", file=sys.stderr)
    for f in failures[:30]:
      print(f"  {f}", file=sys.stderr)
    return 1
  print(f"jaxconv bench: {doc['duration_s']:.0f} s, every row agrees with the reference; results in {out}")
  return 0
