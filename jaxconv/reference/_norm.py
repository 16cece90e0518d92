"""Normalization oracles in float64 NumPy, written from the papers' formulas with explicit loops.

Nothing is shared with ``jaxconv.ops``.
"""

from __future__ import annotations

import numpy as np


def batch_norm_np(x, scale, bias, running_mean, running_var, *, train, momentum=0.9, eps=1e-5, unbiased_running_var=False):
  """Batch norm over all axes but the last, one channel at a time (the examples given are all valid).

  Returns ``(y, new_running_mean, new_running_var)``; momentum in the Flax convention.

  Example:
    >>> import numpy as np
    >>> from jaxconv.reference import batch_norm_np
    >>> y, m, v = batch_norm_np(np.array([[1.0], [3.0]]), None, None, np.zeros(1), np.ones(1), train=True, eps=0.0)
    >>> y[:, 0], m
    (array([-1.,  1.]), array([0.2]))
  """
  x = np.asarray(x, np.float64)
  c = x.shape[-1]
  y = np.empty_like(x)
  new_m = np.array(running_mean, np.float64, copy=True)
  new_v = np.array(running_var, np.float64, copy=True)
  for ch in range(c):
    vals = x[..., ch].ravel()
    if train:
      n = vals.size
      mu = sum(vals) / n
      var = sum((v - mu) ** 2 for v in vals) / n
      upd = var * n / (n - 1) if unbiased_running_var else var
      new_m[ch] = momentum * new_m[ch] + (1 - momentum) * mu
      new_v[ch] = momentum * new_v[ch] + (1 - momentum) * upd
    else:
      mu, var = running_mean[ch], running_var[ch]
    g = 1.0 if scale is None else scale[ch]
    b = 0.0 if bias is None else bias[ch]
    y[..., ch] = (x[..., ch] - mu) / np.sqrt(var + eps) * g + b
  return y, new_m, new_v


def group_norm_np(x, num_groups, scale=None, bias=None, eps=1e-5):
  """Group norm by looping over examples and groups (``num_groups = C`` is instance norm).

  Example:
    >>> import numpy as np
    >>> from jaxconv.reference import group_norm_np
    >>> group_norm_np(np.array([[1.0, 3.0]]), 1, eps=0.0)
    array([[-1.,  1.]])
  """
  x = np.asarray(x, np.float64)
  c = x.shape[-1]
  cg = c // num_groups
  y = np.empty_like(x)
  for n in range(x.shape[0]):
    for g in range(num_groups):
      block = x[n, ..., g * cg : (g + 1) * cg]
      mu = block.mean()
      var = ((block - mu) ** 2).mean()
      y[n, ..., g * cg : (g + 1) * cg] = (block - mu) / np.sqrt(var + eps)
  if scale is not None:
    y = y * np.asarray(scale).reshape((1,) * (x.ndim - 1) + (c,))
  if bias is not None:
    y = y + np.asarray(bias).reshape((1,) * (x.ndim - 1) + (c,))
  return y


def lrn_loop(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
  """Local response norm, PyTorch's definition, channels last, one channel at a time.

  ``y_c = x_c / (k + alpha / size * sum_{c' in [c - size//2, c + (size-1)//2]} x_{c'}^2)^beta``.

  Example:
    >>> import numpy as np
    >>> from jaxconv.reference import lrn_loop
    >>> lrn_loop(np.array([[2.0, 1.0]]), size=1, alpha=1.0, beta=1.0)
    array([[0.4, 0.5]])
  """
  x = np.asarray(x, np.float64)
  c = x.shape[-1]
  y = np.empty_like(x)
  for ch in range(c):
    acc = np.zeros(x.shape[:-1])
    for cc in range(ch - size // 2, ch + (size - 1) // 2 + 1):
      if 0 <= cc < c:
        acc += x[..., cc] ** 2
    y[..., ch] = x[..., ch] / (k + alpha / size * acc) ** beta
  return y
