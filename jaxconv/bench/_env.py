"""What the numbers were measured on: environment capture, the matmul ceiling, datasheet peaks."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from typing import Any, Optional

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "XLA_CPU_MULTI_THREAD_EIGEN",
    "NPROC",
)

# Dense (no sparsity) peak FLOP/s from vendor datasheets, matched by a lower-case substring of
# jax's device_kind; the first match wins, so more specific names come first.
DATASHEET_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("h100 pcie", "NVIDIA H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12}),
    ("h100", "NVIDIA H100 SXM", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    ("h200", "NVIDIA H200 SXM", {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    ("a100", "NVIDIA A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),
    ("tpu v5 lite", "Google TPU v5e", {"bfloat16": 197e12}),
    ("tpu v5p", "Google TPU v5p", {"bfloat16": 459e12}),
    ("tpu v4", "Google TPU v4", {"bfloat16": 275e12}),
)


def datasheet_peak(device_kind: str, dtype: str) -> Optional[dict[str, Any]]:
  """The vendor's dense peak for a device and dtype, or ``None`` if the device is not listed.

  Example:
    >>> datasheet_peak("NVIDIA H100 80GB HBM3", "bfloat16")
    {'device': 'NVIDIA H100 SXM', 'dtype': 'bfloat16', 'flops_per_s': 989000000000000.0}
    >>> datasheet_peak("cpu", "float32") is None
    True
  """
  kind = device_kind.lower()
  for key, label, peaks in DATASHEET_PEAKS:
    if key in kind and dtype in peaks:
      return {"device": label, "dtype": dtype, "flops_per_s": peaks[dtype]}
  return None


def cpu_model() -> str:
  """The processor's name (``model name`` in /proc/cpuinfo; elsewhere ``platform.processor()``),
  for the line of a report that says which machine printed it.

  Example:
    >>> from jaxconv.bench import cpu_model
    >>> isinstance(cpu_model(), str) and cpu_model() != ""
    True
  """
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
  try:
    from importlib import metadata

    return metadata.version(module)
  except Exception:  # noqa: BLE001 - not installed or no metadata: just unknown
    return None


def _git_commit() -> Optional[str]:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    if rev.returncode:
      return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=5)
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return None


def device_slug(backend: str, device_kind: str) -> str:
  """Folder name for one kind of device: ``cpu``, ``gpu-nvidia-h100-80gb-hbm3``, ...

  Example:
    >>> device_slug("cpu", "cpu"), device_slug("gpu", "NVIDIA H100 80GB HBM3")
    ('cpu', 'gpu-nvidia-h100-80gb-hbm3')
  """
  if backend == "cpu":
    return "cpu"
  kind = "".join(c if c.isalnum() else "-" for c in device_kind.lower()).strip("-")
  while "--" in kind:
    kind = kind.replace("--", "-")
  return f"{backend}-{kind}"


def collect_environment(torch_module: Any = None) -> dict[str, Any]:
  """Versions, backend, device, CPU, XLA flags and thread settings of this process.

  Args:
    torch_module: the imported ``torch`` if the PyTorch peer is in use (its version and thread
      count are recorded); never imported here.

  Returns:
    A JSON-ready dict.
  """
  import jax

  devices = jax.devices()
  env = {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
      "git_commit": _git_commit(),
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "versions": {
          "jax": jax.__version__,
          "jaxlib": _version("jaxlib"),
          "flax": _version("flax"),
          "optax": _version("optax"),
          "numpy": _version("numpy"),
          "torch": getattr(torch_module, "__version__", None) if torch_module is not None else _version("torch"),
      },
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "cpu_model": cpu_model(),
      "cpu_count": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "thread_env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},
      "jax_config": {
          "jax_enable_x64": bool(jax.config.jax_enable_x64),
          "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
      },
      "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }
  try:  # which formulation jaxconv.ops.conv uses for each pass (set by conv_config / JAXCONV_CONV)
    from jaxconv.ops import conv_config

    with conv_config() as cfg:
      env["jaxconv_conv_config"] = dict(cfg)
  except ImportError:
    env["jaxconv_conv_config"] = None
  env["jaxconv_env"] = {k: v for k, v in os.environ.items() if k.startswith("JAXCONV")}
  if torch_module is not None:
    env["torch_threads"] = torch_module.get_num_threads()
  env["device_slug"] = device_slug(env["backend"], env["device_kind"])
  return env


def matmul_ceiling(
    dtype: str = "float32",
    *,
    size: Optional[int] = None,
    repeats: int = 5,
    warmup: int = 1,
    budget_s: Optional[float] = 3.0,
    seed: int = 0,
) -> dict[str, Any]:
  """The machine's ceiling: FLOP/s of one large square matmul ``[n, n] @ [n, n]`` in ``dtype``.

  ``2 n^3`` floating-point operations per product; FLOP/s from the median run (the best run is
  recorded too). ``size`` defaults to 2048 on CPU and 8192 on accelerators.

  Returns:
    ``{"dtype", "size", "flops", "flops_per_s", "best_flops_per_s", "timing"}``.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxconv.bench._harness import measure

  if size is None:
    size = 2048 if jax.default_backend() == "cpu" else 8192
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.standard_normal((size, size), dtype=np.float32), dtype=dtype)
  b = jnp.asarray(rng.standard_normal((size, size), dtype=np.float32), dtype=dtype)

  def prepare():
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    return lambda: compiled(a, b)

  timing, _ = measure(prepare=prepare, repeats=repeats, warmup=warmup, budget_s=budget_s)
  flops = 2.0 * size**3
  return {
      "dtype": dtype,
      "size": size,
      "flops": flops,
      "flops_per_s": flops / timing.median_s,
      "best_flops_per_s": flops / timing.min_s,
      "timing": timing.to_dict(),
  }
