"""The model zoo, parametrized over the registry (timm's test_models.py pattern).

Large models are only traced (``jax.eval_shape``): parameter counts, output and feature shapes.
Small configurations run for real, compiled once per model: forward, gradients (every parameter
must receive one), a training-mode forward that updates every running statistic, no NaN.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import models
from jaxconv.models import create_model, list_models
from jaxconv.nn.blocks import PreActBottleneck
from helpers import normal

# torchvision's published parameter counts (1000 classes); lenet5: 10 classes on 32x32x1.
PUBLISHED = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "alexnet": 61_100_840,
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904, "densenet121": 7_978_856, "densenet169": 14_149_480,
    "densenet201": 20_013_928, "mobilenet_v2": 3_504_872, "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496, "lenet5": 61_706,
}
STAGES = {18: ((2, 2, 2, 2), 1), 34: ((3, 4, 6, 3), 1), 50: ((3, 4, 6, 3), 4), 101: ((3, 4, 23, 3), 4), 152: ((3, 8, 36, 3), 4)}


def _blocks(depth):
  """(C_in, C_out, projected) of every block of a ResNet of that depth, from the paper's table."""
  sizes, expansion = STAGES[depth]
  c, out = 64, []
  for i, n in enumerate(sizes):
    for j in range(n):
      c_out = 64 * 2**i * expansion
      out.append((c, c_out, c != c_out or (i > 0 and j == 0)))
      c = c_out
  return out


def resnetv2_count(depth):
  """v1 count with the norms moved: v2 has no stem norm, normalises each block's input instead of
  its output, has no norm on projections, and adds a final norm (2 parameters per channel)."""
  blocks = _blocks(depth)
  delta = -2 * 64 + sum(2 * (ci - co) for ci, co, _ in blocks) - sum(2 * co for _, co, p in blocks if p)
  return PUBLISHED[f"resnet{depth}"] + delta + 2 * blocks[-1][1]


def seresnet_count(depth):
  """v1 count plus an SE module per block: C -> C/16 -> C 1x1 convs with bias."""
  return PUBLISHED[f"resnet{depth}"] + sum(2 * c * (c // 16) + c // 16 + c for _, c, _ in _blocks(depth))


def small_cnn_count(c_in=3, widths=(32, 64), hidden=128, pool=7, classes=10):
  """3x3 convs without bias, a (scale, bias) norm after each, two per stage; fc(hidden) on the
  pooled ``pool x pool x widths[-1]`` map; the head."""
  convs, c = 0, c_in
  for w in widths:
    convs += 9 * c * w + 2 * w + 9 * w * w + 2 * w
    c = w
  return convs + (pool * pool * c + 1) * hidden + (hidden + 1) * classes


EXPECTED = dict(PUBLISHED)
EXPECTED["small_cnn"] = small_cnn_count()
EXPECTED.update({f"resnetv2_{d}": resnetv2_count(d) for d in STAGES})
EXPECTED.update({f"seresnet{d}": seresnet_count(d) for d in STAGES})


# Unoptimised XLA compilation: these tests run tiny inputs once, so compile time dominates and
# LLVM's expensive passes would double it (measured: 9.6 s vs 17.5 s CPU for mobilenet_v2's step).
jit = functools.partial(jax.jit, compiler_options=dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True))


def _input(name, n=1):
  return jnp.zeros((n, 32, 32, 1) if name == "lenet5" else (n, 224, 224, 3))


def _n(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_registry_lists_exactly_the_zoo():
  assert set(list_models()) == set(EXPECTED)
  assert list_models("vgg1?_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
  assert list_models("nothing*") == []
  assert set(models.__all__) <= set(dir(models))


def test_seresnet50_matches_timm():
  # timm's seresnet50 (SENet paper: 28.1M) has 28,088,024 parameters.
  assert EXPECTED["seresnet50"] == 28_088_024


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_shapes_and_features(name):
  model = create_model(name)
  x = _input(name)
  (logits, feats), variables = jax.eval_shape(
      functools.partial(model.init_with_output, train=False, return_features=True), jax.random.key(0), x)
  assert _n(variables["params"]) == EXPECTED[name]
  assert logits.shape == (1, 10 if name in ("lenet5", "small_cnn") else 1000)
  assert "head" in variables["params"]
  keys = set(feats)  # (pytrees sort dict keys, so order is not part of the contract)
  assert "pre_logits" in keys
  stages = sorted((k for k in keys if k.startswith("stage")), key=lambda k: int(k[5:]))
  assert stages == [f"stage{i}" for i in range(1, len(stages) + 1)] and len(stages) >= 2
  assert keys - set(stages) - {"pre_logits"} <= {"stem"}
  assert all(feats[k].ndim == 4 for k in stages)


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "vgg11", "googlenet", "squeezenet1_0", "lenet5"])
def test_num_classes_changes_only_the_head(name):
  x = _input(name)
  a = jax.eval_shape(functools.partial(create_model(name).init, train=False), jax.random.key(0), x)["params"]
  b = jax.eval_shape(functools.partial(create_model(name, num_classes=7).init, train=False), jax.random.key(0), x)["params"]
  flat_a, flat_b = dict(jax.tree.flatten_with_path(a)[0]), dict(jax.tree.flatten_with_path(b)[0])
  assert flat_a.keys() == flat_b.keys()
  differ = {jax.tree_util.keystr(k) for k in flat_a if flat_a[k].shape != flat_b[k].shape}
  assert differ and all(k.startswith("['head']") for k in differ)


def test_googlenet_aux_logits():
  model = create_model("googlenet", aux_logits=True)
  (logits, feats), v = jax.eval_shape(
      functools.partial(model.init_with_output, train=False, return_features=True), jax.random.key(0), _input("googlenet"))
  assert _n(v["params"]) == 13_004_888  # torchvision's GoogLeNet(aux_logits=True)
  assert feats["aux1"].shape == feats["aux2"].shape == logits.shape == (1, 1000)


def test_dtypes():
  model = create_model("resnet18", dtype=jnp.bfloat16)
  logits, v = jax.eval_shape(functools.partial(model.init_with_output, train=False), jax.random.key(0), _input("resnet18"))
  assert logits.dtype == jnp.bfloat16
  assert {a.dtype for a in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
  model = create_model("mobilenet_v2", param_dtype=jnp.bfloat16)
  v = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), _input("mobilenet_v2"))
  assert {a.dtype for a in jax.tree.leaves(v["params"])} == {jnp.dtype(jnp.bfloat16)}


# ------------------------------------------------------------------------------ bad input


def test_unknown_name_lists_close_matches():
  with pytest.raises(ValueError, match=r"unknown model name 'resnet19'\. Did you mean 'resnet18'"):
    create_model("resnet19")
  with pytest.raises(ValueError, match=r"unknown model name 'zzz'\. list_models\(\) gives all"):
    create_model("zzz")


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)])
def test_num_classes_must_be_a_positive_int(bad, err):
  with pytest.raises(err, match=r"num_classes must be"):
    create_model("resnet18", num_classes=bad)
  with pytest.raises(err, match=r"num_classes must be"):   # the class checks too
    jax.eval_shape(models.LeNet5(num_classes=bad).init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_unknown_or_fixed_options():
  with pytest.raises(TypeError, match=r"model 'resnet18' has no option\(s\) \['depth'\]; its options are \[.*'cifar_stem'"):
    create_model("resnet18", depth=18)
  with pytest.raises(TypeError, match=r"model 'resnet18' fixes \['stage_sizes'\]"):
    create_model("resnet18", stage_sizes=(1, 1))


@pytest.mark.parametrize(
    "name, size, match",
    [
        ("vgg11", 16, r"input too small at MaxPool 'pool5': its feature map has spatial shape \(1, 1\)"),
        ("alexnet", 32, r"input too small at MaxPool 'pool5'"),
        ("densenet121", 16, r"input too small at AvgPool 'transition3/pool'"),
        ("squeezenet1_0", 20, r"input too small at MaxPool 'pool3'"),
    ],
)
def test_input_too_small_names_the_layer(name, size, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(functools.partial(create_model(name).init, train=False), jax.random.key(0), jnp.zeros((1, size, size, 3)))


def test_small_cnn_documented_count_and_options():
  # The docstring's count: MNIST's one channel, 10 classes.
  v = jax.eval_shape(create_model("small_cnn").init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  assert _n(v["params"]) == small_cnn_count(c_in=1) == 468_010
  # A list (as JSON gives it) is accepted and stored as a tuple: the module stays hashable for jit.
  model = create_model("small_cnn", widths=[8, 16, 16], convs_per_stage=1, hidden=32, pool_size=3)
  assert model.widths == (8, 16, 16) and hash(model) is not None
  v, out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, return_features=True)[::-1],
                          jnp.zeros((2, 28, 28, 1)))
  assert _n(v["params"]) == small_cnn_count(1, (8, 16, 16), 32, 3) - sum(9 * w * w + 2 * w for w in (8, 16, 16))
  assert [out[1][f"stage{i}"].shape for i in (1, 2, 3)] == [(2, 14, 14, 8), (2, 7, 7, 16), (2, 3, 3, 16)]
  for kw, match in (({"widths": ()}, r"widths must be a non-empty sequence of positive ints; got \(\)"),
                    ({"widths": (8, 0)}, r"widths .* got \(8, 0\)"),
                    ({"convs_per_stage": 0}, r"convs_per_stage must be a positive int; got 0")):
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(create_model("small_cnn", **kw).init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_other_bad_inputs():
  with pytest.raises(ValueError, match=r"LeNet5 takes 28x28 or 32x32 images .* got 30x30"):
    jax.eval_shape(create_model("lenet5").init, jax.random.key(0), jnp.zeros((1, 30, 30, 1)))
  with pytest.raises(ValueError, match=r"LeNet5 takes 28x28 images"):
    jax.eval_shape(create_model("lenet5", input_size=28).init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  model = create_model("resnet18")
  with pytest.raises(ValueError, match=r"expects a batch of channels-last images, x of shape \[N, H, W, C\]"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((224, 224, 3)))
  with pytest.raises(TypeError, match=r"expects floating-point input; got dtype uint8"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"channel mismatch at Conv 'stem_conv'"):
    jax.eval_shape(model.apply, v, jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ValueError, match=r"channel mismatch at BasicBlock 'stage1_block1'"):
    jax.eval_shape(models.ResNet(width=8, block=functools.partial(_NoProjection, features_scale=2)).init,
                   jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def _NoProjection(features, features_scale=1, **kw):
  """A BasicBlock that refuses projections (to provoke a channel mismatch between blocks)."""
  from jaxconv.nn.blocks import BasicBlock

  return BasicBlock(features * features_scale, projection=False, **kw)


# ------------------------------------------------------------------------------ real runs

SMALL = {
    "lenet5": (lambda: create_model("lenet5"), (2, 32, 32, 1)),
    "lenet5_28_tanh_avg": (lambda: create_model("lenet5", input_size=28, act=jnp.tanh, pool="avg"), (2, 28, 28, 1)),
    "small_cnn": (lambda: create_model("small_cnn", num_classes=5, widths=[4, 8], hidden=8), (2, 28, 28, 1)),
    "alexnet": (lambda: create_model("alexnet", num_classes=5, hidden=16, pool_size=1), (2, 64, 64, 3)),
    "vgg11_bn": (lambda: create_model("vgg11_bn", num_classes=5, hidden=16, pool_size=1), (2, 32, 32, 3)),
    "resnet_cifar": (  # one basic block per stage: an identity shortcut, strided projections
        lambda: create_model("resnet18", num_classes=5, cifar_stem=True, width=8).clone(stage_sizes=(1, 1, 1, 1)),
        (2, 16, 16, 3)),
    "se_resnetv2_bottleneck": (  # pre-activation bottlenecks with SE: the v2 and SE code paths
        lambda: models.ResNet(stage_sizes=(1, 1), block=PreActBottleneck, preact=True, se_reduction=4, width=4,
                              num_classes=5), (2, 32, 32, 3)),
    "densenet_small": (
        lambda: models.DenseNet(block_config=(2, 2), growth_rate=4, init_features=8, num_classes=5, drop_rate=0.2), (2, 32, 32, 3)),
    "mobilenet_v2": (  # t=1 first block, expansion, residual and strided blocks, with fewer rows
        lambda: create_model("mobilenet_v2", num_classes=5, width_mult=0.25,
                             inverted_residual_setting=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2))), (2, 32, 32, 3)),
    "squeezenet1_1": (lambda: create_model("squeezenet1_1", num_classes=5), (2, 64, 64, 3)),
}


@pytest.fixture(scope="module", params=sorted(SMALL))
def small_run(request):
  """Init, one training step's gradients and an eval forward, in one compiled function per model."""
  build, shape = SMALL[request.param]
  model = build()
  x = normal(jax.random.key(1), shape)
  y = jnp.arange(shape[0]) % 5

  @jit
  def run(x):
    variables = model.init(jax.random.key(0), x, train=False)

    # Gradients in eval mode, where every norm is a fixed affine map. In train mode a per-channel
    # constant entering "conv -> BatchNorm" is cancelled by the batch mean, so some parameters
    # (VGG-BN's conv biases, MobileNetV2's projection-BN biases) have an exactly-zero gradient
    # there by construction, not by a bug.
    def loss_fn(params):
      logits, feats = model.apply({**variables, "params": params}, x, train=False, return_features=True)
      logp = jax.nn.log_softmax(logits.astype(jnp.float32))
      return -jnp.take_along_axis(logp, y[:, None], 1).mean(), (logits, feats)

    (loss, (eval_logits, feats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    logits, upd = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    return variables, (loss, logits, upd, grads, eval_logits, feats)

  variables, out = jax.device_get(run(x))  # NumPy from here: no per-leaf dispatch in the checks
  return request.param, model, variables, out, shape


def test_small_forward_backward(small_run):
  name, model, variables, (loss, logits, upd, grads, eval_logits, feats), shape = small_run
  classes = 10 if name.startswith("lenet5") else 5  # small_cnn is built with 5
  assert logits.shape == eval_logits.shape == (shape[0], classes)
  assert np.isfinite(loss) and np.all(np.isfinite(logits)) and np.all(np.isfinite(eval_logits))
  for path, g in jax.tree.flatten_with_path(grads)[0]:
    where = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), where
    assert np.any(g != 0), f"{name}: no gradient reaches {where}"
  if "batch_stats" in variables:
    before, after = variables["batch_stats"], upd["batch_stats"]
    assert jax.tree.structure(before) == jax.tree.structure(after)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after))
    assert all(changed), f"{name}: some running statistics were not updated"
  else:
    assert upd == {}  # no batch norm: the mutable update is empty
  assert "pre_logits" in feats
  for k, f in feats.items():
    assert f.shape[0] == shape[0] and np.all(np.isfinite(f)), k


def test_dropout_and_batch_stats_errors():
  model = create_model("alexnet", num_classes=3, hidden=8, pool_size=1)
  x = jnp.zeros((1, 64, 64, 3))
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"uses dropout in training: pass a key, e\.g\. .*rngs=\{'dropout': key\}"):
    jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]), v, x)
  model = create_model("resnet18", cifar_stem=True, width=4)
  v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
  with pytest.raises(ValueError, match=r"mutable=\['batch_stats'\]"):
    jax.eval_shape(functools.partial(model.apply, train=True), v, jnp.zeros((2, 8, 8, 3)))
  with pytest.raises(ValueError, match=r"has no running statistics"):
    jax.eval_shape(model.apply, {"params": v["params"]}, jnp.zeros((2, 8, 8, 3)))


def test_zero_init_residual():
  model = models.ResNet(stage_sizes=(1, 2), cifar_stem=True, width=4, zero_init_residual=True)
  v = jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  p = v["params"]
  last = [p[k]["bn2"]["scale"] for k in p if "_block" in k]
  assert len(last) == 3 and all(not np.any(s) for s in last)
  assert np.all(p["stage1_block1"]["bn1"]["scale"] == 1)
  with pytest.raises(ValueError, match="zero_init_residual applies to ResNet v1 blocks"):
    jax.eval_shape(create_model("resnetv2_18", zero_init_residual=True).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_axis_name_gives_global_batch_statistics():
  # 4 devices x 2 examples with axis_name == one device with the 8 examples.
  kw = dict(stage_sizes=(1,), width=4, cifar_stem=True, num_classes=3)
  x = normal(jax.random.key(0), (8, 6, 6, 3))
  local = models.ResNet(**kw)
  v = jit(local.init)(jax.random.key(1), x)
  _, want = jit(functools.partial(local.apply, train=True, mutable=["batch_stats"]))(v, x)
  dist = models.ResNet(axis_name="batch", **kw)
  f = jax.pmap(functools.partial(dist.apply, train=True, mutable=["batch_stats"]), axis_name="batch",
               in_axes=(None, 0), devices=jax.devices()[:4])
  _, got = f(v, x.reshape(4, 2, 6, 6, 3))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    for d in range(4):
      np.testing.assert_allclose(b[d], a, rtol=1e-4, atol=1e-5)
