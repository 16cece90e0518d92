"""The public face: every name in each package's ``__all__`` imports and is documented."""

import importlib
import inspect

import pytest

PUBLIC = [
    "jaxconv",
    "jaxconv.ops",
    "jaxconv.ops.shapes",
    "jaxconv.reference",
    "jaxconv.nn",
    "jaxconv.nn.blocks",
    "jaxconv.models",
    "jaxconv.summary",
    "jaxconv.data",
    "jaxconv.train",
    "jaxconv.viz",
    "jaxconv.bench",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_imports_and_has_a_docstring(name):
  module = importlib.import_module(name)
  public = getattr(module, "__all__", None)
  if public is None:  # a module without __all__: its names not starting with "_"
    public = [n for n, v in vars(module).items() if not n.startswith("_") and getattr(v, "__module__", "").startswith("jaxconv")]
  assert public, f"{name} exports nothing"
  undocumented = []
  for attr in public:
    value = getattr(module, attr)  # AttributeError here means __all__ lists a missing name
    if (inspect.isfunction(value) or inspect.isclass(value) or inspect.ismodule(value)) and not inspect.getdoc(value):
      undocumented.append(attr)
  assert not undocumented, f"{name}: public names without a docstring: {undocumented}"


def test_top_level_exports():
  import jaxconv

  assert callable(jaxconv.summary)
  assert callable(jaxconv.ops.conv)
  assert callable(jaxconv.models.create_model)
  assert jaxconv.__version__


def test_ops_and_the_launcher_import_without_flax():
  # jaxconv.ops is the pure layer: it and jaxconv itself import with Flax, Optax and Orbax
  # hidden; the Flax layers come on first use. So do the launcher and the host-memory setup,
  # which jaxconv.train exports without importing the training loop.
  import subprocess
  import sys
  script = (
      "import sys; sys.modules['flax'] = sys.modules['optax'] = sys.modules['orbax'] = None\n"
      "import jax.numpy as jnp, jaxconv, jaxconv.ops as ops\n"
      "assert ops.conv(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4))).shape == (1, 6, 6, 4)\n"
      "import jaxconv.train.launch\n"
      "from jaxconv.train import keep_host_memory\n"
      "assert 'flax' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
      "try:\n  jaxconv.nn\nexcept ImportError:\n  print('nn-needs-flax')\n"
      "try:\n  from jaxconv.train import train\nexcept ImportError:\n  print('train-needs-flax')\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["nn-needs-flax", "train-needs-flax"]


def test_lazy_exports_match_what_static_checkers_see():
  """``jaxconv.train`` imports its names on first use; its ``TYPE_CHECKING`` imports (what
  type checkers and IDEs read) name the same objects from the same modules."""
  import ast

  import jaxconv.train as package

  tree = ast.parse(inspect.getsource(package))
  block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
  static = {alias.name: node.module.rsplit(".", 1)[1] for node in block.body for alias in node.names}
  assert static == package._MODULE_OF
  for name, module in static.items():
    assert getattr(package, name) is getattr(importlib.import_module(f"jaxconv.train.{module}"), name)
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    package.nope
