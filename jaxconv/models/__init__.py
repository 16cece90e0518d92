"""The model zoo: one registry, ``create_model(name, **kw)`` and ``list_models(pattern)``.

Every model follows one contract: ``variables = model.init(key, x, train=False)`` with ``x``
``[N, H, W, C]``; ``model.apply(variables, x, train=False)`` gives logits;
``model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})`` gives
``(logits, updates)``; ``return_features=True`` adds a dict of feature maps (``stem``,
``stage1``.., ``pre_logits``). The classifier is the submodule ``head``; every model takes
``num_classes``, ``dtype``, ``param_dtype`` and ``axis_name``.

Weights: :func:`load_torchvision` builds a model from a torchvision checkpoint (``.pth``,
``.safetensors`` or a mapping) and :func:`torchvision_state_dict` exports one back, for the
models in :data:`TORCHVISION_MODELS`.
"""

from jaxconv.models._registry import create_model as create_model
from jaxconv.models._registry import list_models as list_models
from jaxconv.models._registry import register_model as register_model
from jaxconv.models.classic import VGG as VGG
from jaxconv.models.classic import AlexNet as AlexNet
from jaxconv.models.classic import LeNet5 as LeNet5
from jaxconv.models.classic import SmallCNN as SmallCNN
from jaxconv.models.densenet import DenseNet as DenseNet
from jaxconv.models.googlenet import GoogLeNet as GoogLeNet
from jaxconv.models.mobilenet import MobileNetV2 as MobileNetV2
from jaxconv.models.mobilenet import SqueezeNet as SqueezeNet
from jaxconv.models.resnet import ResNet as ResNet
from jaxconv.models.weights import TORCHVISION_MODELS as TORCHVISION_MODELS
from jaxconv.models.weights import load_torchvision as load_torchvision
from jaxconv.models.weights import read_state_dict as read_state_dict
from jaxconv.models.weights import torchvision_state_dict as torchvision_state_dict
from jaxconv.models.weights import write_state_dict as write_state_dict

__all__ = [
    "AlexNet",
    "DenseNet",
    "GoogLeNet",
    "LeNet5",
    "MobileNetV2",
    "ResNet",
    "SmallCNN",
    "SqueezeNet",
    "TORCHVISION_MODELS",
    "VGG",
    "create_model",
    "list_models",
    "load_torchvision",
    "read_state_dict",
    "register_model",
    "torchvision_state_dict",
    "write_state_dict",
]
