"""Two processes against one on this machine: the trainer's throughput, same global batch.

Runs ``jaxconv train`` three ways on the same model, data, global batch and seed, and reports
the trainer's own examples per second (``metrics.jsonl``, the median of the records after the
first, which holds the compilation):

- one process, one device;
- ``jaxconv launch -n 2``: two processes with one CPU device each (gloo collectives over
  127.0.0.1, native kernels on one thread each);
- one process, two devices (``--xla_force_host_platform_device_count=2``), for reference.

Where the two-process step's extra time goes: the same script, started as two processes, times
the all-reduce of one float32 array of ResNet-18's parameter count (the gradient) and of a
small one (what each batch norm exchanges), over gloo, and the report lists both.

Run::

  python benchmarks/multiprocess.py --out benchmarks/results/multiprocess-cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ARGS = ["--model", "resnet18", "--model-kwargs", '{"cifar_stem": true}', "--epochs", "1", "--no-plots",
        "--no-progress"]


def run(kind: str, workdir: str, batch: int, steps: int, log_every: int) -> dict:
  args = [*ARGS, "--batch-size", str(batch), "--max-steps", str(steps), "--log-every", str(log_every),
          "--workdir", workdir]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if kind == "2 processes x 1 device":
    cmd = [sys.executable, "-m", "jaxconv.cli", "launch", "-n", "2", "--", "train", *args]
  else:
    cmd = [sys.executable, "-m", "jaxconv.cli", "train", *args]
    if kind == "1 process x 2 devices":
      env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAXCONV_NATIVE_THREADS="1")
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if out.returncode != 0:
    raise RuntimeError(f"{kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
  recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  rates = [r["examples_per_sec"] for r in recs if r["split"] == "train"][1:]
  return {"examples_per_sec": statistics.median(rates), "records": len(rates)}


def _collectives() -> None:
  """In each of two processes: median all-reduce times over gloo (process 0 prints them)."""
  from jaxconv.train import distributed

  distributed.initialize()
  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = Mesh(np.array(sorted(jax.devices(), key=lambda d: d.process_index)), ("data",))
  for n in (11_173_962, 128):  # ResNet-18 (CIFAR stem, 10 classes) parameters; a batch norm's channels
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), np.ones((1, n), np.float32),
                                               (2, n))
    f = jax.jit(lambda a: a.sum(0), out_shardings=NamedSharding(mesh, P()))
    jax.block_until_ready(f(x))
    times = []
    for _ in range(20):
      t = time.perf_counter()
      jax.block_until_ready(f(x))
      times.append(time.perf_counter() - t)
    if jax.process_index() == 0:
      print(f"allreduce {n} {statistics.median(times) * 1e3:.3f}", flush=True)


def collectives() -> dict:
  """``{floats: ms}`` from two processes of :func:`_collectives`."""
  from jaxconv.train.launch import free_port

  port, env = free_port(), dict(os.environ)
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, __file__, "--collectives"], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL,
                            env=dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                     JAX_PROCESS_ID=str(i), JAX_NUM_CPU_DEVICES="1"))
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  return {int(l.split()[1]): float(l.split()[2]) for l in outs[0].splitlines() if l.startswith("allreduce ")}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=128, help="global batch")
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--log-every", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median is reported")
  ap.add_argument("--out", default="-")
  ap.add_argument("--collectives", action="store_true", help=argparse.SUPPRESS)  # one of the two probes
  args = ap.parse_args(argv)
  if args.collectives:
    _collectives()
    return 0
  kinds = ["1 process x 1 device", "2 processes x 1 device", "1 process x 2 devices"]
  got = {k: [] for k in kinds}
  with tempfile.TemporaryDirectory() as d:
    for r in range(args.rounds):
      for k in kinds:
        got[k].append(run(k, os.path.join(d, f"{r}-{kinds.index(k)}"), args.batch, args.steps,
                          args.log_every)["examples_per_sec"])
  import jax

  from jaxconv.bench import cpu_model

  base = statistics.median(got[kinds[0]])
  lines = ["# Two processes against one (CPU)", "",
           f"Written by `python benchmarks/multiprocess.py --batch {args.batch} --steps {args.steps} "
           f"--rounds {args.rounds}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: "
           f"jax {jax.__version__}, {cpu_model()} ({os.cpu_count()} CPUs).", "",
           f"`jaxconv train` of ResNet-18 (CIFAR stem) on the bundled digits (28x28x1), global batch {args.batch}, "
           f"{args.steps} steps; examples/s is the trainer's own (`metrics.jsonl`, one record per "
           f"{args.log_every} steps, the first left out for the compilation), median over records, then over "
           f"{args.rounds} interleaved rounds.", "",
           "| layout | examples/s | vs 1 process x 1 device | per round |", "|---|---:|---:|---|"]
  for k in kinds:
    m = statistics.median(got[k])
    lines.append(f"| {k} | {m:.1f} | {m / base:.2f}x | {', '.join(f'{v:.1f}' for v in got[k])} |")
  coll = collectives()
  step_ms = {k: args.batch / statistics.median(got[k]) * 1e3 for k in kinds}
  lines += ["", "Where the two-process step's extra time goes (all-reduce over gloo on 127.0.0.1, one float32 "
            "array, median of 20, two processes of this script):", "",
            "| all-reduce | ms |", "|---|---:|"]
  lines += [f"| {n:,} floats | {ms:.2f} |" for n, ms in coll.items()]
  lines += ["", f"A step takes {step_ms[kinds[0]]:.0f} ms in one process and {step_ms[kinds[1]]:.0f} ms in two. "
            "The gradient's all-reduce is the row with the parameter count; every batch norm adds a small "
            "exchange in the forward pass and one in the backward pass, each also a point where the faster "
            "process waits for the slower."]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out != "-":
    pathlib.Path(args.out).write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
