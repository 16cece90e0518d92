"""Strict test harness: 8 fake CPU devices, rank promotion as an error, deterministic seeds."""

import atexit
import gc
import os
import shutil
import subprocess
import sys
import tempfile

# The suite runs on CPU; JAXCONV_TEST_PLATFORM=gpu runs it on an accelerator instead (a device check).
PLATFORM = os.environ.get("JAXCONV_TEST_PLATFORM", "cpu")
if PLATFORM == "cpu":
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow (via tfds) must not grab GPUs

# XLA:CPU's quick-compile pipeline. Compiling, not computing, is most of the suite's time (its
# programs are small and run once), and without LLVM's optimisations and with the elemental
# fusion emitters XLA:CPU compiles 3-4x faster (a ResNet-18 gradient: 5.1 s -> 1.4 s) into
# slower code for the same HLO, so everything the tests check of what jaxconv emits is the same;
# only the last bits of a float may differ (docs/design.md: tolerances and ``OPTIMIZED``). The
# benchmark smoke run and JAXCONV_TEST_XLA=default run XLA's default pipeline, the one users
# get. A jaxlib that does not know these flags (XLA aborts on unknown ones) runs it too.
QUICK_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def _pipeline_flags() -> str:
  if PLATFORM != "cpu" or os.environ.get("JAXCONV_TEST_XLA", "quick") == "default":
    return ""
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"], capture_output=True,
                         env={**os.environ, "XLA_FLAGS": QUICK_COMPILE_FLAGS, "JAX_PLATFORMS": "cpu"})
  return QUICK_COMPILE_FLAGS if probe.returncode == 0 else ""


# Decided once by the pytest process; the xdist workers and the processes the tests start (the
# CLI, training runs) inherit it through the environment. Must happen before JAX initialises
# its backends.
if "JAXCONV_TEST_XLA_FLAGS" not in os.environ:
  os.environ["JAXCONV_TEST_XLA_FLAGS"] = _pipeline_flags()
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), os.environ["JAXCONV_TEST_XLA_FLAGS"], "--xla_force_host_platform_device_count=8"]
).strip()

# One persistent compilation cache for the run, made by the pytest process and inherited (through
# the environment) by the xdist workers and the processes the tests start (the CLI, the README
# blocks): many tests compile the same step or reference. The pytest process removes it at exit.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"jaxconv-test-jit-{os.getpid()}")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# jaxconv's partitioned native calls name their kernel in the module (ops/_native/_lowering.py),
# so the cache's key may leave out the address of the partitioner's callbacks, which differs in
# every process: the sharded training runs that the tests start reuse each other's programs.
os.environ.setdefault("JAX_REMOVE_CUSTOM_PARTITIONING_PTR_FROM_CACHE_KEY", "true")

# The tests' objects (traced programs, compiled executables, models) pile up in the generations
# that Python's cyclic collector scans: with its default thresholds the suite ran a full
# collection every few seconds, each over more than a million objects (about 7% of a worker's
# time). Collecting the youngest generation every 20000 allocations instead of 700 keeps what it
# frees (cycles are still freed; the suite's peak memory did not grow) at a fraction of the scans.
gc.set_threshold(20_000, 50, 100)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_platforms", PLATFORM)
if PLATFORM != "cpu":
  # GPUs multiply float32 in TF32 by default (H100: 8e-4 relative between two formulations of
  # one convolution); the tests check float32 results, so they ask for full precision.
  jax.config.update("jax_default_matmul_precision", "highest")

settings.register_profile(
    "ci",
    derandomize=True,  # the same examples on every run
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="module")
def _clear_jax_caches():
  """Drops JAX's caches (traced and compiled programs) after each test module.

  Few programs serve two modules, and kept to the end the caches grew to millions of objects:
  each collection of the cyclic garbage collector scanned them, and freeing them all at the
  worker's exit (JAX's ``atexit`` handler, pytest's last collections) took 3-4 s. Measured on
  the native, gradient, model and pooling tests: 116 s -> 110 s, of which exit 3.8 s -> 0.5 s.
  """
  yield
  jax.clear_caches()


@pytest.fixture
def rng() -> np.random.Generator:
  """A NumPy generator with a fixed seed."""
  return np.random.default_rng(0)


@pytest.fixture
def key() -> jax.Array:
  """A JAX PRNG key with a fixed seed."""
  return jax.random.key(0)


@pytest.fixture(scope="module")
def tvm():
  """``torchvision.models``, importable next to the CPU build of PyTorch.

  The torchvision wheel that matches torch 2.13 is a CUDA build: its compiled operators (nms,
  roi_align, ...) cannot load next to the CPU torch, and ``import torchvision`` fails while
  registering fake implementations for those never-loaded operators. The classification models
  are pure Python and need none of them, so during the import the registrations are made
  no-ops; everything is restored afterwards.
  """
  import sys

  import torch

  if "torchvision" not in sys.modules:
    register_fake, impl = torch.library.register_fake, torch.library.Library.impl

    def fake(op, *args, **kwargs):
      return (lambda fn: fn) if isinstance(op, str) or not callable(op) else op

    def lenient_impl(self, *args, **kwargs):
      try:
        return impl(self, *args, **kwargs)
      except RuntimeError:
        return None

    torch.library.register_fake, torch.library.Library.impl = fake, lenient_impl
    try:
      import torchvision  # noqa: F401
    finally:
      torch.library.register_fake, torch.library.Library.impl = register_fake, impl
  import torchvision.models

  return torchvision.models


@pytest.fixture(scope="module")
def one_torch_thread():
  """PyTorch on one thread while a module's references run, restored afterwards.

  Its OpenMP threads meet at the end of every operator, and on a busy machine (the other test
  worker, other processes) one of them is often descheduled while the other spins: Captum's
  16-step integrated gradients took 2-3 s on two threads of a loaded 2-core machine and 0.06 s on
  one, a GoogLeNet forward on two 64x64 images 0.7-2 s and 0.02 s. Only float32 rounding differs.
  """
  import torch

  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


# The modules whose tests run whole trainings in other processes (a minute or more each) run
# first: on two workers, one of them started near the end would leave the other idle while it
# finishes. The rest keep their order, and ``-n N`` schedules by work stealing (an idle worker
# takes tests from the end of another's queue) unless ``--dist`` asks for something else.
_LONG_FIRST = ("test_multiprocess.py", "test_train.py", "test_readme.py")


def pytest_configure(config):
  if getattr(config.option, "dist", "no") == "load" and "--dist" not in " ".join(config.invocation_params.args):
    config.option.dist = "worksteal"
  if not hasattr(config, "workerinput"):  # the pytest process, before any worker starts
    _build_native_kernels()


def _build_native_kernels():
  """Builds the native kernels' variants that this CPU runs (the tests run each), all at once.

  In a fresh environment each is compiled on first use, about 30 s of compiler time in all, and
  both test workers asked for the same variant while collecting: one compiled it while the other
  waited (14 s with one core idle). Built here, ahead, the cache serves every worker and child
  process. A variant that fails to build fails again, with its reason, in the tests that need it.
  """
  if PLATFORM != "cpu":
    return
  from jaxconv.ops._native import _build

  isas = _build.cpu_isas()
  if isas and _build.enabled_by_env() and _build.compiler() is not None:
    _build.build_many(isas)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: modules stay whole
