"""Attribution and CAMs against Captum and pytorch-grad-cam, on the same networks in both frameworks.

The networks are torchvision's SqueezeNet 1.1 and ResNet-18 with random weights, imported with
``load_torchvision`` (itself checked against torchvision in tests/test_weights.py), so both
frameworks compute the same function and the attributions must agree to float32 rounding.
"""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py: why one thread
if importlib.util.find_spec("captum") is None:  # imported by the fixture below, when a test needs it
  pytest.skip("could not import 'captum'", allow_module_level=True)

from test_weights import random_torch_model  # noqa: E402

from jaxconv.models import load_torchvision  # noqa: E402
from jaxconv.viz import (  # noqa: E402
    IG_METHODS,
    grad_cam,
    grad_cam_plus_plus,
    ig_steps,
    integrated_gradients,
    intermediates,
    occlusion,
    saliency,
    smoothgrad,
)
from helpers import OPTIMIZED, normal  # noqa: E402


@pytest.fixture(scope="module")
def captum_attr():
  """Captum's attribution module, imported by the first test that uses it (0.6 s), not when the
  module is collected (by every worker of a parallel run); the module is skipped above without it."""
  import captum.attr

  return captum.attr


@pytest.fixture(scope="module")
def squeeze(tvm):
  # Ten classes: every layer is in the gradients all the same (the head is a 1x1 convolution
  # either way), and in the loops of the integrals (16-200 gradients each) the backward pass of
  # a 1000-class head takes a third of the time.
  tmodel = random_torch_model(tvm, "squeezenet1_1", seed=2, num_classes=10)
  model, variables = load_torchvision("squeezenet1_1", tmodel.state_dict(), num_classes=None)
  x = np.random.default_rng(0).normal(size=(2, 48, 48, 3)).astype(np.float32)
  return tmodel, model, variables, x


@pytest.fixture(scope="module")
def jitted_saliency(squeeze):
  """``saliency`` of SqueezeNet, compiled once for ``(variables, x [2, 48, 48, 3], target [2])``:
  the targets are arguments, so the Captum check and the SmoothGrad reference share the program."""
  _, model, _, _ = squeeze
  return jax.jit(lambda v, x, t: saliency(functools.partial(model.apply, v), x, t))


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).requires_grad_()


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def close(got, want, tol=2e-4):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  assert np.abs(want).max() > 0, "the reference is all zeros: a dead target proves nothing"
  assert np.abs(got - want).max() <= tol * np.abs(want).max(), np.abs(got - want).max() / np.abs(want).max()


# Live targets, one per image: SqueezeNet ends in a ReLU, and a class whose logit it zeroes (for
# the image and the baselines; class 4 here) has an all-zero attribution in both frameworks.
TARGET = [5, 0]


# The jitted checks take the variables as arguments: closed over, they would be constants folded
# into every compiled program, which makes each compile slower.


def test_saliency_matches_captum(squeeze, jitted_saliency, captum_attr):
  tmodel, model, variables, x = squeeze
  fn = functools.partial(model.apply, variables)
  want = captum_attr.Saliency(tmodel).attribute(nchw(x), target=TARGET)
  close(jitted_saliency(variables, x, np.array(TARGET)), nhwc(want))
  signed = captum_attr.Saliency(tmodel).attribute(nchw(x), target=TARGET, abs=False)
  close(saliency(fn, x, jnp.array(TARGET), abs=False), nhwc(signed))


@pytest.fixture(scope="module")
def squeeze_fn(squeeze):
  """SqueezeNet's ``x -> logits``, one function object for the module: the attribution functions
  compile once per ``fn`` (by identity), so the integrated-gradients checks share one program."""
  _, model, variables, _ = squeeze
  return functools.partial(model.apply, variables)


@pytest.mark.parametrize("method", IG_METHODS)
def test_integrated_gradients_matches_captum_for_every_method(squeeze, squeeze_fn, captum_attr, method):
  tmodel, _, _, x = squeeze
  baseline = np.full_like(x, 0.1)
  want, want_delta = captum_attr.IntegratedGradients(tmodel).attribute(
      nchw(x), baselines=nchw(baseline), target=TARGET, n_steps=16, method=method, return_convergence_delta=True)
  got, delta = integrated_gradients(squeeze_fn, x, jnp.array(TARGET), baseline=baseline, steps=16, method=method,
                                    return_delta=True)
  close(got, nhwc(want))
  np.testing.assert_allclose(delta, want_delta.detach().numpy(), atol=2e-3 * float(np.abs(got).sum()))


def test_integrated_gradients_methods_share_one_program():
  """The nodes and weights of the path are arguments of the compiled program, not constants."""
  from jaxconv.viz import attribution

  fn = lambda x: x.reshape(x.shape[0], -1)[:, :3] ** 2  # noqa: E731
  x = np.ones((2, 2, 2, 1), np.float32)
  before = attribution._integrated_gradients._cache_size()
  for method in IG_METHODS:
    attr = integrated_gradients(fn, x, 1, steps=8, method=method)
    alphas, weights = ig_steps(8, method)
    np.testing.assert_allclose(np.asarray(attr)[:, 0, 1, 0], 2 * np.sum(weights * alphas), rtol=1e-6)  # x * 2ax
  assert attribution._integrated_gradients._cache_size() == before + 1


def test_an_unhashable_fn_is_compiled_for_its_call():
  """A callable object that defines ``__eq__`` only cannot be a static argument of ``jax.jit``;
  the attribution functions compile it for the call instead, with the same results."""

  class Logits:
    def __eq__(self, other):
      return isinstance(other, Logits)

    __hash__ = None

    def __call__(self, x):
      return x.reshape(x.shape[0], -1)[:, :3] ** 2

  fn, x, key = Logits(), np.arange(1.0, 9.0, dtype=np.float32).reshape(2, 2, 2, 1), jax.random.key(0)
  plain = lambda x: Logits()(x)  # noqa: E731
  for f in (saliency, integrated_gradients, lambda *a: smoothgrad(*a, key=key, samples=4),
            lambda *a: occlusion(*a, window=1, stride=1)):
    np.testing.assert_array_equal(np.asarray(f(fn, x, 1)), np.asarray(f(plain, x, 1)))


def test_integrated_gradients_completeness(squeeze):
  _, model, variables, x = squeeze

  # The two logits it is checked against come out of the same program (a SqueezeNet run eagerly
  # would compile each layer alone); NumPy does the rest.
  @functools.partial(jax.jit, compiler_options=OPTIMIZED)
  def ig(v, x):
    logit = lambda x: model.apply(v, x)[:, 5]  # noqa: E731
    return (integrated_gradients(functools.partial(model.apply, v), x, 5, steps=200, return_delta=True),
            logit(x) - logit(jnp.zeros_like(x)))

  (attr, delta), logits = jax.device_get(ig(variables, x))
  assert np.all(np.abs(logits) > 1e-3), logits  # a live target
  assert np.all(np.abs(delta) <= 0.01 * np.abs(logits)), (delta, logits)
  np.testing.assert_allclose(attr.reshape(2, -1).sum(1), logits, rtol=0.01)


def test_occlusion_matches_captum(squeeze, captum_attr):
  tmodel, model, variables, x = squeeze
  want = captum_attr.Occlusion(tmodel).attribute(nchw(x), sliding_window_shapes=(3, 12, 10), strides=(3, 8, 6),
                                                 target=TARGET, baselines=0.25)
  got = jax.jit(lambda v, x: occlusion(functools.partial(model.apply, v), x, jnp.array(TARGET), window=(12, 10),
                                       stride=(8, 6), baseline=0.25))(variables, x)
  close(got, nhwc(want))


def test_smoothgrad_is_the_mean_saliency_of_noisy_copies(squeeze, jitted_saliency):
  _, model, variables, x = squeeze
  fn = functools.partial(model.apply, variables)
  key = jax.random.key(7)
  got = smoothgrad(fn, x, 2, key=key, samples=4, sigma=0.2)
  span = 0.2 * (x.max((1, 2, 3), keepdims=True) - x.min((1, 2, 3), keepdims=True))
  sal = lambda x: jitted_saliency(variables, x, np.array([2, 2]))  # noqa: E731
  want = np.mean([sal(x + span * normal(k, x.shape)) for k in jax.random.split(key, 4)], 0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert not np.allclose(got, sal(x))
  jitted = jax.jit(lambda v, x, k: smoothgrad(functools.partial(model.apply, v), x, jnp.array([2, 2]), key=k,
                                              samples=4, sigma=0.2))(variables, x, key)
  np.testing.assert_allclose(jitted, got, rtol=1e-5, atol=1e-7)


# Targets whose maps are not all zero (Grad-CAM's ReLU zeroes a map whose weighted sum is negative).
@pytest.mark.parametrize("name, torch_layer, layer, target", [("squeezenet1_1", "features.12", "fire8", [351, 138]),
                                                              ("resnet18", "layer4.1", "stage4_block2", [3, 917])])
def test_grad_cam_matches_pytorch_grad_cam(tvm, name, torch_layer, layer, target):
  from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

  tmodel = random_torch_model(tvm, name, seed=3)
  model, variables = load_torchvision(name, tmodel.state_dict())
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  target_layer = tmodel.get_submodule(torch_layer)
  targets = [ClassifierOutputTarget(t) for t in target]

  # Everything of ours in one compiled program: both CAMs, the raw map of the first image and the
  # layer's output (run eagerly, the network would compile layer by layer).
  @jax.jit
  def ours(v, x):
    t = jnp.array(target)
    return (grad_cam(model, v, x, t, layer=layer, upsample=True),
            grad_cam_plus_plus(model, v, x, t, layer=layer, upsample=True),
            grad_cam(model, v, x[:1], target[0], layer=layer),
            intermediates(model, v, x, layer)[layer])

  cam, cam_plus_plus, raw, acts = ours(variables, x)
  for got, theirs in ((cam, GradCAM), (cam_plus_plus, GradCAMPlusPlus)):
    with theirs(model=tmodel, target_layers=[target_layer]) as reference:
      want = reference(input_tensor=nchw(x), targets=targets)
    assert got.shape == (2, 64, 64) and np.all(want.max(axis=(1, 2)) > 0)  # live targets
    np.testing.assert_allclose(got, want, atol=2e-4)

  # The raw map, at the layer's resolution: relu(sum_k mean_hw(dy/dA_k) A_k) from torch's own tensors.
  seen = {}

  def keep(module, inputs, output):   # returns None: the output is left as it is
    output.retain_grad()
    seen["a"] = output

  target_layer.register_forward_hook(keep)
  logits = tmodel(nchw(x))
  logits[0, target[0]].backward()
  a, g = seen["a"][:1], seen["a"].grad[:1]
  want = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()
  close(raw, want)
  assert acts.shape == (2,) + want.shape[1:] + (a.shape[1],)


def test_bad_input_is_a_clear_error(squeeze):
  _, model, variables, x = squeeze
  fn = functools.partial(model.apply, variables)
  with pytest.raises(ValueError, match=r"target must be a class index or one per example \(\[2\] ints\)"):
    saliency(fn, x, jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match=r"method must be one of riemann_left, .*gausslegendre; got 'simpson'"):
    integrated_gradients(fn, x, 1, method="simpson")
  with pytest.raises(ValueError, match=r"steps must be an int >= 2"):
    integrated_gradients(fn, x, 1, steps=1)
  with pytest.raises(ValueError, match=r"window \(64, 8\) is larger than the image \(48, 48\)"):
    occlusion(fn, x, 1, window=(64, 8), stride=4)
  with pytest.raises(ValueError, match=r"no module at path\(s\) \['layer4'\] ran in SqueezeNet; .*'stem_conv'"):
    grad_cam(model, variables, x, 1, layer="layer4")
  with pytest.raises(TypeError, match=r"fn must be a function"):
    saliency(None, x, 1)
