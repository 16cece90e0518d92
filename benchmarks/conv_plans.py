"""Whole-model train steps under each convolution plan, native-kernel variant and parallel mode.

The layer benchmark (``benchmarks/conv_grad.py``) times each convolution alone; a model also
runs batch norm, activations and the optimizer, and XLA fuses some of them into the
convolutions. This script times one SGD train step (forward in train mode, cross-entropy,
gradients, momentum update, batch statistics) of

* ResNet-18, CIFAR variant (32x32x3, batch 128);
* MobileNetV2 (32x32x3, batch 64): depthwise convolutions;
* LeNet-5 on 28x28x1 (MNIST) at batch 32, 128 and 512: 5x5 convolutions with 1->6 and 6->16
  channels, 2x2 max pools;

under these plans (all set with :func:`jaxconv.ops.conv_config`):

* ``all xla``: ``conv_config(forward="xla", backward="xla")``, i.e. XLA's own gradients;
* ``auto without native``: ``conv_config(native=False)``, the rules for machines without the
  native kernels (XLA forward and input gradient, Winograd/im2col kernel gradients, depthwise
  as fused multiply-adds);
* ``auto without winograd``: ``conv_config(winograd=False)`` (native direct and depthwise
  kernels only);
* ``auto [avx512]``, ``auto [avx2]``, ``auto [portable]``: the default plan with each variant
  of the native kernels forced (``conv_config(native_isa=...)``; those the CPU runs);

and these peers, for ResNet-18 and LeNet-5 (the same architectures):

* stock Flax (``flax.linen.Conv``/``BatchNorm``/``nn.max_pool``, the benchmark suite's stock
  models);
* PyTorch with its default kernels, and PyTorch restricted to AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
  ``ONEDNN_MAX_CPU_ISA=AVX2``; ResNet-18 only), each in a worker process of its own (those
  variables are read when PyTorch loads), with ``torch.set_num_threads`` = the cores JAX sees;
* the trainer's default data-parallel mode (``jaxconv.train.Placement.create("auto")``: ``jit``
  over a 1-D mesh, batch sharded along ``"data"``, state replicated) on two CPU devices in a
  worker process (``--xla_force_host_platform_device_count=2`` and
  ``--xla_cpu_multi_thread_eigen=false``, ``JAXCONV_NATIVE_THREADS=1``: one thread per
  device), with the native kernels on and off; and the same step and placement in a worker with
  one device and every core (``1 device``), the reference that data parallelism must beat.

Every process compiles its steps first (compile time reported apart), then all of them are timed
interleaved, round by round (a step shorter than a quarter second is run back to back as many
times as fit in one, and reported per step): each round times every step of the main process once, then asks
each worker for one round, with a pause of half a second before each process's turn (the
previous one's threads spin for a while before they sleep). Every process, PyTorch's included,
first calls :func:`jaxconv.train.keep_host_memory` (as ``jaxconv train`` does), so that no step
page-faults in memory that the previous one freed; ``--system-malloc`` leaves glibc's defaults.
Medians over the rounds after a warm-up. Compare within one run:
absolute numbers move by up to 15% between runs minutes apart on a shared 2-core machine, while
the ratios of one run stay within a few percent.

Run::

  python benchmarks/conv_plans.py            # ~15 min on 2 cores
  python benchmarks/conv_plans.py --rounds 3 --models resnet18_cifar --no-dp
  python benchmarks/conv_plans.py --models lenet5_b32,lenet5,lenet5_b512 --out benchmarks/results/lenet5-cpu.md

It writes ``benchmarks/results/conv-plans-<backend>.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = {  # name -> (registry name, kwargs, image, batch, the peers' model or None)
    "resnet18_cifar": ("resnet18", dict(num_classes=10, cifar_stem=True), (32, 32, 3), 128, "resnet18_cifar"),
    "mobilenet_v2": ("mobilenet_v2", dict(num_classes=10), (32, 32, 3), 64, None),
    "lenet5_b32": ("lenet5", dict(num_classes=10, input_size=28), (28, 28, 1), 32, "lenet5"),
    "lenet5": ("lenet5", dict(num_classes=10, input_size=28), (28, 28, 1), 128, "lenet5"),
    "lenet5_b512": ("lenet5", dict(num_classes=10, input_size=28), (28, 28, 1), 512, "lenet5"),
}
_SUITE_CASE = {"resnet18_cifar": "resnet18_cifar_train", "lenet5": "lenet5_train"}  # peer -> bench ModelCase
# Steps shorter than this are timed back to back, as many as fit, and reported per step.
_MIN_TIMED_S = 0.25
_TORCH_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# A pause before each process's round: the previous process's idle threads (OpenMP's and XLA's
# spin before they sleep) must not take the cores from the next one. Without it the two-device
# worker, which ran right after a PyTorch worker, measured 2.13 s per step here, and 1.76 s
# alone.
_SETTLE_S = 0.5
_DP_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false",
           "JAXCONV_NATIVE_THREADS": "1"}
# Workers: kind -> (environment, models it times).
WORKERS = {
    "PyTorch": ({}, ("resnet18_cifar", "lenet5_b32", "lenet5", "lenet5_b512")),
    "PyTorch [avx2]": (_TORCH_AVX2, ("resnet18_cifar",)),
    "2 devices": (_DP_ENV, ("resnet18_cifar",)),
    "1 device": ({}, ("resnet18_cifar",)),
}
# The trainer's-step workers' rows: kind -> ((label, parallel mode, native kernels), ...).
_DP_ROWS = {
    "2 devices": (("native", "auto", True), ("without native", "auto", False), ("1 device (1 thread)", "none", True)),
    "1 device": (("", "auto", True),),  # the same step, one device with every core (the reference)
}


def _data(name):
  import numpy as np

  _, _, image, batch, _ = MODELS[name]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, *image)).astype(np.float32)
  y = (np.arange(batch) % 10).astype(np.int32)
  return x, y


def _jax_steps(name: str, kind: str) -> dict:
  """plan -> (prepare, wait) for the main process's JAX steps of one model."""
  del kind
  import numpy as np

  from jaxconv.bench._models import _flax_train_prepare
  from jaxconv.bench._stock import stock_flax_model
  from jaxconv.models import create_model
  from jaxconv.ops import conv_config, native_status
  from jaxconv.ops._native import _build

  reg, kw, _, _, peer = MODELS[name]
  x, y = _data(name)
  plans = {"all xla": dict(forward="xla", backward="xla"), "auto without native": dict(native=False),
           "auto without winograd": dict(winograd=False)}
  for isa in _build.cpu_isas():
    if native_status(isa).available:  # builds it now if needed; one that fails to build is left out
      plans[f"auto [{isa}]"] = dict(native_isa=isa)
  steps = {}
  for plan, cfg in plans.items():
    prepare, wait, _ = _flax_train_prepare(create_model(reg, **kw), x, y, np.float32, 0)
    steps[plan] = (lambda prepare=prepare, cfg=cfg: _under(conv_config(**cfg), prepare), wait)
  if peer is not None:
    prepare, wait, _ = _flax_train_prepare(stock_flax_model(peer, 10), x, y, np.float32, 0)
    steps["stock Flax"] = (prepare, wait)
  return steps


def _under(ctx, prepare):
  with ctx:
    return prepare()  # traces and compiles under the plan


def _torch_steps(name: str, kind: str) -> dict:
  del kind  # the worker's environment sets the instruction set
  import torch

  from jaxconv.bench._models import MODEL_SUITES, _torch_train_prepare

  torch.set_num_threads(os.cpu_count() or 1)
  x, y = _data(name)
  peer = MODELS[name][4]
  case = MODEL_SUITES[_SUITE_CASE[peer]][1]
  run, wait, _ = _torch_train_prepare(torch, peer, case, x, y, "float32", 0)
  return {"": (lambda: run, wait)}


def _dp_steps(name: str, kind: str) -> dict:
  """The trainer's default placement and step over the process's devices (rows ``_DP_ROWS[kind]``)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from jaxconv.models import create_model
  from jaxconv.ops import conv_config
  from jaxconv.train import Placement

  reg, kw, _, _, _ = MODELS[name]
  x, y = _data(name)
  model = create_model(reg, **kw)
  tx = optax.sgd(0.01, momentum=0.9)
  v = jax.jit(lambda k: model.init(k, jnp.asarray(x[:1]), train=False))(jax.random.key(0, impl="rbg"))
  state0 = jax.device_get((v["params"], v["batch_stats"], tx.init(v["params"])))  # host: each plan puts its own

  def step(state, xb, yb):
    p, s, o = state

    def loss_fn(p):
      logits, upd = model.apply({"params": p, "batch_stats": s}, xb, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), upd["batch_stats"]

    (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    u, o = tx.update(g, o, p)
    return (optax.apply_updates(p, u), s, o), loss

  steps = {}
  for label, parallel, native in _DP_ROWS[kind]:
    placement = Placement.create(parallel)

    def prepare(placement=placement, native=native):
      st = placement.put_state(jax.tree.map(np.copy, state0))  # the step donates it
      xb, yb = placement.put_batch((x, y))
      with conv_config(native=native):
        if placement.mode == "mesh":
          fn = placement.compile_train(lambda s, a, b: step(s, a, b))
        else:
          fn = jax.jit(step, donate_argnums=0)
        compiled = fn.lower(st, xb, yb).compile()
      box = [st]

      def run():
        box[0], loss = compiled(box[0], xb, yb)
        return loss

      return run

    steps[label] = (prepare, jax.block_until_ready)
  return steps


# kind -> factory(model name, kind) -> {plan: (prepare, wait)}
_FACTORIES = {"jax": _jax_steps, "PyTorch": _torch_steps, "PyTorch [avx2]": _torch_steps, "2 devices": _dp_steps,
              "1 device": _dp_steps}


class _Local:
  """The steps of one process: compiled once, then timed a round at a time."""

  def __init__(self, kind: str, models):
    self.runs, self.waits, self.compile_s = {}, {}, {}
    for name in models:
      for plan, (prepare, wait) in _FACTORIES[kind](name, kind).items():
        key = f"{name}|{plan}"
        t = time.perf_counter()
        self.runs[key] = prepare()
        self.compile_s[key] = time.perf_counter() - t
        self.waits[key] = wait
    self.reps = {}
    for k in self.runs:  # warm-up, and how many steps to time back to back
      self.waits[k](self.runs[k]())
      t = time.perf_counter()
      self.waits[k](self.runs[k]())
      self.reps[k] = max(1, min(100, int(_MIN_TIMED_S / max(time.perf_counter() - t, 1e-6))))

  def round(self) -> dict:
    out = {}
    for k in self.runs:
      t = time.perf_counter()
      for _ in range(self.reps[k]):
        last = self.runs[k]()
      self.waits[k](last)
      out[k] = (time.perf_counter() - t) / self.reps[k]
    return out


def _worker(kind: str, models) -> int:
  local = _Local(kind, models)
  print(json.dumps({"ready": local.compile_s}), flush=True)
  for line in sys.stdin:
    if line.strip() != "round":
      break
    print(json.dumps(local.round()), flush=True)
  return 0


class _Remote:
  def __init__(self, kind: str, env: dict, models):
    self.kind = kind
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind, "--models",
                                  ",".join(models)], env={**os.environ, **env}, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    self.compile_s = self._read()["ready"]

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the {self.kind} worker exited (code {self.proc.wait()})")
    return json.loads(line)

  def round(self) -> dict:
    self.proc.stdin.write("round\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def _label(kind: str, plan: str) -> str:
  if kind == "jax":
    return plan
  return kind if not plan else f"{kind}: {plan}"


def report(results: dict, compile_s: dict, rounds: int, duration: float, env: dict) -> str:
  import jax

  from jaxconv.bench import cpu_model

  backend = jax.default_backend()
  lines = [
      f"# Train steps under each convolution plan ({backend.upper()})",
      "",
      f"Written by `python benchmarks/conv_plans.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
      f"UTC in {duration:.0f} s: jax {jax.__version__}, {env['torch']}, {cpu_model()} ({os.cpu_count()} CPUs "
      f"visible), load average at the end {os.getloadavg()[0]:.1f}. Native kernels: {env['native']}. "
      f"Host memory: {env['malloc']}.",
      f"One SGD train step per call, float32; medians of {rounds} interleaved rounds after a warm-up "
      "(min-max in brackets); compile time apart (the first call of a native variant includes its build "
      "when it was not cached). See the script's docstring for each row.",
      "",
  ]
  for name in MODELS:
    rows = {k.split("|", 1)[1]: v for k, v in results.items() if k.startswith(name + "|")}
    if not rows:
      continue
    batch = MODELS[name][3]
    med = {k: statistics.median(v) for k, v in rows.items()}
    refs = [r for r in ("all xla", "auto without native", "stock Flax", "PyTorch", "PyTorch [avx2]", "1 device")
            if r in med]
    lines += [f"## {name}, batch {batch}", "",
              "| step | images/s | step (ms) | " + " | ".join(f"vs {r}" for r in refs) + " | compile (s) |",
              "|---|---:|---:|" + "---:|" * len(refs) + "---:|"]
    for k, t in med.items():
      lo, hi = min(rows[k]), max(rows[k])
      comp = compile_s.get(f"{name}|{k}")
      vs = " | ".join(f"{med[r] / t:.2f}x" for r in refs)
      lines.append(f"| {k} | {batch / t:.1f} | {t * 1e3:.1f} [{lo * 1e3:.1f}-{hi * 1e3:.1f}] | {vs} | "
                   f"{f'{comp:.1f}' if comp is not None else '-'} |")
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no-torch", action="store_true", help="no PyTorch workers")
  ap.add_argument("--no-dp", action="store_true", help="no two-device data-parallel worker")
  ap.add_argument("--system-malloc", action="store_true",
                  help="leave glibc's malloc as it is (default: every process keeps freed host memory)")
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  ap.add_argument("--out", default=None, help="Markdown path ('-': stdout only); default "
                  "benchmarks/results/conv-plans-<backend>.md")
  args = ap.parse_args(argv)
  names = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    ap.error(f"unknown models {unknown}; choose from {list(MODELS)}")
  if args.system_malloc:
    os.environ["JAXCONV_SYSTEM_MALLOC"] = "1"  # read by the workers too
  from jaxconv.train import keep_host_memory

  kept = keep_host_memory()  # before JAX starts its threads
  if args.worker:
    return _worker(args.worker, names)
  import importlib.util

  import jax

  from jaxconv.ops import native_status

  kinds = {}
  have_torch = importlib.util.find_spec("torch") is not None
  for kind, (env, models) in WORKERS.items():
    models = [m for m in models if m in names]
    if not models or (kind.startswith("PyTorch") and (args.no_torch or not have_torch)):
      continue
    if kind == "2 devices" and (args.no_dp or jax.default_backend() != "cpu"):
      continue
    kinds[kind] = (env, models)
  t0 = time.perf_counter()
  procs = [_Local("jax", names)]
  procs += [_Remote(kind, env, models) for kind, (env, models) in kinds.items()]
  results, compile_s = {}, {}
  for p in procs:
    kind = getattr(p, "kind", "jax")
    for k, v in p.compile_s.items():
      name, plan = k.split("|", 1)
      compile_s[f"{name}|{_label(kind, plan)}"] = v
  for r in range(args.rounds):
    for p in procs:
      time.sleep(_SETTLE_S)
      kind = getattr(p, "kind", "jax")
      for k, v in p.round().items():
        name, plan = k.split("|", 1)
        results.setdefault(f"{name}|{_label(kind, plan)}", []).append(v)
    print(f"round {r + 1}/{args.rounds}", flush=True)
  for p in procs[1:]:
    p.close()
  torch_version = "no PyTorch"
  if have_torch and any(k.startswith("PyTorch") for k in kinds):
    torch_version = "torch " + subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                              capture_output=True, text=True).stdout.strip()
  s = native_status()
  env = {"torch": torch_version, "native": f"{s.isa} by default ({s.reason}); CPU runs {', '.join(s.cpu_isas)}",
         "malloc": ("every process keeps freed host memory for reuse (`jaxconv.train.keep_host_memory`)" if kept
                    else "glibc's malloc as configured by the environment")}
  text = report(results, compile_s, args.rounds, time.perf_counter() - t0, env)
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
