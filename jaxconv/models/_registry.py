"""The model registry: ``@register_model`` feeds ``create_model(name, **kw)`` and ``list_models(pattern)``."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Optional

import flax.linen as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
  """Registers a model factory under its function name (``resnet18``...).

  The factory takes ``num_classes`` and keyword options and returns a Flax module.

  Raises:
    ValueError: if the name is already registered.
  """
  name = fn.__name__
  if name in _REGISTRY:
    raise ValueError(f"a model named {name!r} is already registered.")
  _REGISTRY[name] = fn
  return fn


def list_models(pattern: str = "*") -> list[str]:
  """Registered model names matching a shell-style ``pattern``, sorted.

  Example:
    >>> from jaxconv.models import list_models
    >>> list_models("resnet1*")
    ['resnet101', 'resnet152', 'resnet18']
  """
  if not isinstance(pattern, str):
    raise TypeError(f"pattern must be a string such as 'resnet*'; got {pattern!r}.")
  return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def check_num_classes(num_classes: Any) -> int:
  """``num_classes`` must be an int >= 1."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int):
    raise TypeError(f"num_classes must be an int >= 1; got {num_classes!r} of type {type(num_classes).__name__}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
  return num_classes


def create_model(name: str, num_classes: Optional[int] = None, **kwargs: Any) -> nn.Module:
  """Builds a registered model.

  Args:
    name: a name from :func:`list_models`.
    num_classes: classifier outputs; ``None`` keeps the model's default (1000 for the ImageNet
      models, 10 for ``lenet5``).
    **kwargs: options of that model (``cifar_stem``, ``dtype``, ``param_dtype``, ``axis_name``...).

  Returns:
    An unbound Flax module: ``variables = model.init(key, x, train=False)``.

  Raises:
    ValueError: for an unknown name (listing the close matches) or ``num_classes < 1``.
    TypeError: for an option the model does not have (listing those it has).

  Example:
    >>> from jaxconv.models import create_model
    >>> create_model("resnet18", num_classes=10, cifar_stem=True).num_classes
    10
  """
  if name not in _REGISTRY:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown model name {name!r}.{hint} list_models() gives all {len(_REGISTRY)} registered names."
    )
  if num_classes is not None:
    kwargs["num_classes"] = check_num_classes(num_classes)
  return _REGISTRY[name](**kwargs)


def build(cls: type, name: str, fixed: dict[str, Any], options: dict[str, Any]) -> nn.Module:
  """Instantiates ``cls(**fixed, **options)`` for the registered variant ``name``.

  ``fixed`` is the variant's configuration (stage sizes, block...), ``options`` the user's keywords.
  An option the class does not have, or one that would change the variant's defining
  configuration, is a TypeError that lists the accepted options.
  """
  fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  accepted = sorted(fields - set(fixed))
  unknown = sorted(set(options) - fields)
  if unknown:
    raise TypeError(f"model {name!r} has no option(s) {unknown}; its options are {accepted}.")
  clash = sorted(set(options) & set(fixed))
  if clash:
    raise TypeError(
        f"model {name!r} fixes {clash} (that is what the name means); build {cls.__name__} directly "
        f"to change them. Its options are {accepted}."
    )
  if "num_classes" in options:
    check_num_classes(options["num_classes"])
  for key in ("dtype", "param_dtype"):
    if options.get(key) is not None:
      options = {**options, key: _check_dtype(name, key, options[key])}
  for key, value in options.items():
    _check_size(name, key, value)
  # Flax modules must be hashable (jit takes them as static arguments): a list from JSON or YAML
  # (``--model-kwargs '{"widths": [16, 32]}'``) becomes a tuple.
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
  return cls(**fixed, **options)


def _check_dtype(name: str, key: str, value: Any) -> Any:
  """A dtype option, checked at creation (a bad name otherwise fails later, inside ``jnp``)."""
  import jax.numpy as jnp

  try:
    dt = jnp.dtype(value)
  except TypeError:
    dt = None
  if dt is None or not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"model {name!r}: {key} must be a floating dtype such as 'float32', 'bfloat16' or "
                    f"'float16'; got {value!r}.")
  return value


# Options that are counts or sizes (positive ints), and rates in [0, 1). (small_cnn checks its
# widths itself.)
_SIZES = ("width", "hidden", "growth_rate", "init_features", "bn_size", "pool_size", "input_size",
          "round_nearest", "convs_per_stage", "se_reduction", "branch3_kernel")
_RATES = ("drop_rate", "dropout_rate", "aux_dropout_rate")


def _check_size(name: str, key: str, value: Any) -> None:
  """A size or rate option, checked at creation (a zero width otherwise fails deep inside init)."""
  if value is None:
    return
  if key in _SIZES:
    items = value if isinstance(value, (tuple, list)) else (value,)
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
      raise ValueError(f"model {name!r}: {key} must be a positive int; got {value!r}.")
  elif key in _RATES:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
      raise ValueError(f"model {name!r}: {key} must be a number in [0, 1); got {value!r}.")
  elif key == "width_mult":
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
      raise ValueError(f"model {name!r}: width_mult must be a positive number; got {value!r}.")
