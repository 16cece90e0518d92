"""Training: config, Optax optimizers and schedules, jitted data-parallel steps, checkpoints.

Example:
  >>> from jaxconv.train import TrainConfig
  >>> TrainConfig().model, TrainConfig().dataset
  ('lenet5', 'digits')
"""

from jaxconv.train.checkpoint import Checkpointer as Checkpointer
from jaxconv.train.config import OPTIMIZERS as OPTIMIZERS
from jaxconv.train.config import PRECISIONS as PRECISIONS
from jaxconv.train.config import SCHEDULES as SCHEDULES
from jaxconv.train.config import TrainConfig as TrainConfig
from jaxconv.train.config import derive as derive
from jaxconv.train.finetune import freeze as freeze
from jaxconv.train.finetune import load_variables as load_variables
from jaxconv.train.finetune import transplant as transplant
from jaxconv.train.host import keep_host_memory as keep_host_memory
from jaxconv.train.loop import NonFiniteLossError as NonFiniteLossError
from jaxconv.train.loop import evaluate as evaluate
from jaxconv.train.loop import train as train
from jaxconv.train.optim import make_optimizer as make_optimizer
from jaxconv.train.optim import make_schedule as make_schedule
from jaxconv.train.parallel import Placement as Placement
from jaxconv.train.steps import TrainState as TrainState
from jaxconv.train.steps import make_eval_step as make_eval_step
from jaxconv.train.steps import make_train_step as make_train_step

__all__ = ["Checkpointer", "OPTIMIZERS", "PRECISIONS", "SCHEDULES", "TrainConfig", "derive", "freeze",
           "load_variables", "transplant", "keep_host_memory", "NonFiniteLossError", "evaluate", "train",
           "make_optimizer", "make_schedule", "Placement", "TrainState", "make_eval_step",
           "make_train_step"]
