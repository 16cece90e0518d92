"""Feature visualization, the picture helpers, and the ``jaxconv viz`` report."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.models import create_model
from jaxconv.nn import Conv
from jaxconv.viz import (
    activation_maximization,
    default_layer,
    draw_box,
    feature_grid,
    kernel_grid,
    overlay,
    receptive_field_box,
)


class OneConv(nn.Module):
  """A single linear convolution: the channel's response to a unit-norm image is <kernel, image>."""

  @nn.compact
  def __call__(self, x, train=False):
    return Conv(4, 5, padding=0, name="conv")(x).mean((1, 2))


@pytest.fixture(scope="module")
def one_conv():
  model = OneConv()
  return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 5, 5, 3)))


def test_pixel_optimum_of_a_linear_layer_is_its_kernel(one_conv):
  model, variables = one_conv
  imgs = activation_maximization(model, variables, layer="conv", channel=[1, 2], key=jax.random.key(1), size=5,
                                 steps=200, parameterization="pixel", transforms=False, unit_norm=True)
  for img, c in zip(imgs, (1, 2)):
    k = np.asarray(variables["params"]["conv"]["kernel"][..., c])
    cosine = float((np.asarray(img) * k).sum() / np.linalg.norm(k) / np.linalg.norm(img))
    assert cosine >= 0.99
    np.testing.assert_allclose(np.linalg.norm(img), 1.0, rtol=1e-5)


def test_fourier_images_raise_the_channel_and_are_reproducible():
  model = create_model("small_cnn", widths=(8, 16), convs_per_stage=1, hidden=16, pool_size=2)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  layer = default_layer(model)
  kw = dict(layer=layer, channel=3, key=jax.random.key(2), size=28, channels=1)
  img = activation_maximization(model, variables, steps=48, **kw)
  assert img.shape == (28, 28, 1) and 0 <= float(img.min()) and float(img.max()) <= 1
  from jaxconv.viz import features
  compiled = features._maximize._cache_size()
  np.testing.assert_array_equal(img, activation_maximization(model, variables, steps=48, **kw))
  assert features._maximize._cache_size() == compiled  # the same settings reuse the compiled program

  from jaxconv.viz import intermediates
  start = activation_maximization(model, variables, steps=1, **kw)
  # Compiled once for both images (eagerly, the network would compile layer by layer).
  act = jax.jit(lambda v, x: intermediates(model, v, x[None], layer)[layer][..., 3].mean())
  assert float(act(variables, img)) > float(act(variables, start)) + 0.1
  # RGB: the colour decorrelation is applied (pixels of the three channels differ from the
  # undecorrelated image's), and the penalties and a partial transforms dict are accepted.
  rgb_vars = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  kw = dict(layer="conv1_1", channel=0, key=jax.random.key(3), size=16, channels=3, steps=4)
  rgb = activation_maximization(model, rgb_vars, l2=0.1, tv=0.1, transforms={"rotate": 5.0}, **kw)
  assert rgb.shape == (16, 16, 3) and 0 <= float(rgb.min()) and float(rgb.max()) <= 1
  param = features._init_param(jax.random.key(0), "pixel", 4, 3)
  plain = jax.nn.sigmoid(param)
  decorrelated = features._image(param, "pixel", 4, 3, unit_norm=False)
  np.testing.assert_allclose(decorrelated, jax.nn.sigmoid(param @ features._COLOR_SQRT.T), rtol=1e-6)
  assert not np.allclose(decorrelated, plain)


class ListWidths(nn.Module):
  """Widths in a list: the module cannot be hashed (nor be a static argument of jit)."""
  widths: list

  @nn.compact
  def __call__(self, x, train=False):
    for i, w in enumerate(self.widths):
      x = Conv(w, 3, name=f"conv{i}")(x)
    return x.mean((1, 2))


def test_an_unhashable_module_and_list_transforms():
  model = ListWidths([2, 3])
  with pytest.raises(TypeError):
    hash(model)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  kw = dict(layer="conv1", channel=2, key=jax.random.key(1), size=8, steps=2, transforms={"scale": [0.9, 1.1]})
  img = activation_maximization(model, variables, **kw)
  assert img.shape == (8, 8, 3)
  np.testing.assert_array_equal(img, activation_maximization(ListWidths((2, 3)), variables, **kw))
  from jaxconv.viz import grad_cam  # the CAMs compile the same way
  x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
  np.testing.assert_array_equal(grad_cam(model, variables, x, 1, layer="conv0"),
                                grad_cam(ListWidths((2, 3)), variables, x, 1, layer="conv0"))


def test_activation_maximization_bad_input(one_conv):
  model, variables = one_conv
  kw = dict(layer="conv", key=jax.random.key(0), size=5, steps=2)
  with pytest.raises(ValueError, match=r"channel must lie in \[0, 4\) for layer 'conv'"):
    activation_maximization(model, variables, channel=4, **kw)
  with pytest.raises(ValueError, match=r"parameterization must be one of fourier, pixel; got 'wavelet'"):
    activation_maximization(model, variables, channel=0, parameterization="wavelet", **kw)
  with pytest.raises(ValueError, match=r"transforms takes the keys \['jitter', 'pad', 'rotate', 'scale'\]"):
    activation_maximization(model, variables, channel=0, transforms={"shear": 1}, **kw)
  with pytest.raises(ValueError, match=r"no module at path\(s\) \['conv9'\]"):
    activation_maximization(model, variables, channel=0, **{**kw, "layer": "conv9"})


def test_picture_helpers():
  k = np.zeros((3, 3, 3, 2), np.float32)
  k[1, 1, 0, 0] = 2.0   # red centre
  grid = kernel_grid(k)
  assert grid.shape == (5, 9, 3)
  np.testing.assert_allclose(grid[2, 2], [1.0, 0.5, 0.5])   # +max -> 1, zero -> mid-grey
  assert kernel_grid(np.ones((3, 3, 4, 5))).shape == (5 * 4 + 1, 4 * 4 + 1)   # rows: out, cols: in
  f = feature_grid(np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3))
  assert f.shape == (7, 7) and f.min() == 0.0 and f.max() == 1.0
  heat = np.zeros((4, 4))
  heat[0, 0] = 1.0
  o = overlay(np.zeros((8, 8, 3)), heat, alpha=1.0)
  np.testing.assert_allclose(o[0, 0], [0.5, 0.0, 0.0])    # jet(1): dark red
  np.testing.assert_allclose(o[7, 7], [0.0, 0.0, 0.5])    # jet(0): dark blue
  boxed = draw_box(np.zeros((10, 10, 1)), (2, 3, 4, 5))
  assert boxed[2, 3:8, 0].tolist() == [1.0] * 5 and boxed[5, 3, 0] == 1.0 and boxed[3, 4, 0] == 0.0
  with pytest.raises(ValueError, match=r"fmap must be one image's feature maps \[h, w, C\]"):
    feature_grid(np.zeros((1, 2, 2, 3)))


def test_receptive_field_box_from_the_summary():
  model = create_model("lenet5")
  # LeNet-5 on 28x28: conv5 (pad 2), pool2, conv5, pool2 -> a pool2 unit sees 16x16 pixels, 4 apart.
  assert receptive_field_box(model, (28, 28, 1), "pool2", (0, 0)) == (-2, -2, 16, 16)
  assert receptive_field_box(model, (28, 28, 1), "pool2", (2, 1)) == (6, 2, 16, 16)
  with pytest.raises(ValueError, match=r"no layer 'conv9'"):
    receptive_field_box(model, (28, 28, 1), "conv9", (0, 0))


def test_viz_command_writes_a_report(tmp_path, capsys):
  from jaxconv.cli import main
  from jaxconv.train import TrainConfig, train

  train(TrainConfig(model="lenet5", dataset="digits", epochs=1, max_steps=20, workdir=str(tmp_path / "run"),
                    progress=False, plots=False))
  assert main(["viz", "--workdir", str(tmp_path / "run"), "--steps", "8", "--examples", "2", "--channels", "2"]) == 0
  index = tmp_path / "run" / "viz" / "index.html"
  text = index.read_text()
  for name in ("filters.png", "features-0-first.png", "features-9-layer.png", "attr-correct-0.png", "maximize-1.png"):
    assert (index.parent / name).stat().st_size > 100 and name in text
  err = capsys.readouterr().err
  assert "viz: activation maximization of 2 channels of pool2" in err
  assert main(["viz", "--workdir", str(tmp_path)]) == 2
  assert "is not a training run (no config.json)" in capsys.readouterr().err
  assert main(["viz", "--model", "resnet18"]) == 2
  assert "--model needs --weights" in capsys.readouterr().err


def test_shortcut_example_attribution_finds_the_mark(tmp_path):
  import importlib.util
  from pathlib import Path

  path = Path(__file__).resolve().parents[1] / "examples" / "shortcut.py"
  spec = importlib.util.spec_from_file_location("shortcut_example", path)
  shortcut = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(shortcut)
  r = shortcut.run(epochs=3, out=tmp_path, log=lambda m: None)
  share, clean, marked = r["region_share"], r["clean"], r["marked"]
  # The shortcut: clean 8s are lost, marked images of any class are taken for 8s.
  assert marked["clean_accuracy_of_class"] < 0.3 < clean["clean_accuracy_of_class"]
  assert marked["marked_accuracy_of_class"] > 0.95 and marked["other_classes_marked_taken_for_class"] > 0.3
  # Attribution puts its mass on the square: far above its share of the image and the clean model's.
  for method, factor in (("saliency", 2.5), ("integrated_gradients", 5.0), ("grad_cam", 1.5)):
    assert marked[f"mark_fraction_{method}"] > factor * share, method
    assert marked[f"mark_fraction_{method}"] > 1.5 * clean[f"mark_fraction_{method}"], method
  assert (tmp_path / "marked-attribution-0.png").exists()
