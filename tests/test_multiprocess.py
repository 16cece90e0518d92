"""Training as several cooperating processes (jax.distributed, gloo on CPU), on this machine.

Each run here is ``jaxconv launch -n 2 -- train ...``: two processes with one CPU device each,
talking over 127.0.0.1. The reference is one process on two local devices with the same global
batch and seed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxconv.ops import native_status
from jaxconv.train import distributed
from jaxconv.train.checkpoint import Checkpointer
from jaxconv.train.finetune import load_variables

# A small CNN on the bundled digits: 2 epochs of 11 steps, a checkpoint every 4 steps.
_ARGS = ["train", "--model", "small_cnn", "--model-kwargs", '{"widths": [8, 16], "hidden": 32}', "--epochs", "2",
         "--batch-size", "128", "--checkpoint-every", "4", "--no-plots", "--no-progress", "--seed", "3"]


def _env(**extra):
  # One native-kernel thread per device in every layout: the same static split of the work, so
  # the layouts differ only in where the all-reduces sum. The suite's XLA pipeline (see
  # tests/conftest.py), without its 8 devices.
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAXCONV_NATIVE_THREADS="1", **extra)
  flags = " ".join([os.environ.get("JAXCONV_TEST_XLA_FLAGS", ""), extra.get("XLA_FLAGS", "")]).strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:  # XLA reads a value that does not start with "--" as a file name
    env.pop("XLA_FLAGS", None)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _launch(workdir, *extra, start_new_session=False, cpu_devices=1):
  return subprocess.Popen([sys.executable, "-m", "jaxconv.cli", "launch", "-n", "2", "--grace", "20",
                           "--cpu-devices", str(cpu_devices), "--",
                           *_ARGS, "--workdir", str(workdir), *extra], env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=start_new_session)


def _finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def _leaves(workdir):
  return [np.asarray(a) for a in jax.tree.leaves(load_variables(workdir))]


@pytest.mark.skipif(not native_status().available, reason="the native kernels do not build here")
def test_the_model_here_runs_native_kernels():
  """The runs below exercise the native kernels under a mesh that spans processes."""
  import re

  import jax.numpy as jnp

  from jaxconv.models import create_model

  model = create_model("small_cnn", num_classes=10, widths=[8, 16], hidden=32)
  x = jnp.zeros((8, 28, 28, 1))
  v = jax.jit(model.init)(jax.random.key(0), x)
  grad = jax.jit(jax.grad(lambda p: model.apply({**v, "params": p}, x).sum()))
  targets = set(re.findall(r"jaxconv_\w+", grad.lower(v["params"]).as_text()))
  assert {"jaxconv_narrow_forward", "jaxconv_conv_forward"} <= {t.rsplit("_", 1)[0] for t in targets}, targets


def test_two_processes_equal_one_process_on_two_devices_and_resume_after_a_kill(tmp_path):
  """Two processes of one device against one process of two (same global batch and seed); then
  the same two-process run killed mid-run (every process) and resumed ends on the same bits as
  the uninterrupted one. One test, so that the uninterrupted run is made once."""
  workdir = tmp_path / "two"
  out = _finish(_launch(workdir))
  one = subprocess.run([sys.executable, "-m", "jaxconv.cli", *_ARGS, "--workdir", str(tmp_path / "one")],
                       env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), capture_output=True,
                       text=True, timeout=300)
  assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
  for a, b in zip(_leaves(workdir), _leaves(tmp_path / "one"), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # summation order aside
  summary, single = (json.loads((w / "summary.json").read_text()) for w in (workdir, tmp_path / "one"))
  # Evaluation covers every test example once across the processes (the last batch padded).
  assert summary["test_top1"] == pytest.approx(single["test_top1"], abs=1e-6)
  # Process 0 alone speaks and writes: one "training" line, one record per step logged.
  lines = out.splitlines()
  assert sum(l.startswith("[0] training ") for l in lines) == 1
  assert not [l for l in lines if l.startswith("[1] ") and ("epoch" in l or "training" in l)]
  assert "on 2 device(s) (mesh)" in out
  assert summary["processes"] == 2 and summary["devices"] == 2 and summary["steps"] == 22
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
           if json.loads(l)["split"] == "train"]
  assert steps == sorted(set(steps))  # written once, not once per process
  ck = Checkpointer(workdir / "checkpoints", read_only=True)
  assert ck.latest_step() == 22  # one checkpoint per step for the whole job
  ck.close()
  _kill_and_resume(workdir, tmp_path)


def test_two_devices_per_process(tmp_path):
  """Two processes of two CPU devices each (a layout whose back-to-back steps once deadlocked
  with gloo) finish, and equal one process on four devices."""
  # 4 steps, 3 of them back to back. Over more steps Adam magnifies the layouts' different
  # summation orders past the tolerance (its update divides by the root of tiny second moments):
  # |a - b| - 1e-5 |b| measured at most 1e-7 after 4 steps and 1.4e-5 after 10 (atol is 1e-6).
  steps = ["--max-steps", "4", "--checkpoint-every", "0"]
  _finish(_launch(tmp_path / "two", *steps, cpu_devices=2), timeout=240)
  one = subprocess.run([sys.executable, "-m", "jaxconv.cli", *_ARGS, *steps, "--workdir", str(tmp_path / "one")],
                       env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"), capture_output=True,
                       text=True, timeout=300)
  assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
  for a, b in zip(_leaves(tmp_path / "two"), _leaves(tmp_path / "one"), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _kill_and_resume(workdir, tmp_path):
  """Kills every process of a run like ``workdir``'s mid-run, resumes it, compares the bits."""
  proc = _launch(tmp_path / "run", start_new_session=True)
  for line in proc.stdout:  # the end of epoch 1 of 2: checkpoints exist, the run is not over
    if line.startswith("[0] epoch 1/2"):
      break
  os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both processes
  proc.wait(timeout=60)
  ck = Checkpointer(tmp_path / "run" / "checkpoints", read_only=True)
  killed_at = ck.latest_step()
  ck.close()
  assert killed_at is not None and killed_at < 22, killed_at
  out = _finish(_launch(tmp_path / "run", "--resume"))
  assert "resumed from step" in out
  for a, b in zip(_leaves(workdir), _leaves(tmp_path / "run"), strict=True):
    np.testing.assert_array_equal(a, b)


def _wait_for_training(proc):
  for line in proc.stdout:
    if "training " in line:
      return
  raise AssertionError("the run ended before training started")


def test_a_killed_process_makes_the_other_stop_with_an_error(tmp_path):
  """Process 1 is killed mid-run: process 0 reports it in one line and exits by itself, well
  within the launcher's grace period; the launcher exits with the first failure's status."""
  proc = _launch(tmp_path / "run", "--epochs", "50")
  _wait_for_training(proc)
  children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
  assert len(children) == 2
  os.kill(children[1], signal.SIGKILL)
  t = time.monotonic()
  out = proc.stdout.read()
  proc.wait(timeout=120)
  assert time.monotonic() - t < 60, "the surviving process did not stop in time"
  assert proc.returncode == 128 + signal.SIGKILL
  assert "process 1 exited with status -9; stopping the other 1" in out
  errors = [l for l in out.splitlines() if l.startswith("[0] jaxconv train: error in process 0 of 2: ")]
  assert len(errors) == 1, out[-2000:]  # its own error, not the launcher's signal
  for pid in children:  # none is left running
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()


@pytest.mark.parametrize("args, env, match", [
    (("h:1", 2, None), {}, "missing process_id"),
    (("h:1", 2, 2), {}, "0 <= process_id < num_processes"),
    (("localhost", 2, 0), {}, "HOST:PORT"),
    (("auto", 2, None), {}, "leave num_processes and process_id unset"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES must be an integer"),
])
def test_bad_process_settings_are_named(args, env, match):
  with pytest.raises(ValueError, match=match):
    distributed.settings_from(*args, environ=env)


def test_settings_from_the_environment_and_auto():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:5000", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.settings_from(None, None, None, environ=env) == ("10.0.0.1:5000", 4, 3)
  assert distributed.settings_from("h:1", 2, 0, environ=env) == ("h:1", 2, 0)  # arguments first
  assert distributed.settings_from("auto", None, None, environ={}) == ("auto", None, None)


def test_launch_output_whose_reader_has_gone():
  """``jaxconv launch ... | head``: once the pipe's reader has gone, the launcher drops the rest
  of the output quietly, and the processes (whose own pipes it keeps draining) finish."""
  import threading

  from jaxconv.train.launch import _forward

  class Closed:
    writes = 0

    def write(self, text):
      self.writes += 1
      if self.writes > 3:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
      pass

  # 400 KiB of output, more than a pipe holds: a reader that stopped would block the writer.
  proc = subprocess.Popen([sys.executable, "-c", "for i in range(100_000): print(i)"], stdout=subprocess.PIPE,
                          text=True)
  out = Closed()
  _forward(proc, "[0] ", out, threading.Lock())
  assert proc.wait(timeout=60) == 0 and out.writes == 4


def test_launch_rejects_bad_input(capsys):
  from jaxconv.train.launch import main

  assert main(["-n", "0", "--", "train"]) == 2
  assert "num_processes must be >= 1" in capsys.readouterr().err
  assert main(["-n", "2"]) == 2
  assert "no command to launch" in capsys.readouterr().err
