"""Building, caching and loading the native kernels: one shared library per instruction set.

``conv.cc`` is compiled three times, once per *variant*:

=============  ===================================  ==========================================
variant        compiler flags                       runs on
=============  ===================================  ==========================================
``avx512``     ``-march=x86-64-v4`` (AVX-512 F/BW/  x86-64 CPUs with AVX-512 (Intel Xeon since
               CD/DQ/VL, intrinsics)                Skylake-SP, Ice Lake and later; AMD Zen 4+)
``avx2``       ``-march=x86-64-v3`` (AVX2 + FMA,    every x86-64 CPU since Haswell (2013) and
               intrinsics)                          AMD Zen 1
``portable``   ``-march=x86-64`` (SSE2 baseline,    any x86-64 CPU
               plain C++ the compiler vectorizes)
=============  ===================================  ==========================================

No variant is built with ``-march=native``: a library in the cache (or a Docker image, or a
cluster's shared environment) can be loaded on any CPU that has its instruction set, which is
checked against ``/proc/cpuinfo`` before loading (a forced variant that the CPU lacks is a
``ValueError``, never an illegal instruction). Each variant is its own shared object, so no
inline function compiled for one instruction set can be picked by the linker for another.

A variant is compiled on first use (with a one-line message on standard error) or ahead of time
by ``jaxconv native --build``, in ``$JAXCONV_NATIVE_CACHE`` (default
``~/.cache/jaxconv/native``) under a hash of the sources, the XLA FFI headers, the compiler and
its flags. A file lock per variant makes concurrent processes build each variant once (and
different variants at the same time); the library is written to a temporary file and renamed
into place, so a failed or killed build never leaves a half-written library; builds of the same
variant with another hash (older sources, another jaxlib) that have not been used for a day are
removed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional, Union

import jax
import jaxlib

_DIR = Path(__file__).parent
SOURCE = _DIR / "conv.cc"
# FFI handler symbols in each library -> the target name prefix (registered as f"{name}_{isa}").
TARGETS = {"jaxconv_conv_forward": "JaxconvConvForward", "jaxconv_conv_kernel_grad": "JaxconvConvKernelGrad",
           "jaxconv_conv_winograd": "JaxconvConvWinograd",
           "jaxconv_conv_kernel_grad_winograd": "JaxconvConvKernelGradWinograd",
           "jaxconv_depthwise_forward": "JaxconvDepthwiseForward",
           "jaxconv_depthwise_kernel_grad": "JaxconvDepthwiseKernelGrad",
           "jaxconv_narrow_forward": "JaxconvNarrowForward", "jaxconv_narrow_kernel_grad": "JaxconvNarrowKernelGrad"}

ISAS = ("avx512", "avx2", "portable")  # best first
_ISA_FLAGS = {
    "avx512": ("-march=x86-64-v4", "-DJAXCONV_ISA_AVX512"),
    "avx2": ("-march=x86-64-v3", "-DJAXCONV_ISA_AVX2"),
    "portable": ("-march=x86-64", "-DJAXCONV_ISA_PORTABLE"),
}
# The CPU flags (as /proc/cpuinfo names them) that each -march level may use.
_V3 = frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"})
_ISA_NEEDS = {
    "avx512": _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
    "avx2": _V3,
    "portable": frozenset(),
}
_COMMON_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fvisibility-inlines-hidden")
_STALE_AFTER_S = 24 * 3600
_FALSE = ("0", "false", "no", "off")


def cache_dir() -> Path:
  """Where built libraries are kept: ``$JAXCONV_NATIVE_CACHE``, else ``~/.cache/jaxconv/native``."""
  if os.environ.get("JAXCONV_NATIVE_CACHE"):
    return Path(os.environ["JAXCONV_NATIVE_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "jaxconv" / "native"


@functools.cache
def _cpuinfo() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return f.read().split("\n\n")[0]
  except OSError:
    return ""


def _is_x86_64() -> bool:
  return platform.machine().lower() in ("x86_64", "amd64")


def cpu_flags() -> frozenset[str]:
  """The instruction-set flags of the first CPU (Linux ``/proc/cpuinfo``); empty elsewhere."""
  line = next((l for l in _cpuinfo().splitlines() if l.startswith("flags")), "")
  return frozenset(line.partition(":")[2].split())


def cpu_isas() -> tuple[str, ...]:
  """The variants this CPU can run, best first (``()`` off x86-64 Linux)."""
  if not _is_x86_64() or not _cpuinfo():
    return ()
  flags = cpu_flags()
  return tuple(isa for isa in ISAS if _ISA_NEEDS[isa] <= flags)


def requested_isa() -> str:
  """``$JAXCONV_NATIVE_ISA`` (``auto`` when unset), checked."""
  value = os.environ.get("JAXCONV_NATIVE_ISA", "auto").strip().lower() or "auto"
  if value not in ("auto", *ISAS):
    raise ValueError(f"JAXCONV_NATIVE_ISA must be one of {('auto', *ISAS)}; got {value!r}.")
  return value


def resolve_isa(requested: str, source: str = "JAXCONV_NATIVE_ISA") -> Optional[str]:
  """The variant to run for ``requested`` (``"auto"`` or a variant name) on this CPU.

  ``"auto"`` is the best variant the CPU runs, or ``None`` when it runs none (not x86-64).

  Raises:
    ValueError: for an unknown name, or a variant whose instructions this CPU lacks (naming
      ``source``, the variable or argument that asked for it, and the CPU's variants).
  """
  if requested not in ("auto", *ISAS):
    raise ValueError(f"{source} must be one of {('auto', *ISAS)}; got {requested!r}.")
  have = cpu_isas()
  if requested == "auto":
    return have[0] if have else None
  if requested not in have:
    missing = sorted(_ISA_NEEDS[requested] - cpu_flags()) if _is_x86_64() else ["an x86-64 CPU"]
    raise ValueError(f"{source}={requested!r}: this CPU ({platform.machine()}) cannot run the {requested} "
                     f"kernels (it lacks {', '.join(missing)}); it runs: {', '.join(have) or 'none'}.")
  return requested


def compiler() -> Optional[str]:
  """The C++ compiler to build with: ``$CXX``, else ``c++``, ``g++`` or ``clang++`` on the PATH."""
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def ffi_include_dir() -> Optional[Path]:
  """jaxlib's XLA FFI headers, or ``None`` when this jaxlib does not ship them."""
  try:
    include = Path(jax.ffi.include_dir())
  except Exception:  # noqa: BLE001 - any failure means: no headers
    return None
  return include if (include / "xla" / "ffi" / "api" / "ffi.h").is_file() else None


def _flags(isa: str) -> tuple[str, ...]:
  return (*_COMMON_FLAGS, *_ISA_FLAGS[isa])


def library_path(isa: str, cxx: str, include: Path) -> Path:
  """The cached library's path for ``isa``: a hash of everything that goes into it."""
  h = hashlib.sha256()
  for src in sorted(_DIR.glob("*.cc")) + sorted(_DIR.glob("*.h")):
    h.update(src.name.encode() + b"\0" + src.read_bytes())
  for header in ("ffi.h", "c_api.h", "api.h"):
    path = include / "xla" / "ffi" / "api" / header
    if path.exists():
      h.update(path.read_bytes())
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
  h.update("\0".join((cxx, version, jaxlib.__version__, *_flags(isa))).encode())
  return cache_dir() / f"libjaxconv_native-{isa}-{h.hexdigest()[:16]}.so"


class BuildError(RuntimeError):
  """The native kernels could not be built; the message is one line."""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
  """An exclusive lock between processes (``flock``), held for the ``with`` block."""
  with open(path, "a+b") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _one_line(stderr: str) -> str:
  """The compiler's first error line (or its last line), for a one-line message."""
  lines = [l.strip() for l in stderr.splitlines() if l.strip()]
  err = next((l for l in lines if "error" in l.lower()), lines[-1] if lines else "no output")
  return err[:300]


def _remove_stale(isa: str, keep: Path) -> None:
  now = time.time()
  for old in keep.parent.glob(f"libjaxconv_native-{isa}-*.so"):
    try:
      if old != keep and now - old.stat().st_mtime > _STALE_AFTER_S:
        old.unlink()
    except OSError:
      pass  # another process removed it, or the folder is shared read-only


def build(isa: str, *, quiet: bool = False) -> Path:
  """Builds (or finds in the cache) the library of one variant and returns its path.

  Raises:
    BuildError: no compiler, no FFI headers, an unwritable cache folder, or a compiler error
      (its first error line).
  """
  if isa not in ISAS:
    raise ValueError(f"isa must be one of {ISAS}; got {isa!r}.")
  cxx = compiler()
  if cxx is None:
    raise BuildError("no C++ compiler found ($CXX, c++, g++ or clang++)")
  include = ffi_include_dir()
  if include is None:
    raise BuildError(f"jaxlib {jaxlib.__version__} ships no XLA FFI headers (jax.ffi.include_dir())")
  out = library_path(isa, cxx, include)
  if out.exists():
    with contextlib.suppress(OSError):
      os.utime(out)  # marks it in use for the stale-build cleanup
    return out
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".build-{isa}.lock"  # one per variant: different variants build at once
    with _file_lock(lock):
      if out.exists():  # another process built it while we waited
        return out
      if not quiet:
        print(f"jaxconv: compiling the native convolution kernels ({isa}) once for this environment, "
              f"about 20 s; cached in {out.parent} (jaxconv native --build builds ahead of time)",
              file=sys.stderr, flush=True)
      fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=out.parent)
      os.close(fd)
      try:
        cmd = [cxx, *_flags(isa), "-I", str(include), str(SOURCE), "-o", tmp, "-lpthread"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
          raise BuildError(f"{Path(cxx).name} failed on {SOURCE.name} ({isa}): {_one_line(res.stderr)}")
        os.replace(tmp, out)
      finally:
        if os.path.exists(tmp):
          os.unlink(tmp)
  except PermissionError as e:
    raise BuildError(f"the cache folder {out.parent} is not writable ({e.strerror}); "
                     f"set JAXCONV_NATIVE_CACHE to a writable folder") from None
  except OSError as e:
    if isinstance(e, BuildError):
      raise
    raise BuildError(f"cannot write to the cache folder {out.parent}: {e}") from None
  _remove_stale(isa, out)
  return out


# --------------------------------------------------------------------------------------------
# Loading: one library per variant per process, its handlers registered as XLA FFI targets.


@dataclasses.dataclass(frozen=True)
class Loaded:
  isa: str
  path: str
  lib: ctypes.CDLL


_LOCK = threading.Lock()
_LOADED: dict[str, Loaded] = {}
_FAILED: dict[str, str] = {}


def build_many(isas: Sequence[str]) -> dict[str, Union[Path, BuildError]]:
  """Builds several variants at once (one compiler process each, as many at a time as there are
  CPUs) and returns each one's library path, or the :class:`BuildError` that stopped it."""

  def one(isa: str) -> Union[Path, BuildError]:
    try:
      return build(isa, quiet=True)
    except BuildError as e:
      return e

  with concurrent.futures.ThreadPoolExecutor(max(1, min(len(isas), os.cpu_count() or 1))) as pool:
    return dict(zip(isas, pool.map(one, isas)))


def target(name: str, isa: str) -> str:
  """The FFI target name of handler ``name`` in variant ``isa``."""
  return f"{name}_{isa}"


def load(isa: str) -> Loaded:
  """Builds (if needed), loads and registers variant ``isa`` once per process.

  Raises:
    BuildError: as :func:`build`, or when the library does not load; the failure is remembered.
  """
  with _LOCK:
    if isa in _LOADED:
      return _LOADED[isa]
    if isa in _FAILED:
      raise BuildError(_FAILED[isa])
    try:
      path = build(isa)
      lib = ctypes.CDLL(str(path))
      for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target(name, isa), jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (BuildError, OSError, AttributeError, subprocess.SubprocessError) as e:
      _FAILED[isa] = str(e) if isinstance(e, BuildError) else f"loading the {isa} kernels failed: {e}"
      raise BuildError(_FAILED[isa]) from None
    _LOADED[isa] = Loaded(isa, str(path), lib)
    apply_limits(_LOADED[isa])
    return _LOADED[isa]


# --------------------------------------------------------------------------------------------
# Resource limits: worker threads and scratch memory, read by every loaded library.

_DEFAULT_SCRATCH_MB = 256


def _env_int(name: str, default: int, minimum: int) -> int:
  text = os.environ.get(name, "").strip()
  if not text:
    return default
  try:
    value = int(text)
  except ValueError:
    raise ValueError(f"{name} must be an integer; got {text!r}.") from None
  if value < minimum:
    raise ValueError(f"{name} must be at least {minimum}; got {value}.")
  return value


_LIMITS = {"threads": None, "scratch_mb": None}


def limits() -> dict:
  """``{"threads": n, "scratch_mb": m}`` in force: 0 threads means XLA's intra-op pool size."""
  threads = _LIMITS["threads"]
  scratch = _LIMITS["scratch_mb"]
  return {"threads": _env_int("JAXCONV_NATIVE_THREADS", 0, 0) if threads is None else threads,
          "scratch_mb": _env_int("JAXCONV_NATIVE_SCRATCH_MB", _DEFAULT_SCRATCH_MB, 1) if scratch is None else scratch}


def set_limits(threads: Optional[int] = None, scratch_mb: Optional[int] = None) -> dict:
  """Sets the worker-thread cap and the scratch-memory cap of every loaded variant."""
  if threads is not None:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
      raise ValueError(f"threads must be an int >= 0 (0: XLA's intra-op pool); got {threads!r}.")
    _LIMITS["threads"] = threads
  if scratch_mb is not None:
    if not isinstance(scratch_mb, int) or isinstance(scratch_mb, bool) or scratch_mb < 1:
      raise ValueError(f"scratch_mb must be an int >= 1; got {scratch_mb!r}.")
    _LIMITS["scratch_mb"] = scratch_mb
  for loaded in list(_LOADED.values()):
    apply_limits(loaded)
  return limits()


def apply_limits(loaded: Loaded) -> None:
  fn = getattr(loaded.lib, "jaxconv_set_limits", None)
  if fn is None:
    return
  lim = limits()
  fn.argtypes = (ctypes.c_int64, ctypes.c_int64)
  fn.restype = None
  fn(lim["threads"], lim["scratch_mb"] << 20)


def scratch_kept_bytes(isa: str) -> int:
  """Bytes of scratch memory that variant ``isa`` keeps between calls now, over all threads."""
  fn = _LOADED[isa].lib.jaxconv_scratch_kept
  fn.argtypes, fn.restype = (), ctypes.c_int64
  return int(fn())


def enabled_by_env() -> bool:
  return os.environ.get("JAXCONV_NATIVE", "1").strip().lower() not in _FALSE
