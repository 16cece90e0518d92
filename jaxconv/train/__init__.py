"""Training: config, Optax optimizers and schedules, jitted data-parallel steps, checkpoints.

Example:
  >>> from jaxconv.train import TrainConfig
  >>> TrainConfig().model, TrainConfig().dataset
  ('lenet5', 'digits')
"""

import importlib
from typing import TYPE_CHECKING

# The public names and the modules that define them. They are imported on first use, so that
# ``jaxconv launch`` and the host-memory setup (``jaxconv.train.host``) start without JAX, Flax,
# Optax and Orbax.
_EXPORTS = {
    "checkpoint": ("Checkpointer",),
    "config": ("OPTIMIZERS", "PRECISIONS", "SCHEDULES", "TrainConfig", "derive"),
    "finetune": ("freeze", "load_variables", "transplant"),
    "host": ("keep_host_memory",),
    "loop": ("NonFiniteLossError", "evaluate", "train"),
    "optim": ("make_optimizer", "make_schedule"),
    "parallel": ("Placement",),
    "steps": ("TrainState", "make_eval_step", "make_train_step"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_MODULE_OF)

if TYPE_CHECKING:  # what static checkers and IDEs see; tests/test_public_api.py keeps it equal to _EXPORTS
  from jaxconv.train.checkpoint import Checkpointer  # noqa: F401
  from jaxconv.train.config import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, derive  # noqa: F401
  from jaxconv.train.finetune import freeze, load_variables, transplant  # noqa: F401
  from jaxconv.train.host import keep_host_memory  # noqa: F401
  from jaxconv.train.loop import NonFiniteLossError, evaluate, train  # noqa: F401
  from jaxconv.train.optim import make_optimizer, make_schedule  # noqa: F401
  from jaxconv.train.parallel import Placement  # noqa: F401
  from jaxconv.train.steps import TrainState, make_eval_step, make_train_step  # noqa: F401


def __getattr__(name: str):
  if name not in _MODULE_OF:
    raise AttributeError(f"module 'jaxconv.train' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"jaxconv.train.{_MODULE_OF[name]}"), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
