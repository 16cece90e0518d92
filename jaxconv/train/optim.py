"""Optax optimizers and learning-rate schedules chosen by a :class:`TrainConfig`.

The chain is ``clip_by_global_norm -> [L2 weight decay] -> optimizer -> [reduce_on_plateau]``.
``reduce_on_plateau`` (``optax.contrib``) scales the updates and reads the loss through the
``value=`` extra argument of ``update``; the train step always passes it (the other
transformations ignore it).

Example:
  >>> import jax.numpy as jnp
  >>> from jaxconv.train.config import TrainConfig, derive
  >>> cfg = TrainConfig(optimizer="nesterov", schedule="step", lr=0.1, epochs=4)
  >>> tx, lr_fn = make_optimizer(cfg, derive(cfg, num_train=100, num_devices=1))
  >>> params = {"w": jnp.ones((2, 2))}
  >>> state = tx.init(params)
  >>> float(lr_fn(0, state)), float(lr_fn(3 * 1, state))  # 1 step per epoch; decay at 50%, 75%
  (0.1, 0.001)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxconv.train.config import Derived, TrainConfig


def make_schedule(cfg: TrainConfig, d: Derived) -> optax.Schedule:
  """The learning-rate schedule (a function of the step) for every schedule but ``plateau``.

  Steps are optimizer steps; epochs in the config are converted with ``d.steps_per_epoch``.
  ``plateau`` returns a constant (its reduction lives in the optimizer state).
  """
  lr, spe, total, warm = cfg.lr, d.steps_per_epoch, d.total_steps, d.warmup_steps
  name = cfg.schedule
  if name in ("constant", "plateau"):
    sched = optax.constant_schedule(lr)
  elif name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=min(warm, total - 1), decay_steps=max(total, 1),
        end_value=0.0)
  elif name == "onecycle":
    return optax.cosine_onecycle_schedule(transition_steps=max(total, 1), peak_value=lr)
  elif name == "step":
    epochs = cfg.lr_decay_epochs or (cfg.epochs * 0.5, cfg.epochs * 0.75)
    boundaries = {int(round(e * spe)): cfg.lr_decay_factor for e in epochs}
    sched = optax.piecewise_constant_schedule(lr, boundaries)
  elif name == "exponential":
    sched = optax.exponential_decay(lr, transition_steps=spe, decay_rate=cfg.lr_decay_factor)
  else:  # TrainConfig.validate() rejected anything else
    raise ValueError(f"unknown schedule {name!r}")
  if warm and name != "plateau":  # linear warm-up; afterwards the base schedule at the same step
    base = sched
    sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warm),
                                  lambda s: base(s + warm)], [warm])
  return sched


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg: TrainConfig, d: Derived
                   ) -> tuple[optax.GradientTransformationExtraArgs, Callable]:
  """The gradient transformation and ``lr_fn(step, opt_state) -> learning rate``.

  Args:
    cfg: the run's config (optimizer, lr, schedule, weight decay, clipping, ...).
    d: derived values (steps per epoch, total steps, warm-up steps).
  """
  sched = make_schedule(cfg, d)
  parts = []
  if cfg.grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.optimizer == "adamw":
    parts.append(optax.adamw(sched, b1=cfg.momentum, weight_decay=cfg.weight_decay, mask=_decay_mask))
  else:
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=_decay_mask))
    if cfg.optimizer == "adam":
      parts.append(optax.adam(sched, b1=cfg.momentum))
    elif cfg.optimizer == "sgd":
      parts.append(optax.sgd(sched))
    else:
      parts.append(optax.sgd(sched, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov"))
  if cfg.schedule == "plateau":
    parts.append(optax.contrib.reduce_on_plateau(
        factor=cfg.lr_decay_factor, patience=cfg.plateau_patience,
        accumulation_size=d.steps_per_epoch))
  tx = optax.chain(*parts)

  if cfg.schedule == "plateau":
    def lr_fn(step, opt_state):
      return sched(step) * opt_state[-1].scale
  else:
    def lr_fn(step, opt_state):
      del opt_state
      return jnp.asarray(sched(step), jnp.float32)
  return tx, lr_fn
