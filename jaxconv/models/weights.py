"""Weights from and to torchvision: checkpoints (``.pth``), ``.safetensors`` files and plain mappings.

Every zoo model with a torchvision counterpart (:data:`TORCHVISION_MODELS`) has a mapping from
torchvision's ``state_dict`` keys to its Flax variables, and back. The layouts differ in three
ways, all handled here:

- convolution weights ``[O, I/g, kh, kw]`` (OIHW) become kernels ``[kh, kw, I/g, O]`` (HWIO);
- linear weights ``[out, in]`` become kernels ``[in, out]``; the first fully connected layer
  after a flatten (AlexNet, VGG, GoogLeNet's auxiliary heads) also reorders its inputs from
  PyTorch's ``(C, H, W)`` flatten order to the channels-last ``(H, W, C)`` one;
- batch norm ``weight, bias, running_mean, running_var`` become ``params/{scale, bias}`` and
  ``batch_stats/{mean, var}`` (``num_batches_tracked`` is dropped; it only matters to PyTorch's
  cumulative-average mode, which torchvision does not use).

With those, ``model.apply(variables, x_nhwc)`` equals torchvision's eval-mode output on the
same image in NCHW to float32 rounding (tests/test_weights.py checks the logits of every model
but the deeper ResNets and DenseNets, which repeat their family's blocks, and the weights of all 21).

Example:
  >>> import numpy as np, jax.numpy as jnp
  >>> from jaxconv.models import create_model, load_torchvision, torchvision_state_dict
  >>> import jax
  >>> model = create_model("squeezenet1_1", num_classes=3)
  >>> variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  >>> state = torchvision_state_dict("squeezenet1_1", variables)
  >>> state["features.0.weight"].shape                     # torchvision's OIHW layout
  (64, 3, 3, 3)
  >>> model2, variables2 = load_torchvision("squeezenet1_1", state)
  >>> model2.num_classes
  3
  >>> jax.tree.all(jax.tree.map(np.array_equal, variables, variables2))   # the same values, exactly
  True
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models._registry import create_model

logger = logging.getLogger("jaxconv")

TORCHVISION_MODELS = (
    "alexnet",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "googlenet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "densenet121", "densenet169", "densenet201",
    "mobilenet_v2",
    "squeezenet1_0", "squeezenet1_1",
)
"""Zoo names whose torchvision model has the same architecture and can exchange weights."""

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
"""File suffixes :func:`read_state_dict` reads (``.safetensors`` without PyTorch)."""

# torchvision's published GoogLeNet ImageNet file; its weights expect ``transform_input=True``.
_GOOGLENET_PUBLISHED = "googlenet-1378be20"

Source = Union[str, os.PathLike, Mapping[str, Any]]


# ---------------------------------------------------------------------------------------------
# Reading and writing state dicts
# ---------------------------------------------------------------------------------------------


def read_state_dict(source: Source) -> dict[str, np.ndarray]:
  """A torchvision-style state dict as NumPy arrays, from a file or a mapping.

  Args:
    source: a ``.safetensors`` file (read with the ``safetensors`` package, no PyTorch needed);
      a ``.pth``/``.pt``/``.bin`` file written by ``torch.save(model.state_dict())`` (read with
      ``torch.load(..., weights_only=True)``, which never unpickles arbitrary objects); or a
      mapping of names to arrays or tensors. A checkpoint that wraps the state dict under
      ``"state_dict"`` or ``"model"``, or whose keys all start with ``"module."`` (saved from
      ``DataParallel``), is unwrapped.

  Returns:
    ``{key: np.ndarray}`` in the checkpoint's own (PyTorch) layouts.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: an unknown suffix, or content that is not a mapping of names to tensors.
    ImportError: a ``.pth`` file without PyTorch installed, or ``.safetensors`` without
      ``safetensors``.
  """
  if isinstance(source, Mapping):
    return _unwrap(source, "the mapping given")
  if not isinstance(source, (str, os.PathLike)):
    raise TypeError(f"source must be a path to a {'/'.join(WEIGHT_SUFFIXES)} file or a mapping of "
                    f"names to arrays; got {type(source).__name__}.")
  path = Path(source)
  if not path.is_file():
    raise FileNotFoundError(f"no weights file at {str(path)!r}.")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - safetensors is a dependency
      raise ImportError("reading .safetensors needs the safetensors package: pip install safetensors") from e
    return _unwrap(load_file(str(path)), str(path))
  if suffix in (".pth", ".pt", ".bin"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(
          f"reading {path.name} (a PyTorch checkpoint) needs PyTorch: pip install torch "
          "(the CPU build is enough), or convert it to .safetensors where PyTorch is installed "
          "(jaxconv convert NAME IN.pth OUT.safetensors)."
      ) from e
    try:
      obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
      raise ValueError(f"cannot read {str(path)!r} as a PyTorch state dict (weights_only=True): "
                       f"{str(e).splitlines()[0]}") from e
    return _unwrap(obj, str(path))
  raise ValueError(f"unknown weights file suffix {path.suffix!r} in {str(path)!r}; "
                   f"accepted: {', '.join(WEIGHT_SUFFIXES)}.")


def _unwrap(obj: Any, where: str) -> dict[str, np.ndarray]:
  if isinstance(obj, Mapping) and len(obj) == 1:
    (only,) = obj
    if only in ("state_dict", "model") and isinstance(obj[only], Mapping):
      obj = obj[only]
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f"{where} holds no state dict (a non-empty mapping of names to tensors); "
                     f"got {type(obj).__name__}.")
  out = {}
  for k, v in obj.items():
    if not isinstance(k, str):
      raise ValueError(f"{where}: state dict keys must be strings; got {k!r}.")
    if hasattr(v, "detach"):  # a torch.Tensor
      v = v.detach().cpu().numpy()
    try:
      out[k] = np.asarray(v)
    except Exception as e:
      raise ValueError(f"{where}: {k!r} is not an array or tensor ({type(v).__name__}).") from e
    if out[k].dtype == object:
      raise ValueError(f"{where}: {k!r} is not an array or tensor ({type(v).__name__}).")
  if all(k.startswith("module.") for k in out):
    out = {k[len("module."):]: v for k, v in out.items()}
  return out


def write_state_dict(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
  """Writes a state dict as ``.safetensors`` (no PyTorch needed) or ``.pth`` (``torch.save``).

  The file is written next to its destination and renamed into place, so a failure never
  leaves a partial file under ``path``.
  """
  path = Path(path)
  suffix = path.suffix.lower()
  arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state.items()}
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  if suffix == ".safetensors":
    from safetensors.numpy import save_file
    save_file(arrays, str(tmp))
  elif suffix in (".pth", ".pt"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"writing {path.name} needs PyTorch (pip install torch); "
                        "write .safetensors instead.") from e
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, str(tmp))
  else:
    raise ValueError(f"unknown weights file suffix {path.suffix!r} for {str(path)!r}; "
                     "write .safetensors, .pth or .pt.")
  os.replace(tmp, path)
  return path


# ---------------------------------------------------------------------------------------------
# The key mapping: Flax module path -> torchvision module prefix, per family
# ---------------------------------------------------------------------------------------------

# Layer kinds, from the leaves of a Flax module.
_CONV, _LINEAR, _BN = "conv", "linear", "bn"


def _modules(variables: Mapping[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
  """``{module path: {"kind", "params", "stats"}}`` for every conv, dense and norm layer."""
  found: dict[tuple[str, ...], dict[str, Any]] = {}

  def walk(tree, path, collection):
    for key, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, path + (key,), collection)
      else:
        entry = found.setdefault(path, {"params": {}, "stats": {}})
        entry["params" if collection == "params" else "stats"][key] = value

  walk(variables.get("params", {}), (), "params")
  walk(variables.get("batch_stats", {}), (), "batch_stats")
  for path, entry in found.items():
    p = entry["params"]
    if "kernel" in p:
      entry["kind"] = _CONV if len(_shape(p["kernel"])) == 4 else _LINEAR
    elif "scale" in p or "mean" in entry["stats"]:
      entry["kind"] = _BN
    else:
      raise ValueError(f"the variables hold a layer {'/'.join(path)!r} with leaves "
                       f"{sorted(p) + sorted(entry['stats'])}, which no torchvision layer has.")
  return found


def _seq_rename(table: Mapping[str, str]) -> Callable[[tuple[str, ...]], str]:
  def rename(path: tuple[str, ...]) -> str:
    return table["/".join(path)]
  return rename


def _resnet_names(paths) -> Callable[[tuple[str, ...]], str]:
  fixed = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc",
           "downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}

  def rename(path):
    if len(path) == 1:
      return fixed[path[0]]
    stage, block = re.fullmatch(r"stage(\d+)_block(\d+)", path[0]).groups()
    return f"layer{stage}.{int(block) - 1}.{fixed.get(path[1], path[1])}"
  return rename


def _densenet_names(paths) -> Callable[[tuple[str, ...]], str]:
  fixed = {"stem_conv": "features.conv0", "stem_bn": "features.norm0", "final_bn": "features.norm5",
           "head": "classifier"}

  def rename(path):
    if len(path) == 1:
      return fixed[path[0]]
    if path[0].startswith("transition"):
      return f"features.{path[0]}.{ {'bn': 'norm', 'conv': 'conv'}[path[1]] }"
    block = path[0][len("block"):]
    layer = path[1][len("layer"):]
    return f"features.denseblock{block}.denselayer{layer}.{path[2].replace('bn', 'norm')}"
  return rename


def _googlenet_names(paths) -> Callable[[tuple[str, ...]], str]:
  branches = {"branch1": "branch1", "branch2_reduce": "branch2.0", "branch2": "branch2.1",
              "branch3_reduce": "branch3.0", "branch3": "branch3.1", "branch4": "branch4.1"}

  def rename(path):
    if path == ("head",):
      return "fc"
    m = re.fullmatch(r"(aux\d)_(conv|fc1|fc2)", path[0])
    if m:
      aux, part = m.groups()
      return f"{aux}.conv.{path[1]}" if part == "conv" else f"{aux}.{part}"
    if path[0].startswith("inception"):
      return f"{path[0]}.{branches[path[1]]}.{path[2]}"
    return f"{path[0]}.{path[1]}"   # conv1..3/{conv, bn}
  return rename


def _mobilenet_names(paths) -> Callable[[tuple[str, ...]], str]:
  blocks = sorted({p[0] for p in paths if p[0].startswith("stage")},
                  key=lambda b: tuple(int(i) for i in re.findall(r"\d+", b)))
  index = {b: i + 1 for i, b in enumerate(blocks)}
  expands = {p[0] for p in paths if len(p) > 1 and p[1] == "expand"}
  sub = {"conv": "0", "bn": "1"}

  def rename(path):
    if path == ("head",):
      return "classifier.1"
    if path[0] == "stem":
      return f"features.0.{sub[path[1]]}"
    if path[0] == "final_conv":
      return f"features.{len(blocks) + 1}.{sub[path[1]]}"
    i, has_expand = index[path[0]], path[0] in expands
    part, layer = path[1], path[2]
    if part == "project":   # a bare conv then a norm inside the block's Sequential
      j = (2 if has_expand else 1) + (layer == "bn")
      return f"features.{i}.conv.{j}"
    j = {"expand": 0, "depthwise": 1 if has_expand else 0}[part]
    return f"features.{i}.conv.{j}.{sub[layer]}"
  return rename


def _squeezenet_names(version: str) -> Callable[[tuple[str, ...]], str]:
  fires = {"1_0": (3, 4, 5, 7, 8, 9, 10, 12), "1_1": (3, 4, 6, 7, 9, 10, 11, 12)}[version]

  def rename(path):
    if path == ("stem_conv",):
      return "features.0"
    if path == ("head",):
      return "classifier.1"
    return f"features.{fires[int(path[0][len('fire'):]) - 1]}.{path[1]}"
  return rename


def _alexnet_names(paths) -> Callable[[tuple[str, ...]], str]:
  return _seq_rename({"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
                      "conv4": "features.8", "conv5": "features.10", "fc1": "classifier.1",
                      "fc2": "classifier.4", "head": "classifier.6"})


def _vgg_names(config, batch_norm: bool) -> Callable[[tuple[str, ...]], str]:
  table = {"fc1": "classifier.0", "fc2": "classifier.3", "head": "classifier.6"}
  index, stage, layer = 0, 1, 1
  for v in config:   # torchvision's ``features``: conv, [bn], relu per entry; a pool per "M"
    if v == "M":
      index, stage, layer = index + 1, stage + 1, 1
      continue
    table[f"conv{stage}_{layer}"] = f"features.{index}"
    if batch_norm:
      table[f"bn{stage}_{layer}"] = f"features.{index + 1}"
    index += 3 if batch_norm else 2
    layer += 1
  return _seq_rename(table)


def _family(name: str, model) -> tuple[Callable, dict[str, int]]:
  """(rename for module paths, {module path: spatial size of a CHW flatten before it})."""
  if name.startswith("resnet"):
    return _resnet_names, {}
  if name.startswith("densenet"):
    return _densenet_names, {}
  if name == "googlenet":
    return _googlenet_names, {"aux1_fc1": 4, "aux2_fc1": 4}
  if name == "mobilenet_v2":
    return _mobilenet_names, {}
  if name.startswith("squeezenet"):
    return (lambda paths: _squeezenet_names(model.version)), {}
  if name == "alexnet":
    return _alexnet_names, {"fc1": model.pool_size}
  if name.startswith("vgg"):
    return (lambda paths: _vgg_names(model.config, model.batch_norm)), {"fc1": model.pool_size}
  raise AssertionError(name)


# ---------------------------------------------------------------------------------------------
# Leaf layouts
# ---------------------------------------------------------------------------------------------


def _leaf_keys(kind: str, entry: dict) -> list[tuple[str, str, str]]:
  """``(torch suffix, collection, flax leaf)`` for one layer."""
  if kind == _BN:
    keys = []
    if "scale" in entry["params"]:
      keys.append(("weight", "params", "scale"))
    if "bias" in entry["params"]:
      keys.append(("bias", "params", "bias"))
    return keys + [("running_mean", "batch_stats", "mean"), ("running_var", "batch_stats", "var")]
  keys = [("weight", "params", "kernel")]
  if "bias" in entry["params"]:
    keys.append(("bias", "params", "bias"))
  return keys


def _to_flax(value: np.ndarray, kind: str, leaf: str, chw: Optional[int]) -> np.ndarray:
  """The Flax leaf, always in a new buffer: ``jnp.asarray`` may adopt it without a copy (``_ALIGN``),
  and the loaded variables must not share memory with the checkpoint's tensors."""
  if leaf != "kernel":
    return _copy(value)
  if kind == _CONV:   # [O, I, kh, kw] -> [kh, kw, I, O]
    return _relayout(value, value.shape, (2, 3, 1, 0), None)
  if chw:   # [out, C*H*W] (PyTorch's flatten order) -> [H*W*C, out]
    out, c = value.shape[0], value.shape[1] // (chw * chw)
    return _relayout(value, (out, c, chw, chw), (2, 3, 1, 0), (-1, out))
  return _relayout(value, value.shape, (1, 0), None)


def _to_torch(value: np.ndarray, kind: str, leaf: str, chw: Optional[int]) -> np.ndarray:
  if leaf != "kernel":
    return value
  if kind == _CONV:
    return _relayout(value, value.shape, (3, 2, 0, 1), None)
  if chw:
    out, c = value.shape[1], value.shape[0] // (chw * chw)
    return _relayout(value, (chw, chw, c, out), (3, 2, 0, 1), (out, -1))
  return _relayout(value, value.shape, (1, 0), None)


# Rows of O per block of the transpose: 128 rows of a VGG classifier weight (25088 floats each) is
# 12 MB read in rows and written in 512-byte runs, which keeps the writes in cache. Measured with
# NumPy 2.x on a shared 2-core Xeon, VGG's 400 MB first classifier weight ([4096, 512*7*7] ->
# [7*7*512, 4096]): 3.3 s as one strided NumPy transpose, 3.2 s in XLA, 0.6 s in blocks. The
# reordering of the other axes (C, H, W -> H, W, C) is gathered block by block, not a second pass
# through a second 400 MB array (medians of 18, interleaved: the same 0.6 s, which that pass made
# 2-3.5 s in a third of the runs; back to [4096, 512*7*7]: 1.7-1.9 s -> 0.43 s).
_BLOCK_ROWS = 128
# XLA:CPU adopts a NumPy buffer that starts on a 64-byte boundary instead of copying it
# (``jnp.asarray``): a VGG weight is then not copied again after its relayout.
_ALIGN = 64


def _relayout(value: np.ndarray, shape: tuple, perm: tuple, out_shape: Optional[tuple]) -> np.ndarray:
  """``value.reshape(shape).transpose(perm)[.reshape(out_shape)]``, contiguous, in a new buffer.

  The layouts here move the first axis last (PyTorch's ``[O, ...]`` to ``[..., O]``) or the last
  axis first. Either is a 2-D transpose between ``[O, rest]`` and ``[rest', O]`` (``rest'`` the
  other axes reordered), done a block of ``_BLOCK_ROWS`` rows at a time; each block is reordered
  (a gather of whole rows or columns) while it is in cache, so the array is read and written once.
  """
  x = np.asarray(value).reshape(shape)
  y = _empty([shape[p] for p in perm], x.dtype)
  b = _BLOCK_ROWS
  if perm[-1] == 0:        # [O, rest...] -> [rest reordered..., O]
    o = shape[0]
    order = np.arange(x[0].size).reshape(shape[1:]).transpose([p - 1 for p in perm[:-1]]).ravel()
    x2, y2 = x.reshape(o, -1), y.reshape(-1, o)
    keep = bool((order == np.arange(order.size)).all())
    for i in range(0, o, b):
      y2[:, i:i + b] = (x2[i:i + b] if keep else x2[i:i + b].take(order, axis=1)).T
  else:                    # perm[0] == last: [rest..., O] -> [O, rest reordered...]
    o = shape[-1]
    order = np.arange(x[..., 0].size).reshape(shape[:-1]).transpose(perm[1:]).ravel()
    x2, y2 = x.reshape(-1, o), y.reshape(o, -1)
    keep = bool((order == np.arange(order.size)).all())
    for j in range(0, order.size, b):
      y2[:, j:j + b] = (x2[j:j + b] if keep else x2.take(order[j:j + b], axis=0)).T
  return y if out_shape is None else y.reshape(out_shape)


def _empty(shape, dtype) -> np.ndarray:
  """``np.empty(shape, dtype)`` starting on a ``_ALIGN``-byte boundary."""
  dtype = np.dtype(dtype)
  size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(size + _ALIGN, np.uint8)
  start = -raw.ctypes.data % _ALIGN
  return raw[start:start + size].view(dtype).reshape(shape)


def _copy(value: np.ndarray) -> np.ndarray:
  """A copy of ``value`` in a buffer of its own (``_empty``)."""
  value = np.asarray(value)
  out = _empty(value.shape, value.dtype)
  out[...] = value
  return out


def _torch_shape(shape: tuple, kind: str, leaf: str, chw: Optional[int]) -> tuple:
  """The shape torchvision stores for a Flax leaf of ``shape``."""
  if leaf != "kernel":
    return tuple(shape)
  if kind == _CONV:
    kh, kw, i, o = shape
    return (o, i, kh, kw)
  return tuple(shape[::-1])


def _layout(name: str, model, variables) -> list[tuple[str, tuple[str, ...], str, str, str, Optional[int], tuple]]:
  """Every leaf: ``(torch key, module path, collection, flax leaf, kind, chw, flax shape)``."""
  modules = _modules(variables)
  make_rename, chw_sizes = _family(name, model)
  rename = make_rename(list(modules))
  rows = []
  for path, entry in modules.items():
    prefix = rename(path)
    chw = chw_sizes.get("/".join(path))
    for suffix, collection, leaf in _leaf_keys(entry["kind"], entry):
      value = entry["params" if collection == "params" else "stats"][leaf]
      rows.append((f"{prefix}.{suffix}", path, collection, leaf, entry["kind"], chw, _shape(value)))
  return rows


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _check_name(name: Any) -> str:
  if name not in TORCHVISION_MODELS:
    raise ValueError(f"{name!r} has no torchvision counterpart to exchange weights with; choose one of "
                     f"{', '.join(TORCHVISION_MODELS)}.")
  return name


def _classifier_prefixes(name: str) -> tuple[str, ...]:
  """torchvision module prefixes whose shape follows ``num_classes`` (the main classifier first)."""
  if name == "googlenet":
    return ("fc", "aux1.fc2", "aux2.fc2")
  if name.startswith("resnet"):
    return ("fc",)
  if name.startswith("densenet"):
    return ("classifier",)
  if name == "mobilenet_v2" or name.startswith("squeezenet"):
    return ("classifier.1",)
  return ("classifier.6",)   # alexnet, vgg


def _num_classes_of(name: str, state: Mapping[str, np.ndarray]) -> Optional[int]:
  w = state.get(f"{_classifier_prefixes(name)[0]}.weight")
  return None if w is None else int(np.shape(w)[0])


def guess_architecture(state: Mapping[str, Any]) -> Optional[str]:
  """The torchvision model a state dict most likely belongs to, from its keys and shapes.

  Used to explain a mismatch ("this looks like a resnet50 checkpoint"); ``None`` if unknown.
  """
  keys = set(state)

  def count(pattern):
    return len({m.group(1) for k in keys if (m := re.match(pattern, k))})

  if "layer1.0.conv1.weight" in keys:
    deep = "layer1.0.conv3.weight" in keys
    table = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50 if deep else 34, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
    sizes = tuple(count(rf"layer{i}\.(\d+)\.conv1\.weight") for i in range(1, 5))
    depth = table.get(sizes)
    return f"resnet{depth}" if depth else None
  if any(k.startswith("features.denseblock") for k in keys):
    layers = count(r"features\.denseblock3\.denselayer(\d+)\.")
    return {24: "densenet121", 32: "densenet169", 48: "densenet201"}.get(layers)
  if "inception3a.branch1.conv.weight" in keys:
    return "googlenet"
  if "features.1.conv.0.0.weight" in keys:
    return "mobilenet_v2"
  if "features.3.squeeze.weight" in keys:
    stem = np.shape(state.get("features.0.weight", ()))
    return "squeezenet1_0" if stem[-1:] == (7,) else "squeezenet1_1"
  if "classifier.6.weight" in keys:
    convs = [k for k in keys if re.fullmatch(r"features\.\d+\.weight", k) and np.ndim(state[k]) == 4]
    if np.shape(state.get("features.0.weight", ()))[-1:] == (11,):
      return "alexnet"
    depth = {8: 11, 10: 13, 13: 16, 16: 19}.get(len(convs))
    bn = any(k.endswith("running_mean") for k in keys)
    return f"vgg{depth}{'_bn' if bn else ''}" if depth else None
  return None


def _init(model, k, x):
  return model.init(k, x, train=False)


# The model as a static argument: JAX's trace cache then keeps one trace per configuration, and
# loading the same model again (another checkpoint, a file after a mapping) does not trace it again.
_init_shapes = jax.jit(_init, static_argnums=0)


def _template(model, in_channels: int = 3):
  """The model's variables as shapes and dtypes only (tracing, no compute)."""
  x = jax.ShapeDtypeStruct((1, 224, 224, in_channels), jnp.float32)
  try:
    hash(model)
  except TypeError:   # an option that is a list, a dict, ...: not a static argument
    return jax.eval_shape(functools.partial(_init, model), jax.random.key(0), x)
  return _init_shapes.eval_shape(model, jax.random.key(0), x)


def load_torchvision(name: str, source: Source, *, num_classes: Optional[int] = None,
                     in_channels: int = 3, key: Optional[jax.Array] = None, **model_kwargs: Any):
  """A zoo model and its variables from a torchvision checkpoint.

  ``model.apply(variables, x, train=False)`` with ``x [N, H, W, 3]`` equals torchvision's
  eval-mode ``model(x.transpose(0, 3, 1, 2))`` to float32 rounding.

  Args:
    name: one of :data:`TORCHVISION_MODELS` (the same name as the torchvision builder).
    source: a ``.pth``/``.pt`` file (``torch.save(model.state_dict())`` or torchvision's
      published files; needs PyTorch), a ``.safetensors`` file (no PyTorch needed), or a mapping
      of names to arrays or tensors (see :func:`read_state_dict`).
    num_classes: classifier outputs. ``None`` takes the checkpoint's. A different number is the
      fine-tuning case: every weight but the classifier's is loaded, the classifier is freshly
      initialised from ``key``, and a message (the ``jaxconv`` logger, level WARNING) names the
      keys left out.
    in_channels: 3 (RGB, as the checkpoints) or 1: for grayscale input, the first convolution's
      kernel is summed over its RGB inputs, so the model sees a gray image exactly as the RGB
      image with three equal channels (timm's ``in_chans=1``).
    key: PRNG key for a fresh classifier; default ``jax.random.key(0)``.
    **model_kwargs: options of the zoo model (``dtype``, ``param_dtype``, ``axis_name``, ...).
      For ``googlenet``: ``aux_logits=True`` loads the auxiliary classifiers too (otherwise their
      weights are dropped, as torchvision does); ``transform_input`` defaults to ``True`` only
      for torchvision's published ImageNet file (``googlenet-1378be20.pth``, whose weights
      expect it, as ``torchvision.models.googlenet(weights=...)`` sets it) and ``False``
      otherwise (torchvision's default).

  Returns:
    ``(model, variables)`` with ``variables = {"params", "batch_stats"}`` as NumPy-backed
    ``jax.Array`` leaves in the model's ``param_dtype``.

  Raises:
    ValueError: an unknown name; keys the model needs that the checkpoint lacks, keys it has
      that the model does not use, or a shape that does not fit (naming the key, both shapes,
      and the architecture the checkpoint looks like).

  Example:
    >>> from jaxconv.models import load_torchvision
    >>> model, variables = load_torchvision("resnet18", "resnet18-f37072fd.pth")  # doctest: +SKIP
  """
  _check_name(name)
  if in_channels not in (1, 3):
    raise ValueError(f"in_channels must be 3 (RGB) or 1 (grayscale); got {in_channels!r}.")
  state = read_state_dict(source)
  if name.startswith("densenet"):
    state = _densenet_legacy_keys(state)
  if name == "googlenet" and "transform_input" not in model_kwargs:
    published = not isinstance(source, Mapping) and Path(source).name.startswith(_GOOGLENET_PUBLISHED)
    model_kwargs["transform_input"] = published
  in_checkpoint = _num_classes_of(name, state)
  if num_classes is None:
    num_classes = in_checkpoint if in_checkpoint is not None else 1000
  model = create_model(name, num_classes=num_classes, **model_kwargs)
  template = _template(model, in_channels)
  rows = _layout(name, model, template)

  fresh_prefixes = ()
  if in_checkpoint is not None and in_checkpoint != num_classes:
    fresh_prefixes = _classifier_prefixes(name)
  fresh_rows = [r for r in rows if r[0].rsplit(".", 1)[0] in fresh_prefixes]
  load_rows = [r for r in rows if r not in fresh_rows]

  used = {r[0] for r in rows}
  ignorable = {k for k in state if k.endswith("num_batches_tracked")}
  if name == "googlenet" and not model.aux_logits:
    ignorable |= {k for k in state if k.startswith(("aux1.", "aux2."))}
  _check_keys(name, state, [r[0] for r in load_rows], set(state) - used - ignorable)

  variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
  for torch_key, path, collection, leaf, kind, chw, shape in load_rows:
    value = state[torch_key]
    expected = _torch_shape(shape, kind, leaf, chw)
    if in_channels == 1 and kind == _CONV and leaf == "kernel" and value.shape[1:2] == (3,) and \
        expected == (value.shape[0], 1, *value.shape[2:]):
      value = value.sum(axis=1, keepdims=True)   # gray x as RGB (x, x, x): sum_c W_c * x
    if tuple(value.shape) != expected:
      raise ValueError(_shape_message(name, state, torch_key, value.shape, expected))
    dtype = _leaf_dtype(template, collection, path, leaf)
    _set(variables[collection], path + (leaf,), jnp.asarray(_to_flax(value, kind, leaf, chw), dtype))

  if fresh_rows:
    fresh = _fresh_leaves(model, key, [(r[2], r[1], r[3]) for r in fresh_rows])
    for (collection, path, leaf), value in fresh.items():
      _set(variables[collection], path + (leaf,), value)
    left = sorted({r[0] for r in fresh_rows if r[0] in state})
    logger.warning("load_torchvision(%r): num_classes=%d differs from the checkpoint's %d; left out %s "
                   "and initialised the classifier afresh.", name, num_classes, in_checkpoint,
                   ", ".join(left))
  if not variables["batch_stats"]:
    del variables["batch_stats"]
  return model, variables


def torchvision_state_dict(name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A zoo model's variables as torchvision's ``state_dict`` (NumPy arrays, PyTorch layouts).

  The inverse of :func:`load_torchvision`:
  ``torch_model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)``
  loads it into ``torchvision.models.<name>(num_classes=...)`` (for ``googlenet``, build it with
  ``aux_logits`` as the jaxconv model had it). Batch norms get ``num_batches_tracked = 0``.

  Args:
    name: one of :data:`TORCHVISION_MODELS`.
    variables: ``{"params", "batch_stats"}`` of ``create_model(name, ...)``.

  Returns:
    ``{key: np.ndarray}`` with the keys of torchvision's ``state_dict``.
  """
  _check_name(name)
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise TypeError("variables must be the model's {'params', 'batch_stats'} mapping; got "
                    f"{type(variables).__name__}" + (f" with keys {sorted(variables)}" if isinstance(variables, Mapping) else "") + ".")
  model = _model_for(name, variables)
  try:
    rows = _layout(name, model, variables)
  except (KeyError, AttributeError, ValueError) as e:
    raise ValueError(f"the variables do not look like a {name} model's ({e}).") from None
  state: dict[str, np.ndarray] = {}
  for torch_key, path, collection, leaf, kind, chw, _ in rows:
    value = np.asarray(jax.device_get(_get(variables[collection], path + (leaf,))))
    # A writable array of its own (torch.as_tensor warns on read-only memory): a relayout
    # (kernels) writes a new one; other leaves are copied.
    out = _to_torch(value, kind, leaf, chw)
    state[torch_key] = out if leaf == "kernel" else np.array(out)
    if kind == _BN and leaf == "var":
      state[torch_key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.array(0, np.int64)
  return state


def _model_for(name: str, variables: Mapping[str, Any]):
  """The zoo model that the variables' layout needs (pool sizes for the CHW flatten, versions)."""
  head = variables["params"].get("head", {})
  kernel = head.get("kernel") if isinstance(head, Mapping) else None
  kw: dict[str, Any] = {}
  if kernel is not None:
    kw["num_classes"] = int(np.shape(kernel)[-1])
  if name == "alexnet" or name.startswith("vgg"):
    fc1 = variables["params"].get("fc1", {}).get("kernel")
    if fc1 is not None:
      hidden = int(np.shape(fc1)[1])
      pool = int(round((np.shape(fc1)[0] / (256 if name == "alexnet" else 512)) ** 0.5))
      kw.update(hidden=hidden, pool_size=pool)
  return create_model(name, **kw)


def _check_keys(name: str, state, needed: list[str], unexpected: set[str]) -> None:
  missing = [k for k in needed if k not in state]
  if not missing and not unexpected:
    return
  parts = []
  if missing:
    parts.append(f"missing {len(missing)} key(s) the model needs: {_few(missing)}")
  if unexpected:
    parts.append(f"{len(unexpected)} key(s) the model does not use: {_few(sorted(unexpected))}")
  raise ValueError(f"the checkpoint does not fit {name}: " + "; ".join(parts) + "." + _hint(name, state))


def _shape_message(name, state, key, got, expected) -> str:
  return (f"the checkpoint does not fit {name}: {key!r} has shape {tuple(got)}, the model needs "
          f"{tuple(expected)} (PyTorch layout).{_hint(name, state)}")


def _hint(name: str, state) -> str:
  guess = guess_architecture(state)
  if guess and guess != name:
    return f" It looks like a {guess} checkpoint given for {name}."
  return " Are the model options (width, num_classes, ...) those the checkpoint was trained with?"


# torchvision's published DenseNet files predate its current module names: ``norm.1`` for
# ``norm1`` inside each dense layer. torchvision renames them on load; so does this.
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _densenet_legacy_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for k, v in state.items():
    m = _DENSENET_LEGACY.match(k)
    out[m.group(1) + m.group(2) if m else k] = v
  return out


def _few(keys: list[str], n: int = 6) -> str:
  return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _fresh_leaves(model, key, wanted: list[tuple[str, tuple[str, ...], str]]) -> dict:
  """Initial values of only the ``wanted`` leaves: XLA drops the rest of ``init`` as dead code."""
  x = jnp.zeros((1, 224, 224, 3), jnp.float32)
  key = jax.random.key(0) if key is None else key

  def init(k):
    v = model.init(k, x, train=False)
    return {w: _get(v[w[0]], w[1] + (w[2],)) for w in wanted}

  return jax.jit(init)(key)


def _leaf_dtype(template, collection, path, leaf):
  return _get(template[collection], path + (leaf,)).dtype


def _shape(value) -> tuple:
  """The shape of an array, a tensor or a ``jax.ShapeDtypeStruct``."""
  return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value
