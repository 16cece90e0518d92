"""keep_host_memory: XLA:CPU's per-run buffers are reused instead of faulted in afresh."""

import json
import os
import platform
import subprocess
import sys

import pytest


_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A fresh interpreter: the allocator must be set before JAX starts its threads. Each run of f
# allocates a 64 MiB temporary (a transpose XLA cannot fuse into the reduction) and returns a
# scalar; the faults of the last runs are printed.
_PROBE = r"""
import json, resource, sys, time
from jaxconv.train import keep_host_memory
kept = keep_host_memory() if sys.argv[1] == "1" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (x * 2.0).reshape(4096, 4096).T.reshape(-1)[::-1].max())
x = jnp.ones((16 << 20,), jnp.float32)
faults = []
for _ in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  time.sleep(0.05)  # XLA frees a run's buffers on its own thread, just after the result is ready
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[7:]}))
"""


def _faults(keep: bool, **env) -> dict:
  # XLA's default pipeline, as users run it (the suite's quick-compile code is slower to run).
  base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _PROBE, "1" if keep else "0"], capture_output=True,
                       text=True, check=True, env={**base, **env}, timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _GLIBC, reason="sets glibc's malloc")
def test_second_step_takes_no_page_faults():
  kept, system = _faults(True), _faults(False)
  assert kept["kept"] is True
  # 64 MiB of fresh 4 KiB pages is 16,384 faults per run; reused memory takes (almost) none.
  assert min(system["faults"]) > 8000, system
  assert max(kept["faults"]) < 1000, kept


@pytest.mark.skipif(not _GLIBC, reason="sets glibc's malloc")
def test_opt_out_leaves_malloc_alone():
  assert _faults(True, JAXCONV_SYSTEM_MALLOC="1")["kept"] is False


@pytest.mark.skipif(not _GLIBC, reason="sets glibc's malloc")
def test_the_documented_environment_does_the_same():
  """MALLOC_ENV (the variables the README gives for scripts) without calling the function."""
  from jaxconv.train.host import MALLOC_ENV

  env = _faults(False, **MALLOC_ENV)
  assert env["kept"] is False and max(env["faults"]) < 1000, env
