"""A second sharded training run with JAX's persistent compilation cache, with and without
``jax_remove_custom_partitioning_ptr_from_cache_key``.

Under a mesh jaxconv's native convolutions are wrapped in ``custom_partitioning``, whose module
names its Python callbacks by their address in the process: by default the cache key of a
sharded train step differs in every process, and a second run compiles it again. jaxconv's calls
also name their kernel in the module, so the address may be left out of the key.

For each setting of the flag, ``jaxconv train`` (one process, two CPU devices: the trainer
shards the batch over a mesh) runs twice on one fresh cache folder: the first run fills it, the
second may load from it. The report gives, per run, whether the train and eval steps were cache
hits (JAX's own log lines), the time to the first step's metrics (tracing, compiling or loading,
and one step) and the whole process's wall time; the median over interleaved rounds.

Run::

  python benchmarks/compile_cache.py --out benchmarks/results/compile-cache-cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

ARGS = ["--model", "resnet18", "--model-kwargs", '{"cifar_stem": true}', "--epochs", "1", "--batch-size", "32",
        "--max-steps", "3", "--log-every", "1", "--checkpoint-every", "0", "--no-plots", "--no-progress"]
FLAG = "JAX_REMOVE_CUSTOM_PARTITIONING_PTR_FROM_CACHE_KEY"


def run(cache: str, workdir: str, remove_ptr: bool) -> dict:
  """One ``jaxconv train`` on two devices with the persistent cache in ``cache``."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_DEBUG_LOG_MODULES="jax._src.compiler", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             **{FLAG: "1" if remove_ptr else "0"})
  t = time.perf_counter()
  out = subprocess.run([sys.executable, "-m", "jaxconv.cli", "train", *ARGS, "--workdir", workdir], env=env,
                       capture_output=True, text=True)
  wall = time.perf_counter() - t
  if out.returncode != 0:
    raise RuntimeError(f"jaxconv train failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
  hits = set(re.findall(r"Persistent compilation cache hit for '(\w+)'", out.stderr))
  first = json.loads(open(os.path.join(workdir, "metrics.jsonl")).readline())
  return {"train": "jit_train_step" in hits, "eval": "jit_eval_step" in hits, "first_step_s": first["elapsed_s"],
          "wall_s": wall}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
  ap.add_argument("--out", default="-")
  args = ap.parse_args(argv)
  rows = {(flag, i): [] for flag in (False, True) for i in (1, 2)}
  with tempfile.TemporaryDirectory() as d:
    for r in range(args.rounds):
      for flag in (False, True):
        cache = os.path.join(d, f"cache-{r}-{int(flag)}")
        for i in (1, 2):
          rows[flag, i].append(run(cache, os.path.join(d, f"run-{r}-{int(flag)}-{i}"), flag))
  import jax

  from jaxconv.bench import cpu_model

  hit = lambda recs, k: "hit" if all(x[k] for x in recs) else "miss" if not any(x[k] for x in recs) else "mixed"
  lines = ["# A second sharded training run with the persistent compilation cache (CPU)", "",
           f"Written by `python benchmarks/compile_cache.py --rounds {args.rounds}` on "
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: jax {jax.__version__}, "
           f"{cpu_model()} ({os.cpu_count()} CPUs), XLA's default pipeline.", "",
           "`jaxconv train` of ResNet-18 (CIFAR stem) on the bundled digits, one process with two CPU devices "
           "(the batch of 32 sharded over a mesh: the native kernels run under `custom_partitioning`), 3 steps; "
           "two runs on one fresh `JAX_COMPILATION_CACHE_DIR` per setting of "
           f"`{FLAG}`. Medians over {args.rounds} interleaved rounds.", "",
           "| remove the callback address from the key | run | train step | eval step | first step s | process s |",
           "|---|---|---|---|---:|---:|"]
  for (flag, i), recs in rows.items():
    lines.append(f"| {'yes' if flag else 'no (JAX default)'} | {'first' if i == 1 else 'second'} | "
                 f"{hit(recs, 'train')} | {hit(recs, 'eval')} | "
                 f"{statistics.median(x['first_step_s'] for x in recs):.2f} | "
                 f"{statistics.median(x['wall_s'] for x in recs):.2f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out != "-":
    pathlib.Path(args.out).write_text(text)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
