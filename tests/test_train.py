"""Training: loss goes down, parallel paths agree, exact resume, kill-mid-save, NaN stop,
fine-tuning, optimizers and schedules against closed forms, masked evaluation, bad input."""

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxconv.data import Dataset
from jaxconv.train import (Checkpointer, NonFiniteLossError, Placement, TrainConfig, TrainState,
                           derive, evaluate, make_eval_step, make_optimizer, make_schedule,
                           make_train_step, train)
from jaxconv.train.config import resume_mismatches

from helpers import OPTIMIZED


class TinyCNN(nn.Module):
  """Conv + BatchNorm + Dense head: small enough to compile in a second, big enough to learn."""
  num_classes: int = 10
  dtype: object = jnp.float32
  param_dtype: object = jnp.float32
  axis_name: object = None

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="bn")(x)
    x = nn.avg_pool(nn.relu(x), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)


@pytest.fixture(scope="module")
def digits8():
  """Real 8x8 digits (scikit-learn), 256 train / 100 test, uint8."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = np.round(d.images / 16 * 255).astype(np.uint8)[..., None]
  y = d.target
  return Dataset.from_arrays(x[:256], y[:256], x[256:356], y[256:356], num_classes=10, name="digits8")


def cfg(tmp_path, name="run", **kw):
  base = dict(epochs=2, batch_size=32, lr=0.01, optimizer="adam", schedule="constant",
              warmup_epochs=0, weight_decay=0.0, log_every=1, progress=False, plots=False,
              parallel="none", workdir=str(tmp_path / name), crop_padding=0, flip=False)
  base.update(kw)
  return TrainConfig(**base)


def records(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_progress_bar_only_on_a_terminal(tmp_path, digits8, capsys):
  """stderr captured (not a terminal, as in a file or CI log): no carriage-return frames, just
  the line per epoch; progress=True asks for the bar only where one can be drawn."""
  c = cfg(tmp_path, epochs=2, progress=True, log_every=100)
  train(c, dataset=digits8, model=TinyCNN, verbose=True)
  out, err = capsys.readouterr()
  assert "\r" not in err and "\r" not in out, err
  assert out.count("epoch 1/2 step") == 1 and out.count("epoch 2/2 step") == 1, out
  from jaxconv.train import loop

  class Tty:
    def isatty(self):
      return True

  assert loop._show_progress(c) is False  # pytest's capture is not a terminal
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sys, "stderr", Tty())
    assert loop._show_progress(c) is True
    assert loop._show_progress(cfg(tmp_path, progress=False)) is False


def test_training_reduces_loss_and_writes_run_dir(tmp_path, digits8):
  c = cfg(tmp_path, epochs=3, lr=0.03, plots=True, crop_padding=1)
  summary = train(c, dataset=digits8, model=TinyCNN, verbose=False)
  losses = [r["loss"] for r in records(c.workdir)]
  assert len(losses) == 3 * (256 // 32)
  assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
  assert summary["steps"] == 24 and summary["test_top1"] > 0.3  # chance is 0.1
  for f in ("summary.json", "config.json", "loss.png", "accuracy.png", "lr.png"):
    assert (tmp_path / "run" / f).is_file(), f
  rec = records(c.workdir)[-1]
  assert set(rec) >= {"loss", "top1", "top5", "lr", "grad_norm", "examples_per_sec"}
  assert rec["top5"] >= rec["top1"]


@pytest.mark.parametrize("model", ["TinyCNN", "NativeCNN"])
def test_parallel_paths_match_single_device(tmp_path, digits8, model):
  """Sharded jit over a mesh and pmap (8 fake devices) follow the one-device loss trajectory;
  with jaxconv's convolutions (NativeCNN) the native kernels run per shard."""
  assert jax.local_device_count() == 8
  model = {"TinyCNN": TinyCNN, "NativeCNN": NativeCNN}[model]
  runs = {}
  for mode in ("none", "mesh", "pmap"):
    c = cfg(tmp_path, mode, parallel=mode, epochs=1, batch_size=64, lr=0.1, optimizer="momentum")
    s = train(c, dataset=digits8, model=model, verbose=False)
    assert s["parallel"] == {"none": "single"}.get(mode, mode)
    runs[mode] = ([r["loss"] for r in records(c.workdir)], s["test_top1"], s["test_loss"])
  for mode in ("mesh", "pmap"):
    np.testing.assert_allclose(runs[mode][0], runs["none"][0], rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(runs[mode][2], runs["none"][2], rtol=2e-4)
    assert runs[mode][1] == pytest.approx(runs["none"][1], abs=1 / 100)


def test_batch_not_divisible_by_devices(tmp_path, digits8):
  with pytest.raises(ValueError, match=r"batch_size=36 is not divisible by the number of devices \(8\)"):
    train(cfg(tmp_path, parallel="mesh", batch_size=36), dataset=digits8, model=TinyCNN, verbose=False)


def test_resume_reproduces_uninterrupted_run(tmp_path, digits8):
  """Interrupted mid-epoch 1 (max_steps=11, checkpoint every 3 steps), then resumed."""
  kw = dict(epochs=2, checkpoint_every=3, crop_padding=1, flip=True, rotate=8.0, scale=0.1,
            schedule="warmup_cosine", warmup_epochs=0.5)
  full = train(cfg(tmp_path, "full", **kw), dataset=digits8, model=TinyCNN, verbose=False)
  part = cfg(tmp_path, "part", max_steps=11, **kw)
  train(part, dataset=digits8, model=TinyCNN, verbose=False)
  assert Checkpointer(tmp_path / "part" / "checkpoints").latest_step() == 11
  resumed = train(cfg(tmp_path, "part", resume=True, **kw), dataset=digits8, model=TinyCNN,
                  verbose=False)
  a, b = records(tmp_path / "full"), records(tmp_path / "part")
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b):
    for k in ("loss", "top1", "lr", "grad_norm"):
      assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-7), (ra["step"], k)
  assert resumed["test_top1"] == full["test_top1"]
  assert resumed["test_loss"] == pytest.approx(full["test_loss"], rel=1e-6)


class NativeCNN(TinyCNN):
  """jaxconv convolutions wide enough for the native kernels (Winograd, direct strided)."""

  @nn.compact
  def __call__(self, x, train=False):
    from jaxconv import nn as jnn

    x = nn.relu(jnn.Conv(16, 3, padding=1, name="conv1")(x))
    x = nn.relu(jnn.Conv(32, 3, padding=1, name="conv2")(x))
    x = nn.relu(jnn.Conv(32, 3, stride=2, padding=1, name="conv3")(x))
    return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


def test_two_runs_with_the_same_seed_write_the_same_checkpoint(tmp_path, digits8):
  """Training is reproducible with the native kernels (whose gradients reduce over threads)."""
  from jaxconv.ops import conv_config, native_status
  from jaxconv.train.finetune import load_variables

  if not native_status().available:
    pytest.skip(f"no native kernels here: {native_status().reason}")
  x = jnp.ones((32, 8, 8, 1))
  v = NativeCNN().init(jax.random.key(0), x)
  with conv_config():  # the runs' plan: native kernel gradients (direct and Winograd)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: NativeCNN().apply({"params": p}, x).sum()))(v["params"]))
  assert "algorithm=winograd" in jaxpr and "algorithm=direct" in jaxpr
  runs = []
  for name in ("a", "b"):
    train(cfg(tmp_path, name, epochs=2), dataset=digits8, model=NativeCNN, verbose=False)
    runs.append(load_variables(tmp_path / name)["params"])
  leaves = [jax.tree.leaves(r) for r in runs]
  assert len(leaves[0]) == 8
  for a, b in zip(*leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_with_incompatible_config_and_existing_workdir(tmp_path, digits8):
  train(cfg(tmp_path, max_steps=2), dataset=digits8, model=TinyCNN, verbose=False)
  with pytest.raises(ValueError, match=r"cannot resume.*batch_size: checkpoint 32 vs now 64"):
    train(cfg(tmp_path, resume=True, batch_size=64), dataset=digits8, model=TinyCNN, verbose=False)
  with pytest.raises(ValueError, match=r"already holds checkpoints \(latest step 2\); pass resume"):
    train(cfg(tmp_path), dataset=digits8, model=TinyCNN, verbose=False)
  # nothing lost: the checkpoint is still there and resumable
  assert Checkpointer(tmp_path / "run" / "checkpoints").latest_step() == 2


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from jaxconv.train.checkpoint import Checkpointer
    ck = Checkpointer(sys.argv[1], keep=5)
    ck.save(100, {"junk": np.ones((16, 1024, 1024), np.float32)}, {"config": {}})  # async
    os.kill(os.getpid(), signal.SIGKILL)  # dies while the 64 MB write is in flight
""")


def test_kill_mid_save_resumes_from_last_complete_checkpoint(tmp_path, digits8):
  kw = dict(epochs=1, checkpoint_every=2)
  train(cfg(tmp_path, "full", **kw), dataset=digits8, model=TinyCNN, verbose=False)
  train(cfg(tmp_path, max_steps=4, **kw), dataset=digits8, model=TinyCNN, verbose=False)
  ckdir = tmp_path / "run" / "checkpoints"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(ckdir)], env=env, timeout=120,
                        capture_output=True)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  assert any(p.name.startswith("100.orbax-checkpoint-tmp") for p in ckdir.iterdir())
  assert Checkpointer(ckdir).latest_step() == 4  # the half-written step 100 is ignored
  train(cfg(tmp_path, resume=True, **kw), dataset=digits8, model=TinyCNN, verbose=False)
  a, b = records(tmp_path / "full"), records(tmp_path / "run")
  assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-6)


@jax.custom_vjp
def _scale_grad(x, s):
  return x


_scale_grad.defvjp(lambda x, s: (x, s), lambda s, g: (g * s, jnp.zeros_like(s)))


class PoisonedAfter(nn.Module):
  """TinyCNN poisoned from the 4th training call on (a counter in batch_stats): with
  ``kind="nan"`` its logits turn NaN; with ``"inf_grad"`` its loss stays finite but its
  gradients are infinite."""
  num_classes: int = 10
  dtype: object = jnp.float32
  param_dtype: object = jnp.float32
  axis_name: object = None
  kind: str = "nan"

  @nn.compact
  def __call__(self, x, train=False):
    calls = self.variable("batch_stats", "calls", lambda: jnp.zeros((), jnp.int32))
    logits = TinyCNN(self.num_classes, name="net")(x, train)
    if train:
      calls.value += 1
    if self.kind == "nan":
      return jnp.where(calls.value >= 4, jnp.nan, logits)
    return _scale_grad(logits, jnp.where(calls.value >= 4, jnp.inf, 1.0))



def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, digits8):
  with pytest.raises(NonFiniteLossError, match=r"NaN/inf at step 4 \(loss\); .*last good checkpoint "
                                              r"\(finite everywhere\) is step 2"):
    train(cfg(tmp_path, checkpoint_every=2), dataset=digits8, model=PoisonedAfter, verbose=False)
  ck = Checkpointer(tmp_path / "run" / "checkpoints")
  assert ck.all_steps() == [2]
  tree, _ = ck.restore(2)
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(tree["params"]))


def test_finetune_new_head_and_frozen_backbone(tmp_path, digits8):
  train(cfg(tmp_path, "pre", epochs=1), dataset=digits8, model=TinyCNN, verbose=False)
  pre = Checkpointer(tmp_path / "pre" / "checkpoints")
  pre_tree, _ = pre.restore(pre.latest_step())
  # a 3-class task from the same images
  sub = digits8.y_train < 3
  ds3 = Dataset.from_arrays(digits8.x_train[sub], digits8.y_train[sub], num_classes=3)
  c = cfg(tmp_path, "ft", epochs=1, batch_size=16, init_from=str(tmp_path / "pre"),
          freeze="backbone")
  train(c, dataset=ds3, model=TinyCNN, verbose=False)
  ft = Checkpointer(tmp_path / "ft" / "checkpoints")
  ft_tree, _ = ft.restore(ft.latest_step())
  for group in ("conv", "bn"):  # frozen: unchanged
    for a, b in zip(jax.tree.leaves(pre_tree["params"][group]), jax.tree.leaves(ft_tree["params"][group])):
      np.testing.assert_array_equal(a, b)
  assert ft_tree["params"]["head"]["kernel"].shape == (128, 3)
  with pytest.raises(ValueError, match=r"freeze='trunk' names \['trunk'\].*choose among \['bn', 'conv', 'head'\]"):
    train(cfg(tmp_path, "bad", freeze="trunk"), dataset=digits8, model=TinyCNN, verbose=False)


def _state(cfg_, d, model=None):
  model = model or TinyCNN()
  tx, lr_fn = make_optimizer(cfg_, d)
  v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  return TrainState.create(model.apply, v, tx, seed=0), lr_fn


def test_train_step_loss_matches_reference_with_label_smoothing(digits8):
  c = TrainConfig(label_smoothing=0.1, optimizer="sgd", lr=0.1, schedule="constant", warmup_epochs=0)
  d = derive(c, num_train=256, num_devices=1)
  state, lr_fn = _state(c, d)
  x, y = digits8.x_train[:32], digits8.y_train[:32]
  mean, std = np.float32([0.3]), np.float32([0.4])
  step = jax.jit(make_train_step(num_classes=10, mean=mean, std=std, crop_padding=0, flip=False,
                                 label_smoothing=0.1, compute_dtype=jnp.float32, lr_fn=lr_fn))
  xin = (x.astype(np.float32) / 255 - 0.3) / 0.4
  logits, _ = state.apply_fn(state.variables(), xin, train=True, mutable=["batch_stats"])
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  target = np.full((32, 10), 0.01)
  target[np.arange(32), y] = 0.91
  want = -(target * logp).sum(1).mean()
  new, m = step(state, x, y)
  assert float(m["loss"]) == pytest.approx(want, rel=1e-5)
  assert float(m["top1"]) == pytest.approx((logits.argmax(1) == y).mean())
  assert float(m["lr"]) == pytest.approx(0.1)
  assert int(new.step) == 1


def test_train_step_donates_state(digits8):
  c = TrainConfig(schedule="constant", warmup_epochs=0)
  d = derive(c, num_train=256, num_devices=1)
  state, lr_fn = _state(c, d)
  p = Placement.create("none")
  step = p.compile_train(make_train_step(num_classes=10, mean=np.float32([0.]), std=np.float32([1.]),
                                         crop_padding=0, flip=False, label_smoothing=0.0,
                                         compute_dtype=jnp.float32, lr_fn=lr_fn))
  state = p.put_state(state)
  kernel = state.params["conv"]["kernel"]
  step(state, *p.put_batch((digits8.x_train[:32], digits8.y_train[:32])))
  assert kernel.is_deleted()


@pytest.mark.parametrize("mode", ["none", "mesh", "pmap"])
def test_evaluate_pads_and_masks_last_batch(mode, digits8):
  """100 test examples in batches of 24 (8 devices): every example counted once, none twice."""
  model = TinyCNN()
  v = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)))
  state = TrainState.create(model.apply, v, optax.sgd(0.1), seed=0)
  p = Placement.create(mode)
  mean, std = np.float32([0.3]), np.float32([0.4])
  ev = p.compile_eval(make_eval_step(num_classes=10, mean=mean, std=std, compute_dtype=jnp.float32,
                                     axis_name=p.axis_name))
  m, preds = evaluate(p.put_state(state), p, ev, digits8.x_test, digits8.y_test, 24)
  xin = (digits8.x_test.astype(np.float32) / 255 - 0.3) / 0.4
  logits = np.asarray(model.apply(v, xin), np.float64)
  assert preds.shape == (100,)
  np.testing.assert_array_equal(preds, logits.argmax(1))
  assert m["top1"] == pytest.approx((logits.argmax(1) == digits8.y_test).mean())
  top5 = np.argsort(-logits, 1)[:, :5]
  assert m["top5"] == pytest.approx((top5 == digits8.y_test[:, None]).any(1).mean())
  lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  assert m["loss"] == pytest.approx((lse - logits[np.arange(100), digits8.y_test]).mean(), rel=1e-5)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_low_precision_compute_keeps_float32_params(tmp_path, digits8, precision):
  s = train(cfg(tmp_path, precision=precision, epochs=1), dataset=digits8, model=TinyCNN, verbose=False)
  ck = Checkpointer(tmp_path / "run" / "checkpoints")
  tree, _ = ck.restore(s["steps"])
  ck.close()
  assert {np.asarray(a).dtype for a in jax.tree.leaves(tree["params"])} == {np.dtype("float32")}
  assert np.isfinite(s["test_loss"])
  if precision == "float16":  # the loss scale is part of the state: checkpointed and resumed
    assert float(tree["loss_scale"]["scale"]) >= 1.0 and int(tree["loss_scale"]["fin_steps"]) >= 0
    s2 = train(cfg(tmp_path, precision=precision, epochs=2, resume=True), dataset=digits8, model=TinyCNN,
               verbose=False)
    assert s2["steps"] == 2 * s["steps"] and np.isfinite(s2["test_loss"])
    assert "loss_scale" in records(tmp_path / "run")[-1]
  else:
    assert "loss_scale" not in tree


def _loss_curve(digits8, precision: str, steps: int = 300) -> np.ndarray:
  """The train losses of ``steps`` steps of the zoo's small CNN on the 8x8 digits (Adam, batch
  32) computing in ``precision`` (float32 parameters; float16 with dynamic loss scaling)."""
  from jaxconv.models import create_model

  dtype = jnp.dtype(precision)
  model = create_model("small_cnn", num_classes=10, widths=[8, 16], hidden=32, dtype=dtype)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False))(jax.random.key(0))
  state = TrainState.create(model.apply, variables, optax.adam(3e-3), seed=0,
                            loss_scaling=precision == "float16")
  mean, std = digits8.channel_stats()
  step = jax.jit(make_train_step(num_classes=10, mean=mean, std=std, crop_padding=0, flip=False,
                                 label_smoothing=0.0, compute_dtype=dtype, lr_fn=lambda s, o: 3e-3),
                 compiler_options=OPTIMIZED)
  metrics = []
  for i in range(steps):
    lo = (i % 8) * 32
    state, m = step(state, digits8.x_train[lo:lo + 32], digits8.y_train[lo:lo + 32])
    metrics.append(m)
  metrics = jax.device_get(metrics)
  skipped = [m for m in metrics if float(m.get("skipped", 0.0))]
  assert len(skipped) <= 5, f"{len(skipped)} of {steps} steps skipped by the loss scale"
  return np.array([float(m["loss"]) for m in metrics if not float(m.get("skipped", 0.0))][:steps - 5])


def test_bfloat16_and_float16_follow_the_float32_loss_curve(digits8):
  """Mixed precision keeps the float32 run's course: over 295 steps, every 59-step mean of the
  loss is within 0.1 + 10% of the float32 run's (measured: at most 0.037 for bfloat16 and 0.028
  for float16)."""
  want = _loss_curve(digits8, "float32").reshape(5, -1).mean(1)
  assert want[-1] < 0.5 * want[0]  # the run learns, so there is a course to follow
  for precision in ("bfloat16", "float16"):
    got = _loss_curve(digits8, precision).reshape(5, -1).mean(1)
    np.testing.assert_allclose(got, want, rtol=0.1, atol=0.1, err_msg=precision)


def test_loss_scaling_skips_overflowing_steps_and_adapts_the_scale(digits8):
  model = TinyCNN(dtype=jnp.float16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  state = TrainState.create(model.apply, variables, optax.sgd(0.1), seed=0, loss_scaling=True)
  assert float(state.dynamic_scale.scale) == 2.0 ** 16 and state.dynamic_scale.growth_interval == 2000
  mean, std = digits8.channel_stats()
  step = jax.jit(make_train_step(num_classes=10, mean=mean, std=std, crop_padding=0, flip=False,
                                 label_smoothing=0.0, compute_dtype=jnp.float16, lr_fn=lambda s, o: 0.1))
  x, y = digits8.x_train[:32], digits8.y_train[:32]
  # A scale near float32's largest number overflows the scaled gradients: the step is skipped
  # (parameters, statistics and optimizer state unchanged), the scale halves, step moves on.
  big = state.replace(dynamic_scale=state.dynamic_scale.replace(scale=jnp.float32(3e38)))
  after, m = step(big, x, y)
  assert float(m["skipped"]) == 1.0 and float(m["finite"]) == 1.0 and float(m["loss_scale"]) == pytest.approx(3e38)
  assert float(after.dynamic_scale.scale) == pytest.approx(1.5e38) and int(after.step) == 1
  for a, b in zip(jax.tree.leaves((after.params, after.batch_stats, after.opt_state)),
                  jax.tree.leaves((big.params, big.batch_stats, big.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Finite steps apply the update and count; the third after growth_interval=2 doubles the scale.
  st = state.replace(dynamic_scale=state.dynamic_scale.replace(growth_interval=2))
  scales = []
  for _ in range(3):
    prev = st.params
    st, m = step(st, x, y)
    assert float(m["skipped"]) == 0.0
    assert not np.array_equal(np.asarray(st.params["head"]["kernel"]), np.asarray(prev["head"]["kernel"]))
    scales.append(float(st.dynamic_scale.scale))
  assert scales == [2.0 ** 16, 2.0 ** 16, 2.0 ** 17]


def _lrs(sched, steps):
  return np.array([float(sched(s)) for s in steps])


@pytest.mark.parametrize("name", ["constant", "step", "exponential", "warmup_cosine", "onecycle"])
def test_schedules_against_closed_forms(name):
  c = TrainConfig(schedule=name, lr=0.2, epochs=4, batch_size=10, warmup_epochs=1, lr_decay_factor=0.5)
  d = derive(c, num_train=100, num_devices=1)
  assert (d.steps_per_epoch, d.total_steps, d.warmup_steps) == (10, 40, 10)
  steps = np.arange(40)
  got = _lrs(make_schedule(c, d), steps)
  warm = 0.2 * steps / 10
  if name == "constant":
    want = np.where(steps < 10, warm, 0.2)
  elif name == "step":  # x0.5 at epochs 2 and 3
    want = np.where(steps < 10, warm, 0.2 * 0.5 ** ((steps >= 20).astype(int) + (steps >= 30)))
  elif name == "exponential":
    want = np.where(steps < 10, warm, 0.2 * 0.5 ** (steps / 10))
  elif name == "warmup_cosine":
    want = np.where(steps < 10, warm, 0.1 * (1 + np.cos(np.pi * (steps - 10) / 30)))
  else:  # onecycle: peak at 30% of the steps; starts at peak/25 and ends near zero
    assert got.argmax() == 12 and got.max() == pytest.approx(0.2)
    assert got[0] == pytest.approx(0.2 / 25) and got[-1] < 1e-3
    return
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_optimizers_first_update_matches_formula(opt):
  c = TrainConfig(optimizer=opt, lr=0.1, schedule="constant", warmup_epochs=0, weight_decay=0.01,
                  momentum=0.9, grad_clip_norm=1.0)
  tx, _ = make_optimizer(c, derive(c, num_train=640, num_devices=1))
  params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
  grads = {"w": jnp.full((2, 2), 3.0), "b": jnp.full((2,), 4.0)}
  updates, _ = tx.update(grads, tx.init(params), params, value=jnp.float32(1.0))
  scale = 1.0 / np.sqrt(4 * 9 + 2 * 16)  # clip to global norm 1
  gw, gb = 3 * scale, 4 * scale
  if opt in ("sgd", "momentum"):
    want_w, want_b = -0.1 * (gw + 0.01 * 2), -0.1 * gb  # L2 on kernels only
  elif opt == "nesterov":
    want_w, want_b = -0.1 * 1.9 * (gw + 0.02), -0.1 * 1.9 * gb  # g + 0.9 * (first momentum = g)
  elif opt == "adam":
    want_w, want_b = -0.1, -0.1  # first Adam step is lr * sign(g) (bias corrected, eps ~ 0)
  else:
    want_w, want_b = -0.1 * (1 + 0.01 * 2), -0.1
  np.testing.assert_allclose(updates["w"], want_w, rtol=1e-4)
  np.testing.assert_allclose(updates["b"], want_b, rtol=1e-4)


def test_reduce_on_plateau_lowers_lr_after_patience():
  c = TrainConfig(schedule="plateau", optimizer="sgd", lr=0.1, batch_size=10, plateau_patience=1,
                  lr_decay_factor=0.5, warmup_epochs=0, weight_decay=0)
  d = derive(c, num_train=20, num_devices=1)  # 2 steps per epoch = accumulation size
  tx, lr_fn = make_optimizer(c, d)
  params = {"w": jnp.ones(2)}
  st = tx.init(params)
  lrs = []
  for step in range(8):  # a constant loss never improves
    lrs.append(float(lr_fn(step, st)))
    _, st = tx.update({"w": jnp.ones(2)}, st, params, value=jnp.float32(1.0))
  assert lrs[:2] == pytest.approx([0.1, 0.1]) and lrs[-1] < 0.09
  assert all(b <= a for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("field,value,match", [
    ("optimizer", "lamb", r"unknown optimizer 'lamb'; choose one of sgd, momentum, nesterov, adam, adamw"),
    ("schedule", "linear", r"unknown schedule 'linear'; choose one of constant, step, exponential"),
    ("precision", "fp16", r"unknown precision 'fp16'; choose one of float32, bfloat16, float16"),
    ("parallel", "tpu", r"unknown parallel 'tpu'"),
    ("batch_size", 0, r"batch_size must be a positive integer; got 0"),
    ("lr", -1.0, r"lr must be a positive finite number; got -1.0"),
    ("label_smoothing", 1.0, r"label_smoothing must lie in \[0, 1\)"),
    ("rotate", -5, r"rotate must be a number of degrees in \[0, 180\]; got -5"),
    ("scale", 1.5, r"scale must lie in \[0, 1\); got 1.5"),
])
def test_config_rejects_bad_values(field, value, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**{field: value})


def test_resume_compares_fields_newer_than_the_checkpoint_with_their_defaults():
  saved = TrainConfig().to_dict()
  del saved["rotate"], saved["scale"]  # written before these fields existed
  assert resume_mismatches(saved, TrainConfig()) == []
  assert resume_mismatches(saved, TrainConfig(rotate=10.0)) == ["rotate: checkpoint 0.0 vs now 10.0"]


def test_config_from_dict_rejects_unknown_keys():
  with pytest.raises(ValueError, match=r"unknown config keys \['learning_rate'\]; valid keys: .*lr"):
    TrainConfig.from_dict({"learning_rate": 0.1})


def test_unknown_model_lists_valid_ones(tmp_path):
  from jaxconv.models import list_models
  with pytest.raises(ValueError, match=r"unknown model 'lenet6'; choose one of .*" + list_models()[0]):
    train(cfg(tmp_path, model="lenet6"), verbose=False)


def test_checkpoints_keep_last_k_and_best(tmp_path, digits8):
  """keep=1: the latest checkpoint plus the one with the best test accuracy survive."""
  c = cfg(tmp_path, epochs=4, keep=1, lr=0.05, optimizer="sgd", schedule="plateau")
  s = train(c, dataset=digits8, model=TinyCNN, verbose=False)
  tests = records(c.workdir, "test")
  assert [r["step"] for r in tests] == [8, 16, 24, 32]
  top = max(r["top1"] for r in tests)
  best_steps = {r["step"] for r in tests if r["top1"] == top}
  kept = set(Checkpointer(tmp_path / "run" / "checkpoints").all_steps())
  assert 32 in kept and kept & best_steps and len(kept) <= 2 and kept - {32} <= best_steps
  assert s["best_step"] in best_steps and s["best_test_top1"] == top


def _read_events(folder):
  """Scalars from TensorBoard event files: TFRecord framing parsed by hand, protos from tensorboardX."""
  import struct
  from tensorboardX.proto import event_pb2
  out = {}
  for f in folder.iterdir():
    buf = f.read_bytes()
    i = 0
    while i < len(buf):
      (n,) = struct.unpack("<Q", buf[i:i + 8])
      ev = event_pb2.Event.FromString(buf[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in ev.summary.value:
        out.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return out


def test_tensorboard_scalars_match_jsonl(tmp_path, digits8):
  c = cfg(tmp_path, epochs=1, max_steps=3, tensorboard=True)
  train(c, dataset=digits8, model=TinyCNN, verbose=False)
  scalars = _read_events(tmp_path / "run" / "tensorboard")
  want = [(r["step"], r["loss"]) for r in records(c.workdir)]
  assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in want] == [1, 2, 3]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [v for _, v in want], rtol=1e-6)
  assert [s for s, _ in scalars["test/top1"]] == [3]


def test_non_finite_gradients_stop_before_a_poisoned_state_is_saved(tmp_path, digits8):
  """A finite loss with an infinite gradient would put inf into Adam's moments: the run stops
  at that step, and every checkpoint it kept is finite everywhere (optimizer state included)."""
  with pytest.raises(NonFiniteLossError, match=r"at step 4 \(gradient norm\).*good checkpoint .* is step 3"):
    train(cfg(tmp_path, checkpoint_every=1, keep=5), dataset=digits8,
          model=functools.partial(PoisonedAfter, kind="inf_grad"), verbose=False)
  ck = Checkpointer(tmp_path / "run" / "checkpoints")
  assert ck.all_steps() == [1, 2, 3]
  for step in ck.all_steps():
    tree, _ = ck.restore(step)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(v).dtype, np.inexact))
  ck.close()


def test_all_finite_looks_at_every_floating_leaf():
  from jaxconv.train.steps import all_finite

  tree = {"params": {"w": jnp.ones(3)}, "opt": (jnp.zeros(2), jnp.int32(7)), "count": 3}
  assert bool(all_finite(tree))
  tree["opt"] = (jnp.array([0.0, jnp.inf]), jnp.int32(7))
  assert not bool(all_finite(tree))
  from jaxconv.train.loop import _non_finite
  assert _non_finite({"loss": 1.0, "grad_norm": 2.0, "finite": 0.0}) == \
      "parameters, batch statistics or optimizer state"
  assert _non_finite({"loss": float("nan"), "grad_norm": 2.0, "finite": 0.0}) == "loss"
  assert _non_finite({"loss": 1.0, "grad_norm": 2.0, "finite": 1.0}) is None


def test_the_best_checkpoint_survives_a_reopened_manager(tmp_path):
  """Metrics are stored with the checkpoints: a reopened manager (a resume) still knows and
  keeps the best one, whatever is saved after it."""
  tree = {"w": np.ones(3, np.float32)}
  ck = Checkpointer(tmp_path / "ck", keep=1)
  ck.save(1, tree, {"epoch": 1}, {"test_top1": 0.9944})
  ck.save(2, tree, {"epoch": 2}, {"test_top1": 0.9916})
  ck.wait()
  assert ck.all_steps() == [1, 2] and ck.best_step() == 1
  ck.close()
  ck = Checkpointer(tmp_path / "ck", keep=1)
  assert ck.best_step() == 1 and ck.metrics(1) == {"test_top1": 0.9944}
  ck.save(3, tree, {"epoch": 2})  # saved without metrics (mid-epoch)
  ck.save(4, tree, {"epoch": 3}, {"test_top1": 0.99})
  ck.wait()
  assert ck.all_steps() == [1, 4] and ck.best_step() == 1
  ck.close()


def test_extending_a_run_keeps_its_best_and_eval_best_uses_it(tmp_path, digits8):
  from jaxconv.train.cli_eval import evaluate_checkpoint

  # checkpoint_every equal to the epoch: the epoch-end steps are saved once, with their metrics.
  train(cfg(tmp_path, epochs=2, keep=1, checkpoint_every=8), dataset=digits8, model=TinyCNN, verbose=False)
  summary = train(cfg(tmp_path, epochs=4, keep=1, checkpoint_every=8, resume=True), dataset=digits8,
                  model=TinyCNN, verbose=False)
  tests = records(tmp_path / "run", "test")
  assert [r["step"] for r in tests] == [8, 16, 24, 32]
  best = max(tests, key=lambda r: (r["top1"], -r["step"]))
  ck = Checkpointer(tmp_path / "run" / "checkpoints", read_only=True)
  assert ck.best_step() == best["step"] and best["step"] in ck.all_steps() and 32 in ck.all_steps()
  assert ck.metrics(best["step"]) == {"test_top1": best["top1"]}
  ck.close()
  assert summary["best_step"] == best["step"] and summary["best_test_top1"] == best["top1"]
  assert summary["resumed_from_step"] == 16
  assert evaluate_checkpoint(str(tmp_path / "run"), best=True, dataset=digits8, model=TinyCNN)["step"] == best["step"]
  # A resume of the finished run trains nothing and writes no second test record.
  train(cfg(tmp_path, epochs=4, keep=1, checkpoint_every=8, resume=True), dataset=digits8, model=TinyCNN,
        verbose=False)
  assert len(records(tmp_path / "run", "test")) == 4


def test_eval_best_without_metrics_fails_clearly(tmp_path, digits8):
  from jaxconv.train.cli_eval import evaluate_checkpoint

  no_test = Dataset.from_arrays(digits8.x_train, digits8.y_train, digits8.x_test[:0], digits8.y_test[:0],
                                num_classes=10, name="digits8")  # never evaluated: no metrics
  train(cfg(tmp_path, max_steps=3, checkpoint_every=3), dataset=no_test, model=TinyCNN, verbose=False)
  with pytest.raises(ValueError, match="no checkpoint carries a test accuracy; drop --best"):
    evaluate_checkpoint(str(tmp_path / "run"), best=True, dataset=digits8, model=TinyCNN)


def test_small_failures_are_named(tmp_path, digits8):
  (tmp_path / "afile").write_text("")
  with pytest.raises(ValueError, match="is a file, not a folder"):
    train(cfg(tmp_path, "afile"), dataset=digits8, model=TinyCNN, verbose=False)
  s = train(cfg(tmp_path, "fresh", resume=True, max_steps=2), dataset=digits8, model=TinyCNN, verbose=False)
  assert s["resume_requested"] is True and s["resumed_from_step"] is None
  assert records(tmp_path / "fresh", "resume") == [
      {"split": "resume", "step": 0, "resumed_from_step": None, "corrupt_checkpoints": 0}]
  from jaxconv.models import create_model
  with pytest.raises(TypeError, match="dtype must be a floating dtype .* got 'float33'"):
    create_model("lenet5", dtype="float33")
  with pytest.raises(ValueError, match="model 'resnet18': width must be a positive int; got 0"):
    create_model("resnet18", width=0)
  with pytest.raises(ValueError, match=r"model 'vgg11': hidden must be a positive int; got -1"):
    create_model("vgg11", hidden=-1)
  with pytest.raises(ValueError, match=r"model 'alexnet': dropout_rate must be a number in \[0, 1\); got 1.5"):
    create_model("alexnet", dropout_rate=1.5)


def _files(step_dir):
  return sorted(p for p in step_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "metadata"])
def test_corrupt_checkpoint_is_named_and_the_resume_falls_back(damage, tmp_path, digits8, capsys):
  """Damage the newest checkpoint: the resume names it in one line, restores the one before,
  and the run ends where an undamaged one would."""
  kw = dict(epochs=2, checkpoint_every=3, keep=5)
  full = train(cfg(tmp_path, "full", **kw), dataset=digits8, model=TinyCNN, verbose=False)
  train(cfg(tmp_path, max_steps=12, **kw), dataset=digits8, model=TinyCNN, verbose=False)
  step_dir = tmp_path / "run" / "checkpoints" / "12"
  data = [p for p in _files(step_dir / "state") if "/d/" in str(p)]
  victim = max(data, key=lambda p: p.stat().st_size)  # the largest array file
  if damage == "flip":
    raw = bytearray(victim.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    victim.write_bytes(bytes(raw))
  elif damage == "truncate":
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
  elif damage == "delete":
    victim.unlink()
  else:
    (step_dir / "meta" / "metadata").write_text("{not json")
  ck = Checkpointer(tmp_path / "run" / "checkpoints")
  with pytest.raises(Exception) as err:
    ck.restore(12)
  ck.close()
  assert type(err.value).__name__ == "CorruptCheckpointError" and "\n" not in str(err.value)
  assert "checkpoint step 12" in str(err.value)
  if damage == "metadata":  # the command line: one line, no traceback
    from jaxconv.train.cli_eval import main as eval_main
    capsys.readouterr()
    assert eval_main(["--workdir", str(tmp_path / "run"), "--step", "12", "--no-plot"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
  capsys.readouterr()
  resumed = train(cfg(tmp_path, resume=True, **kw), dataset=digits8, model=TinyCNN, verbose=False)
  err_lines = [l for l in capsys.readouterr().err.splitlines() if "corrupt" in l]
  assert len(err_lines) == 1 and "checkpoint step 12" in err_lines[0] and "falling back" in err_lines[0]
  assert resumed["corrupt_checkpoints"] == [err_lines[0].removeprefix("jaxconv train: ")]
  assert resumed["resumed_from_step"] == 9
  assert resumed["test_top1"] == full["test_top1"]
  assert resumed["test_loss"] == pytest.approx(full["test_loss"], rel=1e-6)
  a = load_params(tmp_path / "full")
  b = load_params(tmp_path / "run")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def load_params(workdir):
  from jaxconv.train.finetune import load_variables
  return load_variables(workdir)["params"]


# LeNet-5 on the bundled digits: 3 epochs of 11 steps, a checkpoint every step.
_LOOP_CONFIG = dict(model="lenet5", dataset="digits", epochs=3, batch_size=128, checkpoint_every=1, keep=2, lr=0.01,
                    optimizer="adam", parallel="none", log_every=1, progress=False, plots=False, resume=True)
_LOOP_CHILD = textwrap.dedent("""
    import json, sys
    from jaxconv.train import TrainConfig, train
    train(TrainConfig(**json.loads(sys.argv[1])))
""")


def _saved_steps(workdir):
  """The steps whose checkpoints are complete (orbax renames a finished one to its step)."""
  d = workdir / "checkpoints"
  return [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []


def test_kill_loop_resumes_to_the_bits_of_an_uninterrupted_run(tmp_path):
  """10 SIGKILLs while training runs (a checkpoint is saved every step: each kill lands in a step
  or a save, a few steps after the run resumed), each followed by a resume: the final parameters
  equal an uninterrupted run's bit for bit."""
  import random
  import time

  from jaxconv.train.finetune import load_variables

  # The children share a compilation cache: each restart then skips most of XLA's compile time.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
             XLA_FLAGS=os.environ.get("JAXCONV_TEST_XLA_FLAGS", ""), PYTHONUNBUFFERED="1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

  def start(workdir, **changes):
    config = {**_LOOP_CONFIG, "workdir": str(workdir), **changes}
    return subprocess.Popen([sys.executable, "-c", _LOOP_CHILD, json.dumps(config)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

  # The uninterrupted run saves at its end only: saving never changes the training.
  full = start(tmp_path / "full", checkpoint_every=0)
  out, _ = full.communicate(timeout=300)
  assert full.returncode == 0, out[-2000:]
  total = max(_saved_steps(tmp_path / "full"))
  assert total == 33  # 3 epochs of 11 steps
  rnd = random.Random(0)
  run, reached = tmp_path / "run", []
  for kill in range(10):
    resumed_at = max(_saved_steps(run), default=0)
    target = resumed_at + rnd.randint(1, 2)
    proc = start(run)
    deadline = time.monotonic() + 120
    # Training, not start-up: wait for this process's first or second checkpoint, then kill it
    # within 50 ms, while it computes the next step or saves it.
    while max(_saved_steps(run), default=0) < target:
      assert proc.poll() is None and time.monotonic() < deadline, f"kill {kill + 1}: {proc.stdout.read()[-2000:]}"
      time.sleep(0.005)
    time.sleep(rnd.uniform(0.0, 0.05))
    proc.kill()
    rest = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run finished before kill {kill + 1}: {rest[-500:]}"
    reached.append(max(_saved_steps(run)))
  assert reached[-1] < total, reached  # every kill landed mid-run
  last = start(tmp_path / "run")
  out, _ = last.communicate(timeout=300)
  assert last.returncode == 0, out[-2000:]
  steps = Checkpointer(tmp_path / "run" / "checkpoints", read_only=True)
  assert steps.latest_step() == total
  steps.close()
  a, b = load_variables(tmp_path / "full"), load_variables(tmp_path / "run")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
