"""Using jaxconv's Linen modules and models from ``flax.nnx``, through ``flax.nnx.bridge``."""

from __future__ import annotations

from typing import Any, Union

import flax.linen as nn
import jax


def to_nnx(module: nn.Module, x: jax.typing.ArrayLike, *, rngs: Union[int, Any] = 0, **call_kwargs: Any):
  """Wraps a jaxconv (Linen) module or model as an initialised ``flax.nnx`` module.

  It is ``flax.nnx.bridge.ToNNX(module, rngs)`` followed by
  ``flax.nnx.bridge.lazy_init(wrapped, x, train=False, **call_kwargs)``. The wrapped module's
  attributes mirror the Linen submodules (``wrapped.stem_conv["kernel"]``), with parameters as
  ``nnx.Param`` and running statistics as ``nnx.BatchStat``; dropout keys come from its
  ``"dropout"`` stream. Call it as the Linen module, with the same keywords:
  ``wrapped(x, train=False)`` evaluates; ``wrapped(x, train=True, mutable=["batch_stats"])``
  trains and writes the new running statistics into the module (it returns the logits only).

  A training step under ``nnx.jit`` (see ``tests/test_nnx.py``)::

      model = to_nnx(create_model("resnet18", num_classes=10, cifar_stem=True), x)
      opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

      @nnx.jit
      def step(model, opt, x, y):
        def loss_fn(model):
          logits = model(x, train=True, mutable=["batch_stats"])
          return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)   # grads of nnx.Param only
        opt.update(model, grads)
        return loss

  Args:
    module: any jaxconv module or model (unbound).
    x: a sample input (only its shape and dtype matter).
    rngs: an int seed or an ``nnx.Rngs`` with ``params`` and ``dropout`` streams.
    **call_kwargs: further keywords of the module's call during initialisation.

  Returns:
    The initialised ``nnx`` module.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxconv.nn import Conv, to_nnx
    >>> layer = to_nnx(Conv(4, 3, padding=1), jnp.ones((1, 8, 8, 2)))
    >>> layer.kernel.shape, layer(jnp.ones((1, 8, 8, 2))).shape
    ((3, 3, 2, 4), (1, 8, 8, 4))
  """
  from flax import nnx  # local: nnx is only needed by those who use it

  if isinstance(rngs, int):
    rngs = nnx.Rngs(params=rngs, dropout=rngs + 1)
  if not isinstance(rngs, nnx.Rngs):
    raise TypeError(f"rngs must be an int seed or an nnx.Rngs; got {type(rngs).__name__}.")
  wrapped = nnx.bridge.ToNNX(module, rngs=rngs)
  if _takes_train(module):
    call_kwargs.setdefault("train", False)
  return nnx.bridge.lazy_init(wrapped, x, **call_kwargs)


def _takes_train(module: nn.Module) -> bool:
  import inspect

  try:
    return "train" in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False
