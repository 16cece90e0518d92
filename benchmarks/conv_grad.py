"""Per-layer convolution forward/backward speed: stock XLA vs jaxconv's formulations vs PyTorch.

For each ResNet-18 (CIFAR) convolution at batch 128 it times, in one process and interleaved
round by round (so a busy machine slows every candidate alike):

* each pass alone (forward, input gradient, kernel gradient) in each formulation
  (``xla``, ``taps``, ``im2col``, ``winograd``, ``native``; ``winograd`` is the native
  Winograd kernel where the native kernels are built), jitted; the backward passes time
  ``jax.vjp`` with respect to one argument (XLA drops the unused forward);
* forward + both gradients for stock XLA (``jax.vjp`` of ``lax.conv_general_dilated``), for
  ``jaxconv.ops.conv`` with its default ``auto`` plan, and for PyTorch 2.x
  (``torch.set_num_threads(2)``, NCHW, ``conv2d`` + ``backward``);
* a large matmul, the machine's ceiling.

Numbers are medians over rounds after a warm-up; compile time is reported apart. Run::

  python benchmarks/conv_grad.py            # full: batch 128, all layers (~6-8 min on 2 cores)
  python benchmarks/conv_grad.py --quick    # batch 16, 4 layers, a smoke test (~1 min)
  python benchmarks/conv_grad.py --isa portable   # one variant of the native kernels, forced

and it writes ``benchmarks/results/conv-grad-<backend>[-<isa>].md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxconv.bench import cpu_model  # noqa: E402
import jaxconv.ops._conv_grad as cg  # noqa: E402
from jaxconv.ops import conv, conv_config  # noqa: E402

# (name, H=W, C_in, C_out, k, stride, groups): the ResNet-18 CIFAR convolutions, plus one
# depthwise layer (MobileNet-style) for the depthwise rule.
LAYERS = (
    ("stem 3x3 3->64", 32, 3, 64, 3, 1, 1),
    ("s1 3x3 64->64", 32, 64, 64, 3, 1, 1),
    ("s2 3x3 64->128 /2", 32, 64, 128, 3, 2, 1),
    ("s2 3x3 128->128", 16, 128, 128, 3, 1, 1),
    ("s2 1x1 64->128 /2", 32, 64, 128, 1, 2, 1),
    ("s3 3x3 128->256 /2", 16, 128, 256, 3, 2, 1),
    ("s3 3x3 256->256", 8, 256, 256, 3, 1, 1),
    ("s3 1x1 128->256 /2", 16, 128, 256, 1, 2, 1),
    ("s4 3x3 256->512 /2", 8, 256, 512, 3, 2, 1),
    ("s4 3x3 512->512", 4, 512, 512, 3, 1, 1),
    ("s4 1x1 256->512 /2", 8, 256, 512, 1, 2, 1),
    ("dw 3x3 128 depthwise", 16, 128, 128, 3, 1, 128),
)
QUICK = ("stem 3x3 3->64", "s1 3x3 64->64", "s2 1x1 64->128 /2", "s3 3x3 256->256")
FORMS = ("xla", "taps", "im2col", "winograd", "native")
PASSES = ("fwd", "dx", "dw")


def _timed(fn: Callable[[], object]) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def matmul_ceiling(n: int, rounds: int) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  _timed(lambda: f(a, b))
  ts = [_timed(lambda: f(a, b)) for _ in range(rounds)]
  return 2 * n**3 / statistics.median(ts)


def layer_candidates(batch: int, h: int, cin: int, cout: int, k: int, s: int, groups: int, torch_ok: bool):
  """Returns (flops_fwd, {name: thunk}) for one layer; each thunk runs one jitted computation."""
  p = (k - 1) // 2
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (batch, h, h, cin), jnp.float32)
  w = jax.random.normal(kw, (k, k, cin // groups, cout), jnp.float32) * (2.0 / (k * k * cin / groups)) ** 0.5
  ho = (h + 2 * p - k) // s + 1
  g = jax.random.normal(kg, (batch, ho, ho, cout), jnp.float32)
  flops = 2 * batch * ho * ho * k * k * (cin // groups) * cout

  def ours(x, w):
    return conv(x, w, stride=s, padding=p, groups=groups)

  def stock(x, w):
    return lax.conv_general_dilated(
        x, w, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
    )

  cands = {}
  compile_s = {}

  def compiled(name, fn, *args):
    t = time.perf_counter()
    out = jax.jit(fn).lower(*args).compile()
    compile_s[name] = time.perf_counter() - t
    return out

  wino = cg.winograd_applies((k, k, cin // groups, cout), (s, s), (1, 1), groups, jnp.float32)
  native = cg.native_applies((k, k, cin // groups, cout), groups, jnp.float32) and cg._native.available()
  for form in FORMS:
    if (form == "winograd" and not wino) or (form == "native" and not native):
      continue  # it would run another formulation: not a column of its own
    with conv_config(forward=form, backward=form):
      # Fresh closures per formulation: traces are cached per function, with the plan they saw.
      fwd = compiled(f"fwd/{form}", lambda x, w: ours(x, w), x, w)
      dx = compiled(f"dx/{form}", lambda x, w, g: jax.vjp(lambda x: ours(x, w), x)[1](g)[0], x, w, g)
      dw = compiled(f"dw/{form}", lambda x, w, g: jax.vjp(lambda w: ours(x, w), w)[1](g)[0], x, w, g)
    cands[f"fwd/{form}"] = lambda f=fwd: f(x, w)
    cands[f"dx/{form}"] = lambda f=dx: f(x, w, g)
    cands[f"dw/{form}"] = lambda f=dw: f(x, w, g)

  def step(fn):
    def f(x, w, g):
      y, vjp = jax.vjp(fn, x, w)
      return (y, *vjp(g))

    return f

  with conv_config(forward="xla", backward="xla"):
    stock_step = compiled("step/stock-xla", step(stock), x, w, g)
  auto_step = compiled("step/auto", step(lambda x, w: ours(x, w)), x, w, g)
  cands["step/stock-xla"] = lambda: stock_step(x, w, g)
  cands["step/auto"] = lambda: auto_step(x, w, g)

  if torch_ok:
    import torch

    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tw = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    tg = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())

    def torch_step():
      tx.grad = None
      tw.grad = None
      y = torch.nn.functional.conv2d(tx, tw, stride=s, padding=p, groups=groups)
      y.backward(tg)
      return None

    cands["step/torch"] = torch_step
  return flops, cands, compile_s


def run(args) -> str:
  torch_ok = not args.no_torch
  if torch_ok:
    try:
      import torch

      torch.set_num_threads(2)
    except ImportError:
      torch_ok = False
  batch = 16 if args.quick else args.batch
  rounds = 3 if args.quick else args.rounds
  layers = [l for l in LAYERS if (not args.quick or l[0] in QUICK)]
  t_start = time.perf_counter()
  ceiling = matmul_ceiling(2048 if args.quick else 4096, rounds)
  print(f"matmul ceiling: {ceiling / 1e9:.0f} GFLOP/s", flush=True)

  rows = []
  totals: dict[str, float] = {}
  total_flops = 0
  for name, h, cin, cout, k, s, groups in layers:
    t0 = time.perf_counter()
    flops, cands, compile_s = layer_candidates(batch, h, cin, cout, k, s, groups, torch_ok)
    for fn in cands.values():  # warm-up
      fn()
    times: dict[str, list[float]] = {c: [] for c in cands}
    for _ in range(rounds):  # interleaved rounds: every candidate once per round
      for c, fn in cands.items():
        times[c].append(_timed(fn))
    med = {c: statistics.median(v) for c, v in times.items()}
    best = sum(min(med[f"{p}/{f}"] for f in FORMS if f"{p}/{f}" in med) for p in PASSES)
    med["step/best-per-pass"] = best
    for c in ("step/stock-xla", "step/auto", "step/torch", "step/best-per-pass"):
      if c in med:
        totals[c] = totals.get(c, 0.0) + med[c]
    total_flops += 3 * flops
    rows.append((name, flops, med, compile_s))
    gf = lambda c, mult=1: f"{mult * flops / med[c] / 1e9:.0f}" if c in med else "-"
    print(
        f"{name:22s} {flops / 1e9:5.2f} GFLOP | "
        + " ".join(f"{p}:" + "/".join(gf(f"{p}/{f}") for f in FORMS) for p in PASSES)
        + f" | step xla {gf('step/stock-xla', 3)} auto {gf('step/auto', 3)} torch {gf('step/torch', 3)}"
        + f" ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
  duration = time.perf_counter() - t_start
  return report(args, batch, rounds, ceiling, rows, totals, total_flops, duration, torch_ok)


def report(args, batch, rounds, ceiling, rows, totals, total_flops, duration, torch_ok) -> str:
  backend = jax.default_backend()
  device = jax.devices()[0].device_kind if backend != "cpu" else f"{cpu_model()} ({os.cpu_count()} CPUs visible)"

  def g(fl, t):
    v = fl / t / 1e9
    return f"{v:.0f}" if v >= 10 else f"{v:.2g}"

  lines = [
      f"# Convolution forward + backward on {backend.upper()}: stock XLA, jaxconv formulations, PyTorch",
      "",
      f"Written by `python benchmarks/conv_grad.py{' --quick' if args.quick else ''}"
      f"{f' --isa {args.isa}' if args.isa else ''}` on "
      f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {duration:.0f} s. "
      f"jax {jax.__version__}, {device}, load average at the end {os.getloadavg()[0]:.1f}. "
      f"Native kernels: {cg.native_isa() or 'off'}{' (forced)' if args.isa else ''}.",
      f"Batch {batch}, float32, NHWC/HWIO; medians of {rounds} interleaved rounds after a warm-up. "
      f"Matmul ceiling (jnp.dot, square): **{ceiling / 1e9:.0f} GFLOP/s**.",
  ]
  if backend == "cpu" and os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5:  # this run keeps every core busy
    lines.append(
        "**The machine was busy during this run** (load average above its core count): absolute "
        "GFLOP/s are low and noisy; only the side-by-side ratios of one row mean much."
    )
  lines += [
      "",
      "## Forward + both gradients (GFLOP/s = 3 x forward FLOPs / time)",
      "",
      "`auto` is `jaxconv.ops.conv` with its default plan; `best` sums the fastest formulation "
      "of each pass (what a perfect rule would reach).",
      "",
      "| layer | GFLOP fwd | stock XLA | auto | best | torch | auto / XLA | auto / torch | auto / ceiling | auto plan (fwd, dx, dw) |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for name, flops, med, _ in rows:
    _, h, cin, cout, k, s, groups = next(l for l in LAYERS if l[0] == name)
    plan = cg.auto_plan((batch, h, h, cin), (k, k, cin // groups, cout), (s, s), groups, jax.default_backend())
    t = med.get("step/torch")
    lines.append(
        f"| {name} | {flops / 1e9:.2f} | {g(3 * flops, med['step/stock-xla'])} | {g(3 * flops, med['step/auto'])} | "
        f"{g(3 * flops, med['step/best-per-pass'])} | {g(3 * flops, t) if t else '-'} | "
        f"{med['step/stock-xla'] / med['step/auto']:.2f} | {(t / med['step/auto']) if t else float('nan'):.2f} | "
        f"{3 * flops / med['step/auto'] / ceiling:.0%} | {plan['forward']}, {plan['input_grad']}, {plan['kernel_grad']} |"
    )
  tt = totals.get("step/torch")
  lines += [
      f"| **all layers (time-weighted)** | {total_flops / 3e9:.2f} | {g(total_flops, totals['step/stock-xla'])} | "
      f"{g(total_flops, totals['step/auto'])} | {g(total_flops, totals['step/best-per-pass'])} | "
      f"{g(total_flops, tt) if tt else '-'} | {totals['step/stock-xla'] / totals['step/auto']:.2f} | "
      f"{(tt / totals['step/auto']) if tt else float('nan'):.2f} | {total_flops / totals['step/auto'] / ceiling:.0%} | |",
      "",
      "## Each pass alone, per formulation (GFLOP/s)",
      "",
      "`-`: the formulation does not apply to that layer (winograd: 3x3, stride 1, no groups; native: no groups). "
      f"`winograd` runs on the native kernels here: {'yes' if cg._native.available() else 'no (the XLA formulation)'}. "
      "GFLOP/s count a direct convolution's FLOPs, so Winograd (4x fewer multiplications) can pass the ceiling.",
      "",
      "| layer | " + " | ".join(f"{p} {f}" for p in PASSES for f in FORMS) + " |",
      "|---|" + "---:|" * (len(PASSES) * len(FORMS)),
  ]
  for name, flops, med, _ in rows:
    cells = []
    for p in PASSES:
      ts = {f: med[f"{p}/{f}"] for f in FORMS if f"{p}/{f}" in med}
      fastest = min(ts, key=ts.get)
      cells += ["-" if f not in ts else f"**{g(flops, ts[f])}**" if f == fastest else g(flops, ts[f])
                for f in FORMS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "## Compile time (s, apart from the timings above)",
      "",
      "| layer | stock XLA step | auto step | " + " | ".join(f"{p} {f}" for p in PASSES for f in FORMS) + " |",
      "|---|" + "---:|" * (2 + len(PASSES) * len(FORMS)),
  ]
  for name, _, _, comp in rows:
    lines.append(
        f"| {name} | {comp['step/stock-xla']:.2f} | {comp['step/auto']:.2f} | "
        + " | ".join(f"{comp[f'{p}/{f}']:.2f}" if f"{p}/{f}" in comp else "-" for p in PASSES for f in FORMS)
        + " |"
    )
  if not torch_ok:
    lines += ["", "PyTorch was not available: its columns are empty."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="batch 16, 4 layers, 3 rounds")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--isa", default=None, choices=("avx512", "avx2", "portable"),
                  help="force a variant of the native kernels (default: the best this CPU runs)")
  ap.add_argument(
      "--out",
      default=None,
      help="Markdown report path ('-' for stdout only; default benchmarks/results/conv-grad-<backend>.md)",
  )
  args = ap.parse_args(argv)
  if args.out is None:
    suffix = f"-{args.isa}" if args.isa else ""
    args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            f"conv-grad-{jax.default_backend()}{suffix}.md")
  with conv_config(native_isa=args.isa or "auto"):  # the plan column too
    text = run(args)
  print(text)
  if args.out != "-":
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
