"""Building, choosing and loading the native kernels: variants, fallbacks, cache, locks, CLI.

These tests replace the compiler with small scripts where they check the build's bookkeeping
(a lock, stale files, failures), so they run in a second; the real build is exercised by
tests/test_native.py.
"""

import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import pytest

from jaxconv.native_cli import main as native_main
from jaxconv.ops import _conv_grad, conv_config, native_status
from jaxconv.ops._native import _build

_V3 = sorted(_build._ISA_NEEDS["avx2"])


@pytest.fixture
def fresh(monkeypatch, tmp_path):
  """A process state in which no variant has been loaded or has failed, a private cache folder,
  and the real compiler."""
  monkeypatch.setattr(_build, "_LOADED", {})
  monkeypatch.setattr(_build, "_FAILED", {})
  monkeypatch.setenv("JAXCONV_NATIVE_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("JAXCONV_NATIVE_ISA", raising=False)
  monkeypatch.delenv("JAXCONV_NATIVE", raising=False)
  return tmp_path / "cache"


def fake_compiler(tmp_path, body: str) -> str:
  """A stand-in for c++: answers --version, else runs ``body`` (bash; $OUT is the -o path)."""
  path = tmp_path / "fake-c++"
  path.write_text(textwrap.dedent("""\
      #!/usr/bin/env bash
      if [ "$1" = "--version" ]; then echo "fake c++ 1.0"; exit 0; fi
      OUT=""; prev=""
      for a in "$@"; do [ "$prev" = "-o" ] && OUT="$a"; prev="$a"; done
      """) + textwrap.dedent(body))
  path.chmod(0o755)
  return str(path)


def _cpu(monkeypatch, flags, machine="x86_64"):
  monkeypatch.setattr(_build, "cpu_flags", lambda: frozenset(flags))
  monkeypatch.setattr(_build, "_cpuinfo", lambda: "flags : " + " ".join(flags))
  monkeypatch.setattr(_build.platform, "machine", lambda: machine)


def test_variants_follow_the_cpu_flags(monkeypatch):
  _cpu(monkeypatch, _V3 + ["sse2"])
  assert _build.cpu_isas() == ("avx2", "portable")
  assert _build.resolve_isa("auto") == "avx2"
  _cpu(monkeypatch, ["sse2"])
  assert _build.cpu_isas() == ("portable",)
  _cpu(monkeypatch, sorted(_build._ISA_NEEDS["avx512"]))
  assert _build.cpu_isas() == ("avx512", "avx2", "portable")


def test_a_forced_variant_the_cpu_lacks_is_a_clear_error(monkeypatch, fresh):
  _cpu(monkeypatch, _V3)
  with pytest.raises(ValueError, match=r"JAXCONV_NATIVE_ISA='avx512'.*lacks avx512bw.*it runs: avx2, portable"):
    monkeypatch.setenv("JAXCONV_NATIVE_ISA", "avx512")
    native_status()
  with pytest.raises(ValueError, match=r"conv_config\(native_isa\)='avx512'.*it runs: avx2, portable"):
    with conv_config(native_isa="avx512"):
      pass
  monkeypatch.setenv("JAXCONV_NATIVE_ISA", "sse4")
  with pytest.raises(ValueError, match=r"JAXCONV_NATIVE_ISA must be one of \('auto', 'avx512', 'avx2', "
                                       r"'portable'\); got 'sse4'"):
    native_status()
  with pytest.raises(ValueError, match="native_isa must be one of"):
    with conv_config(native_isa="neon"):
      pass


def test_not_x86_falls_back_with_a_reason(monkeypatch, fresh):
  _cpu(monkeypatch, ["fp", "asimd"], machine="aarch64")
  s = native_status()
  assert not s.available and s.isa is None and "x86-64" in s.reason and "aarch64" in s.reason
  assert _conv_grad.native_isa() is None
  spec = _conv_grad.make_spec((8, 8, 8, 16), (3, 3, 16, 16), (1, 1), ((1, 1),) * 2, (1, 1), 1, None, None)
  assert "native" not in (spec.forward, spec.input_grad, spec.kernel_grad) and spec.isa is None
  with pytest.raises(ValueError, match=r"cannot run the portable kernels.*an x86-64 CPU"):
    _build.resolve_isa("portable")


@pytest.mark.parametrize("cause", ["no compiler", "no headers", "unwritable cache", "compiler error"])
def test_build_failures_fall_back_with_one_line(cause, monkeypatch, fresh, tmp_path):
  if cause == "no compiler":
    monkeypatch.setattr(_build, "compiler", lambda: None)
    want = "no C++ compiler found"
  elif cause == "no headers":
    monkeypatch.setattr(jax.ffi, "include_dir", lambda: str(tmp_path / "nowhere"))
    want = "ships no XLA FFI headers"
  elif cause == "unwritable cache":
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("JAXCONV_NATIVE_CACHE", str(tmp_path / "file" / "cache"))
    want = "cannot write to the cache folder"
  else:
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, """\
        echo "partial" > "$OUT"
        echo "conv.cc: In function 'f':" >&2
        echo "conv.cc:12:3: error: 'boom' was not declared in this scope" >&2
        exit 1
        """))
    want = "error: 'boom' was not declared"
  s = native_status()
  assert not s.available and want in s.reason and "\n" not in s.reason, s.reason
  # Every variant was tried (auto falls back), and the plan does not pick the kernels.
  assert all(isa in s.reason for isa in _build.cpu_isas())
  assert _conv_grad.native_isa() is None
  with pytest.raises(RuntimeError, match="not available: building failed"):
    from jaxconv.ops import _native
    _native.conv(jnp.ones((1, 3, 3, 1)), jnp.ones((1, 1, 1, 1)), (1, 1), ((0, 0), (0, 0)), (1, 1))
  # Nothing half-written is left in the cache.
  if fresh.is_dir():
    assert not [p for p in fresh.iterdir() if not p.name.startswith(".build-")], list(fresh.iterdir())


def test_read_only_cache_is_named(monkeypatch, fresh):
  def deny(*a, **k):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(_build.tempfile, "mkstemp", deny)
  with pytest.raises(_build.BuildError, match=r"cache folder .* is not writable.*set JAXCONV_NATIVE_CACHE"):
    _build.build("portable", quiet=True)


def test_concurrent_processes_build_once_and_stale_builds_go(fresh, tmp_path):
  log = tmp_path / "calls.log"
  cxx = fake_compiler(tmp_path, f"""\
      echo call >> "{log}"
      sleep 1
      echo lib > "$OUT"
      """)
  fresh.mkdir(parents=True)
  stale = fresh / "libjaxconv_native-portable-00000000deadbeef.so"
  recent = fresh / "libjaxconv_native-portable-00000000cafecafe.so"
  other = fresh / "libjaxconv_native-avx2-00000000deadbeef.so"
  for p in (stale, recent, other):
    p.write_text("old")
  two_days_ago = time.time() - 2 * 24 * 3600
  os.utime(stale, (two_days_ago, two_days_ago))
  os.utime(other, (two_days_ago, two_days_ago))
  env = {**os.environ, "CXX": cxx, "JAXCONV_NATIVE_CACHE": str(fresh)}
  code = "from jaxconv.ops._native import _build; print(_build.build('portable'))"
  procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs
  assert log.read_text().count("call") == 1  # one build; the other process waited and reused it
  paths = {o.strip() for o, _ in outs}
  assert len(paths) == 1 and os.path.exists(paths.pop())
  # The process that built it said so, in one line on standard error.
  messages = [e for _, e in outs if "compiling the native convolution kernels (portable)" in e]
  assert len(messages) == 1 and messages[0].count("\n") == 1
  # Same variant, another hash, unused for two days: removed. Recent ones and other variants stay.
  assert not stale.exists() and recent.exists() and other.exists()


def test_cli_builds_and_reports(monkeypatch, fresh, tmp_path, capsys):
  # Each compiler process waits (up to 60 s) until both have started: the two variants build at
  # the same time, or the build fails.
  monkeypatch.setenv("CXX", fake_compiler(tmp_path, f"""\
      touch "{tmp_path}/started.$$"
      for i in $(seq 600); do [ "$(ls {tmp_path} | grep -c started)" -ge 2 ] && break; sleep 0.1; done
      [ "$(ls {tmp_path} | grep -c started)" -ge 2 ] || exit 1
      echo lib > "$OUT"
      """))
  monkeypatch.setattr(_build.os, "cpu_count", lambda: 2)
  assert native_main(["--build", "--isa", "portable", "--isa", "avx2"]) == 0
  out = capsys.readouterr().out
  assert out.count(str(fresh)) == 2 and out.startswith("portable: ") and "2 variant(s) in " in out
  monkeypatch.setenv("CXX", fake_compiler(tmp_path, 'echo "x.cc:1:1: error: nope" >&2; exit 1\n'))
  monkeypatch.setattr(_build, "_FAILED", {})
  monkeypatch.setenv("JAXCONV_NATIVE_CACHE", str(tmp_path / "other"))
  assert native_main(["--build", "--isa", "portable"]) == 1
  assert "portable: FAILED: " in capsys.readouterr().err
  monkeypatch.setenv("JAXCONV_NATIVE", "0")
  assert native_main(["--status"]) == 1
  assert "disabled by JAXCONV_NATIVE=0" in capsys.readouterr().out
  monkeypatch.setenv("JAXCONV_NATIVE_ISA", "mmx")
  monkeypatch.delenv("JAXCONV_NATIVE")
  assert native_main([]) == 2
  assert "JAXCONV_NATIVE_ISA must be one of" in capsys.readouterr().err


def test_limits_are_checked_and_reported(monkeypatch):
  monkeypatch.setattr(_build, "_LIMITS", {"threads": None, "scratch_mb": None})
  monkeypatch.setenv("JAXCONV_NATIVE_SCRATCH_MB", "64")
  monkeypatch.setenv("JAXCONV_NATIVE_THREADS", "1")
  assert _build.limits() == {"threads": 1, "scratch_mb": 64}
  assert native_status().scratch_mb == 64
  assert _build.set_limits(threads=0, scratch_mb=128) == {"threads": 0, "scratch_mb": 128}
  monkeypatch.setenv("JAXCONV_NATIVE_SCRATCH_MB", "lots")
  monkeypatch.setattr(_build, "_LIMITS", {"threads": None, "scratch_mb": None})
  with pytest.raises(ValueError, match="JAXCONV_NATIVE_SCRATCH_MB must be an integer; got 'lots'"):
    _build.limits()
  with pytest.raises(ValueError, match="scratch_mb must be an int >= 1; got 0"):
    _build.set_limits(scratch_mb=0)
  with pytest.raises(ValueError, match="threads must be an int >= 0"):
    _build.set_limits(threads=-1)
  monkeypatch.undo()  # the defaults again, in the loaded libraries too
  _build.set_limits()
