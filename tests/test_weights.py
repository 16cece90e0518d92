"""torchvision weights: every model's logits against torchvision's, round trips, files, errors.

torchvision is the oracle: each model is built there with random weights and randomised batch
norm statistics, its ``state_dict`` loaded with ``load_torchvision``, and both frameworks' eval
outputs compared on the same images (NCHW there, NHWC here); every model's weights go back to
torchvision unchanged.
"""

import logging
import math
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py: why one thread

from jaxconv.models import (  # noqa: E402
    TORCHVISION_MODELS,
    create_model,
    load_torchvision,
    read_state_dict,
    torchvision_state_dict,
    write_state_dict,
)
from jaxconv.models.weights import guess_architecture  # noqa: E402

# Small inputs keep each model to a second or two; AlexNet/VGG/SqueezeNet need 64x64 so that the
# maps before their adaptive pools are larger than 1x1 (the flatten order is then checked).
SIZES = {n: 64 for n in TORCHVISION_MODELS if n.startswith(("vgg", "alexnet", "squeezenet"))}
# The VGGs differ only in their features, and their classifier (one code path, batch norm or not)
# is checked at full size (120M parameters) by vgg11; the others, vgg11_bn included, are checked with
# a small classifier (pool 2x2, 64 hidden units, as the zoo's hidden/pool_size options build it).
SMALL_CLASSIFIER = {n: dict(hidden=64, pool_size=2) for n in TORCHVISION_MODELS
                    if n.startswith("vgg") and n != "vgg11"}
# ResNet-101/152 are ResNet-50 with more Bottleneck blocks per stage, and DenseNet-169/201 are
# DenseNet-121 with more dense layers per block: in jaxconv and in torchvision alike the depth is
# only a count (``stage_sizes``, ``block_config``) of the same block built in the same loop, and the
# key mapping (``_resnet_names``, ``_densenet_names``) is a function of one module path that carries
# the block and layer numbers over. Their logits would run resnet50's and densenet121's layers again
# at twice the compile time; they are checked for the exact round trip (every key, shape and value)
# and for where a deep, two-digit block or layer lands: {name: (Flax module, torchvision module)}.
DEEPER_VARIANTS = {
    "resnet101": (("stage3_block23", "conv2"), "layer3.22.conv2"),
    "resnet152": (("stage3_block36", "conv2"), "layer3.35.conv2"),
    "densenet169": (("block4", "layer32", "conv2"), "features.denseblock4.denselayer32.conv2"),
    "densenet201": (("block3", "layer48", "conv2"), "features.denseblock3.denselayer48.conv2"),
}


def torch_architecture(tvm, name, **kw):
  """torchvision's ``name`` on the meta device: shapes, no memory."""
  if name == "googlenet":
    kw.setdefault("aux_logits", False)
    kw.setdefault("init_weights", False)
  with torch.device("meta"):
    model = getattr(tvm, name)(weights=None, **kw)
    if name in SMALL_CLASSIFIER:
      nn, small = torch.nn, SMALL_CLASSIFIER[name]
      model.avgpool = nn.AdaptiveAvgPool2d(small["pool_size"])
      width = 512 * small["pool_size"] ** 2
      model.classifier = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 64),
                                       nn.ReLU(), nn.Dropout(), nn.Linear(64, 1000))
  return model.eval()


def random_torch_model(tvm, name, seed=0, **kw):
  """torchvision's ``name`` with random weights (scaled by fan-in) and random batch norm statistics.

  Built on the meta device and then filled in place, which skips torchvision's own (slow, for the
  100M-parameter VGGs) initialisation and any temporary copy.
  """
  model = torch_architecture(tvm, name, **kw).to_empty(device="cpu")
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = mod.weight[0].numel()
        mod.weight.normal_(0.0, 1 / math.sqrt(fan_in), generator=g)
        if mod.bias is not None:
          mod.bias.uniform_(-0.1, 0.1, generator=g)
      elif isinstance(mod, torch.nn.BatchNorm2d):
        for t, lo, hi in ((mod.weight, 0.5, 1.5), (mod.bias, -0.5, 0.5), (mod.running_mean, -0.5, 0.5),
                          (mod.running_var, 0.5, 2.0)):
          t.uniform_(lo, hi, generator=g)
        mod.num_batches_tracked.zero_()
  return model


def torch_logits(model, x_nhwc):
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def rel_err(a, b):
  return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_logits_and_round_trip_match_torchvision(tvm, name):
  tmodel = random_torch_model(tvm, name)
  state = tmodel.state_dict()
  model, variables = load_torchvision(name, state, **SMALL_CLASSIFIER.get(name, {}))
  assert model.num_classes == 1000
  if name in DEEPER_VARIANTS:
    path, prefix = DEEPER_VARIANTS[name]
    kernel = variables["params"]
    for p in path:
      kernel = kernel[p]
    np.testing.assert_array_equal(kernel["kernel"], state[f"{prefix}.weight"].numpy().transpose(2, 3, 1, 0))
  else:
    size = SIZES.get(name, 32)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    got = jax.jit(model.apply)(variables, jnp.asarray(x))
    assert rel_err(got, torch_logits(tmodel, x)) < 1e-4

  back = torchvision_state_dict(name, variables)
  assert set(back) == set(state)
  # Strict: every key, every shape; assign=True keeps the arrays themselves (and their dtypes).
  fresh = torch_architecture(tvm, name)
  fresh.load_state_dict({k: torch.as_tensor(v) for k, v in back.items()}, strict=True, assign=True)
  for k, v in fresh.state_dict().items():   # layout changes only: the round trip is exact
    assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k


@pytest.mark.parametrize("shape, perm, out_shape", [
    ((5, 3, 2, 4), (2, 3, 1, 0), None),            # conv [O, I, kh, kw] -> [kh, kw, I, O]
    ((4, 2, 5, 3), (3, 2, 0, 1), None),            # and back
    ((300, 7, 3, 3), (2, 3, 1, 0), (-1, 300)),     # a classifier after a 3x3 map: more rows than a block
    ((3, 3, 7, 300), (3, 2, 0, 1), (300, -1)),
    ((257, 129), (1, 0), None), ((1, 1), (1, 0), None),
    ((300, 7, 1, 1), (2, 3, 1, 0), None),          # 1x1 convolutions: the other axes keep their order
    ((1, 1, 7, 300), (3, 2, 0, 1), None),
])
def test_relayout_is_a_transpose(shape, perm, out_shape):
  from jaxconv.models.weights import _relayout

  x = np.random.default_rng(0).normal(size=(shape[0], math.prod(shape[1:]))).astype(np.float32)
  got = _relayout(x, shape, perm, out_shape)
  want = x.reshape(shape).transpose(perm)
  want = want if out_shape is None else want.reshape(out_shape)
  assert got.flags.c_contiguous and got.shape == want.shape and np.array_equal(got, want)


def test_googlenet_aux_heads_and_transform_input(tvm, tmp_path):
  tmodel = random_torch_model(tvm, "googlenet", aux_logits=True, transform_input=True)
  state = tmodel.state_dict()
  model, variables = load_torchvision("googlenet", state, aux_logits=True, transform_input=True)
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  got, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, jnp.asarray(x))
  assert rel_err(got, torch_logits(tmodel, x)) < 1e-4
  # The auxiliary heads in eval mode, on torchvision's own intermediate maps.
  seen = {}
  tmodel.inception4a.register_forward_hook(lambda m, i, o: seen.__setitem__("aux1", o))
  tmodel.inception4d.register_forward_hook(lambda m, i, o: seen.__setitem__("aux2", o))
  torch_logits(tmodel, x)
  with torch.no_grad():
    for aux in ("aux1", "aux2"):
      assert rel_err(feats[aux], getattr(tmodel, aux)(seen[aux]).numpy()) < 1e-4
  back = torchvision_state_dict("googlenet", variables)
  assert set(back) == set(state)

  # Without aux_logits the auxiliary weights are dropped, as torchvision does.
  model, variables = load_torchvision("googlenet", state, transform_input=True)
  assert "aux1_fc1" not in variables["params"]
  assert rel_err(jax.jit(model.apply)(variables, jnp.asarray(x)), torch_logits(tmodel, x)) < 1e-4
  # torchvision's published file sets transform_input; any other source leaves it off.
  write_state_dict(state, tmp_path / "googlenet-1378be20.safetensors")
  assert load_torchvision("googlenet", tmp_path / "googlenet-1378be20.safetensors")[0].transform_input
  assert not load_torchvision("googlenet", state)[0].transform_input


def test_densenet_published_key_names(tvm):
  # torchvision's published DenseNet files name a dense layer's norm1 "norm.1" (and so on).
  state = {k: v.numpy() for k, v in random_torch_model(tvm, "densenet121").state_dict().items()}
  legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
  assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
  _, want = load_torchvision("densenet121", state)
  _, got = load_torchvision("densenet121", legacy)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_files_pth_and_safetensors(tvm, tmp_path):
  tmodel = random_torch_model(tvm, "squeezenet1_1")
  state = tmodel.state_dict()
  torch.save(state, tmp_path / "sq.pth")
  torch.save({"state_dict": state}, tmp_path / "wrapped.pt")
  torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "parallel.pth")
  _, ref = load_torchvision("squeezenet1_1", state)
  st = write_state_dict(torchvision_state_dict("squeezenet1_1", ref), tmp_path / "sq.safetensors")
  for src in ("sq.pth", "wrapped.pt", "parallel.pth", "sq.safetensors"):
    _, v = load_torchvision("squeezenet1_1", tmp_path / src)
    jax.tree.map(np.testing.assert_array_equal, v, ref)
  assert st.exists() and not list(tmp_path.glob(".*tmp*"))
  # The variables hold copies: changing the checkpoint's tensors afterwards leaves them alone.
  bias, stem = state["classifier.1.bias"].numpy().copy(), state["features.0.weight"].numpy().copy()
  with torch.no_grad():
    state["classifier.1.bias"].add_(1.0)
    state["features.0.weight"].add_(1.0)
  np.testing.assert_array_equal(ref["params"]["head"]["bias"], bias)
  np.testing.assert_array_equal(ref["params"]["stem_conv"]["kernel"], stem.transpose(2, 3, 1, 0))


def test_safetensors_needs_no_torch_and_pth_says_what_it_needs(tmp_path):
  model = create_model("squeezenet1_1", num_classes=4)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  variables = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)
  write_state_dict(torchvision_state_dict("squeezenet1_1", variables), tmp_path / "w.safetensors")
  write_state_dict(torchvision_state_dict("squeezenet1_1", variables), tmp_path / "w.pth")
  script = textwrap.dedent(f"""
      import sys
      sys.modules["torch"] = None           # any import of torch now fails
      from jaxconv.models import load_torchvision
      model, v = load_torchvision("squeezenet1_1", {str(tmp_path / "w.safetensors")!r})
      assert model.num_classes == 4
      try:
        load_torchvision("squeezenet1_1", {str(tmp_path / "w.pth")!r})
      except ImportError as e:
        print("IMPORT-ERROR:", e)
      """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "IMPORT-ERROR: reading w.pth (a PyTorch checkpoint) needs PyTorch" in out.stdout


def test_pth_never_unpickles_objects(tmp_path):
  torch.save({"fc.weight": torch.zeros(2, 2), "payload": subprocess.Popen}, tmp_path / "evil.pth")
  with pytest.raises(ValueError, match=r"cannot read .*evil.pth.* as a PyTorch state dict \(weights_only=True\)"):
    read_state_dict(tmp_path / "evil.pth")


def test_new_num_classes_keeps_the_backbone_and_says_what_it_left_out(tvm, caplog):
  tmodel = random_torch_model(tvm, "resnet18")
  state = tmodel.state_dict()
  with caplog.at_level(logging.WARNING, logger="jaxconv"):
    model, variables = load_torchvision("resnet18", state, num_classes=10, key=jax.random.key(3))
  assert model.num_classes == 10
  assert "num_classes=10 differs from the checkpoint's 1000; left out fc.bias, fc.weight" in caplog.text
  head = variables["params"]["head"]
  assert head["kernel"].shape == (512, 10) and float(jnp.std(head["kernel"])) > 0
  # The fresh head is the model's own initialisation for that key.
  full = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
  np.testing.assert_array_equal(head["kernel"], full["params"]["head"]["kernel"])
  np.testing.assert_array_equal(variables["params"]["stem_conv"]["kernel"],
                                state["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  # Features (everything before the head) equal torchvision's.
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  _, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, jnp.asarray(x))
  tmodel.fc = torch.nn.Identity()
  assert rel_err(feats["pre_logits"], torch_logits(tmodel, x)) < 1e-4


def test_grayscale_input_sums_the_first_kernel(tvm):
  tmodel = random_torch_model(tvm, "resnet18")
  model, variables = load_torchvision("resnet18", tmodel.state_dict(), in_channels=1)
  gray = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
  got = jax.jit(model.apply)(variables, jnp.asarray(gray))
  assert rel_err(got, torch_logits(tmodel, np.repeat(gray, 3, axis=-1))) < 1e-4


def test_mismatches_are_clear_errors(tvm, tmp_path):
  r50 = {k: v.numpy() for k, v in random_torch_model(tvm, "resnet50").state_dict().items()}
  assert guess_architecture(r50) == "resnet50"
  with pytest.raises(ValueError, match=r"does not fit resnet18: 165 key\(s\) the model does not use: layer1.0.bn3.bias, .* It looks like a resnet50 checkpoint given for resnet18"):
    load_torchvision("resnet18", r50)
  r18 = {k: v.numpy() for k, v in random_torch_model(tvm, "resnet18").state_dict().items()}
  missing = {k: v for k, v in r18.items() if k != "layer2.0.conv1.weight"}
  with pytest.raises(ValueError, match=r"missing 1 key\(s\) the model needs: layer2.0.conv1.weight"):
    load_torchvision("resnet18", missing)
  with pytest.raises(ValueError, match=r"1 key\(s\) the model does not use: extra.weight"):
    load_torchvision("resnet18", {**r18, "extra.weight": np.zeros(3)})
  bad = {**r18, "layer1.0.conv2.weight": np.zeros((64, 64, 5, 5), np.float32)}
  with pytest.raises(ValueError, match=r"'layer1.0.conv2.weight' has shape \(64, 64, 5, 5\), the model needs \(64, 64, 3, 3\)"):
    load_torchvision("resnet18", bad)
  with pytest.raises(ValueError, match=r"'seresnet18' has no torchvision counterpart.*choose one of alexnet, vgg11"):
    load_torchvision("seresnet18", r18)
  with pytest.raises(ValueError, match=r"in_channels must be 3 \(RGB\) or 1"):
    load_torchvision("resnet18", r18, in_channels=4)
  with pytest.raises(FileNotFoundError, match=r"no weights file at"):
    load_torchvision("resnet18", "/nonexistent/resnet18.pth")
  with pytest.raises(ValueError, match=r"unknown weights file suffix '.npz'"):
    (tmp_path / "w.npz").write_bytes(b"")
    read_state_dict(tmp_path / "w.npz")
  with pytest.raises(TypeError, match=r"variables must be the model's \{'params', 'batch_stats'\} mapping"):
    torchvision_state_dict("resnet18", r18)


@pytest.mark.parametrize("name", ["densenet121", "mobilenet_v2", "vgg16_bn", "googlenet"])
def test_guess_architecture(tvm, name):
  with torch.device("meta"):
    state = getattr(tvm, name)(weights=None).state_dict()
  assert guess_architecture({k: np.empty(v.shape, np.int8) for k, v in state.items()}) == name


def test_convert_command_and_training_from_a_weights_file(tvm, tmp_path, capsys):
  from jaxconv.cli import main
  from jaxconv.train import TrainConfig, train

  state = random_torch_model(tvm, "squeezenet1_1").state_dict()
  torch.save(state, tmp_path / "sq.pth")
  assert main(["convert", "squeezenet1_1", str(tmp_path / "sq.pth"), str(tmp_path / "sq.safetensors")]) == 0
  assert "wrote" in capsys.readouterr().out
  back = read_state_dict(tmp_path / "sq.safetensors")
  assert set(back) == set(state) and all(np.array_equal(back[k], v.numpy()) for k, v in state.items())
  assert main(["convert", "resnet18", str(tmp_path / "sq.pth"), str(tmp_path / "x.safetensors")]) == 2
  assert "looks like a squeezenet1_1 checkpoint given for resnet18" in capsys.readouterr().err

  # Fine-tune from the file on the one-channel digits: a new 10-class head, a frozen backbone.
  cfg = TrainConfig(model="squeezenet1_1", dataset="digits", init_from=str(tmp_path / "sq.safetensors"),
                    freeze="backbone", epochs=1, max_steps=2, batch_size=16, workdir=str(tmp_path / "run"),
                    progress=False, plots=False)
  train(cfg)
  assert "head initialised afresh for 10 classes (the checkpoint's has 1000)" in capsys.readouterr().out
  assert main(["convert", "squeezenet1_1", str(tmp_path / "run"), str(tmp_path / "run.pth")]) == 0
  model, variables = load_torchvision("squeezenet1_1", tmp_path / "run.pth", in_channels=1)
  assert model.num_classes == 10
  # The frozen backbone is the file's (the stem's RGB kernel summed for gray input).
  np.testing.assert_allclose(variables["params"]["fire1"]["squeeze"]["kernel"],
                             state["features.3.squeeze.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_allclose(variables["params"]["stem_conv"]["kernel"][..., 0, :],
                             state["features.0.weight"].numpy().sum(1).transpose(1, 2, 0), rtol=1e-6)
  with pytest.raises(FileNotFoundError, match=r"init_from '.*missing.pth' does not exist"):
    train(TrainConfig(model="squeezenet1_1", init_from=str(tmp_path / "missing.pth"), workdir=str(tmp_path / "r2")))
  assert not (tmp_path / "r2").exists()


def test_imagenet_preprocess_matches_torchvision(tvm, rng):
  from torchvision.transforms import functional as F

  from jaxconv.data import IMAGENET_MEAN, IMAGENET_STD, decode_predictions, imagenet_classes, imagenet_preprocess

  def reference(img_chw):   # torchvision's ImageClassification preset on a tensor image
    x = F.center_crop(F.resize(img_chw, 256, antialias=True), 224)
    return F.normalize(F.convert_image_dtype(x, torch.float32), IMAGENET_MEAN, IMAGENET_STD).numpy().transpose(1, 2, 0)

  for h, w in ((300, 400), (480, 333), (256, 256)):
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    want = reference(torch.from_numpy(img.transpose(2, 0, 1).copy()))
    got = np.asarray(imagenet_preprocess(img))
    # uint8 rounding after the resize may differ by one level in a few pixels.
    assert got.shape == (224, 224, 3) and np.abs(got - want).max() <= 1.01 / 255 / min(IMAGENET_STD)
    assert np.mean(np.abs(got - want) > 1e-5) < 1e-3
  floats = rng.random(size=(2, 300, 400, 3)).astype(np.float32)
  got = imagenet_preprocess(floats)
  want = [F.normalize(F.center_crop(F.resize(torch.from_numpy(f.transpose(2, 0, 1).copy()), 256, antialias=True), 224),
                      IMAGENET_MEAN, IMAGENET_STD).numpy().transpose(1, 2, 0) for f in floats]
  np.testing.assert_allclose(got, np.stack(want), atol=2e-4)
  with pytest.raises(ValueError, match=r"images must be \[H, W, 3\] or \[N, H, W, 3\]"):
    imagenet_preprocess(np.zeros((3, 32, 32), np.uint8))

  names = imagenet_classes()
  assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
  logits = np.zeros((1, 1000), np.float32)
  logits[0, 207] = 10.0
  (best, *_), = decode_predictions(logits, top=3)
  assert best[:2] == (207, "golden retriever") and best[2] > 0.9
