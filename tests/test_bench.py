"""The benchmark suite: timing on fake clocks, agreement, adapters, reports, CLI errors."""

import json
import math
import os
import sys

import jax
import jax.test_util
import numpy as np
import pytest

from jaxconv import bench
from jaxconv.bench import _cases, _impls, _models, _report, _runner, _stock, cli
from jaxconv.bench._harness import Timing, agreement, measure, measure_interleaved


def fake_clock(ticks):
  it = iter(ticks)
  return lambda: next(it)


# --- timing harness --------------------------------------------------------------------------


def test_measure_separates_compile_and_warmup_and_takes_the_median():
  calls = []
  # prepare 0->10 (compile); warm-ups: 10->11, 11->11.5; timed: 0.3, 0.1, 0.2, 0.5, 0.4
  clock = fake_clock([0, 10, 10, 11, 11, 11.5, 20, 20.3, 21, 21.1, 22, 22.2, 23, 23.5, 24, 24.4])
  t, out = measure(prepare=lambda: (lambda: calls.append(1) or len(calls)), repeats=5, warmup=2, timer=clock,
                   wait=lambda o: o)
  assert t.compile_s == 10
  assert t.warmup == 2 and t.first_run_s == 1
  np.testing.assert_allclose(t.times_s, [0.3, 0.1, 0.2, 0.5, 0.4])
  assert t.median_s == pytest.approx(0.3) and t.min_s == pytest.approx(0.1) and t.max_s == pytest.approx(0.5)
  assert out == 7 and len(calls) == 7  # the result of the last timed run; 2 warm-ups + 5 timed


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
  assert Timing((4.0, 1.0, 3.0, 2.0)).median_s == 2.5
  assert Timing((4.0, 1.0, 3.0, 2.0)).to_dict()["n"] == 4


def test_measure_eager_has_no_compile_time_and_waits_on_each_result():
  waited = []
  clock = fake_clock([0, 1, 1, 3, 3, 4])
  t, _ = measure(run=lambda: "r", repeats=2, warmup=1, timer=clock, wait=waited.append)
  assert t.compile_s is None and t.times_s == (2, 1) and waited == ["r", "r", "r"]


def test_budget_cuts_repeats_but_not_below_the_minimum():
  clock = fake_clock([0, 2] + [10 * i + d for i in range(1, 20) for d in (0, 2)])
  t, _ = measure(run=lambda: 0, repeats=10, warmup=1, budget_s=1.0, min_repeats=3, timer=clock, wait=lambda o: o)
  assert t.n == 3  # a 2 s warm-up with a 1 s budget: the minimum of 3 runs
  clock = fake_clock([0, 0.1] + [10 * i + d for i in range(1, 20) for d in (0, 0.1)])
  t, _ = measure(run=lambda: 0, repeats=10, warmup=1, budget_s=0.55, timer=clock, wait=lambda o: o)
  assert t.n == 5  # 0.55 s / 0.1 s per run


def test_interleaved_runs_alternate_and_a_failure_stays_local():
  order = []

  def prep(name, fail_at=None):
    def run():
      order.append(name)
      if fail_at is not None and order.count(name) == fail_at:
        raise RuntimeError(f"{name} broke")
      return name
    return lambda: run

  def broken_compile():
    raise ValueError("cannot compile")

  out = measure_interleaved({"a": prep("a"), "b": prep("b"), "c": prep("c", fail_at=2), "d": broken_compile},
                            repeats=3, warmup=1, waits={k: (lambda o: o) for k in "abcd"})
  assert order == ["a", "b", "c", "a", "b", "c", "a", "b", "a", "b"]  # round by round; c fails in round 2
  assert out["a"][0].n == 3 and out["b"][1] == "b"
  assert isinstance(out["c"], RuntimeError) and isinstance(out["d"], ValueError)


def test_measure_rejects_bad_arguments():
  with pytest.raises(TypeError, match="exactly one of run= or prepare="):
    measure()
  with pytest.raises(ValueError, match="repeats must be an int >= 1; got 0"):
    measure(run=lambda: 0, repeats=0)
  with pytest.raises(ValueError, match="warmup must be an int >= 0; got -1"):
    measure(run=lambda: 0, warmup=-1)


def test_measure_blocks_on_jax_arrays():
  x = jax.numpy.ones((64, 64))
  t, out = measure(prepare=lambda: (lambda: x @ x), repeats=3, warmup=1)
  assert t.n == 3 and all(v > 0 for v in t.times_s) and t.compile_s >= 0
  np.testing.assert_allclose(np.asarray(out), np.full((64, 64), 64.0))


# --- agreement -------------------------------------------------------------------------------


def test_agreement_is_relative_to_the_scale_of_each_output():
  e = (np.array([100.0, -200.0]), np.array([1e-3, 2e-3]))
  a = agreement((e[0] + 0.01, e[1]), e, tol=1e-4)
  assert a.ok and a.max_abs_err == pytest.approx(0.01) and a.rel_err == pytest.approx(0.01 / 200)
  b = agreement((e[0], e[1] + 1e-6), e, tol=1e-4)  # small absolute error, but 5e-4 of that output's scale
  assert not b.ok and b.rel_err == pytest.approx(5e-4) and "5.00e-04 > tolerance 1e-04" in b.detail


def test_agreement_catches_shapes_counts_and_non_finite_values():
  e = np.ones((2, 3))
  assert "shape (3, 2), expected (2, 3)" in agreement(np.ones((3, 2)), e, tol=1).detail
  assert "1 outputs, expected 2" in agreement(e, (e, e), tol=1).detail
  bad = e.copy()
  bad[0, 0] = np.nan
  assert not agreement(bad, e, tol=1).ok and "non-finite" in agreement(bad, e, tol=1).detail
  assert agreement(np.zeros(3), np.zeros(3), tol=1e-6).ok
  assert not agreement(np.full(3, 1e-3), np.zeros(3), tol=1e-6).ok


def test_default_tolerance():
  assert bench.default_tolerance("float32", "cpu") == 1e-4
  assert bench.default_tolerance("float32", "gpu") == 2e-2


# --- cases and adapters ---------------------------------------------------------------------


def test_case_arithmetic_by_hand():
  c = bench.ConvCase("c", batch=2, spatial=(9, 7), c_in=4, c_out=6, kernel=(3, 3), stride=2, padding=1, groups=2)
  assert c.out_spatial == (5, 4) and c.kernel_shape == (3, 3, 2, 6) and c.y_shape == (2, 5, 4, 6)
  assert c.macs == 2 * 5 * 4 * 6 * 9 * 2
  assert [c.flops(m) for m in bench.MODES] == [2 * c.macs, 6 * c.macs, 4 * c.macs, 4 * c.macs]
  t = bench.ConvCase("t", batch=1, spatial=(5,), c_in=3, c_out=2, kernel=(4,), stride=2, padding=1, transposed=True)
  assert t.out_spatial == (jax.eval_shape(lambda: _impls._jaxconv_fn(t)(np.zeros(t.x_shape, np.float32), np.zeros(t.kernel_shape, np.float32))).shape[1],)
  assert t.out_spatial == (10,) and t.macs == 5 * 3 * 4 * 2


def test_every_suite_case_is_consistent():
  names = bench.all_suites()
  assert set(bench.LAYER_SUITES) | set(bench.MODEL_SUITES) == set(names)
  for name in bench.LAYER_SUITES:
    quick = _cases.suite_cases(name, quick=True)
    assert quick, f"{name} has no --quick case"
    for c in _cases.suite_cases(name):
      assert all(o >= 1 for o in c.out_spatial), c
      t = c.tiny()
      assert (t.strides, t.dilations, t.pads, t.transposed, t.nd) == (c.strides, c.dilations, c.pads, c.transposed, c.nd)
      assert (t.groups > 1) == (c.groups > 1) and all(o >= 1 for o in t.out_spatial)


TINY = [
    bench.ConvCase("grouped 1-D", 2, (11,), 4, 6, (3,), stride=2, padding=1, dilation=2, groups=2),
    bench.ConvCase("transposed", 2, (4, 5), 3, 2, (3, 2), stride=(2, 1), padding=1, transposed=True),
    bench.ConvCase("depthwise 3-D", 1, (4, 4, 3), 3, 6, (3, 3, 1), padding=(1, 1, 0), groups=3),
]


# Every mode on one case; forward and both gradients on the others (the --quick run in CI covers
# every mode of every suite's quick cases).
@pytest.mark.parametrize("case, modes", [(TINY[0], bench.MODES), (TINY[1], ("fwd", "fwd+bwd")),
                                         (TINY[2], ("fwd", "fwd+bwd"))], ids=lambda v: getattr(v, "name", ""))
def test_every_adapter_agrees_with_the_reference(case, modes):
  torch, _ = _impls.import_torch()
  inputs = _impls.make_inputs(case)
  impls = ["jaxconv", "flax"] + (["torch"] if torch is not None else [])
  for mode in modes:
    _, ref = measure(prepare=_impls.layer_prepare("reference", case, mode, inputs, "float32"), repeats=1, warmup=0)
    for impl in impls:
      _, out = measure(prepare=_impls.layer_prepare(impl, case, mode, inputs, "float32", torch), repeats=1, warmup=0)
      if impl == "torch":
        out = _impls.torch_to_channels_last(out, case, mode)
      a = agreement(out, ref, tol=1e-5)
      assert a.ok, (impl, mode, a)
  anchor = _impls.loops_anchor(case)
  assert anchor["agreement"]["ok"], anchor


def test_the_reference_gradients_match_numerical_differences():
  case = TINY[0]
  inputs = _impls.make_inputs(case)
  f = _impls._reference_fn(case)
  jax.test_util.check_grads(f, (inputs.x, inputs.w), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


def test_a_missing_peer_is_reported_not_fatal(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  torch, why = _impls.import_torch()
  assert torch is None and "PyTorch peer unavailable (ModuleNotFoundError: import of torch halted" in why


# --- stock models ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, image, classes, expected", [
    ("lenet5", (28, 28, 1), 10, 61_706),
    ("resnet18_cifar", (32, 32, 3), 10, 11_173_962),
    ("resnet50", (224, 224, 3), 1000, 25_557_032),  # torchvision's count
])
def test_stock_models_have_the_published_parameter_counts(name, image, classes, expected):
  m = _stock.stock_flax_model(name, classes)
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), jax.numpy.zeros((1, *image)), train=False))
  assert sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(v["params"])) == expected
  torch, _ = _impls.import_torch()
  if torch is not None:  # the PyTorch peer is the same architecture
    assert sum(p.numel() for p in _stock.torch_model(torch, name, classes).parameters()) == expected


@pytest.mark.parametrize("suite", sorted(_models.MODEL_SUITES))
def test_zoo_and_stock_models_are_the_same_size(suite):
  case = _models.MODEL_SUITES[suite][1]
  zoo, why = _models._zoo_model(case, jax.numpy.float32)
  assert why is None
  count = lambda m: sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(  # noqa: E731
      jax.eval_shape(lambda: m.init(jax.random.key(0), jax.numpy.zeros((1, *case.image)), train=False))["params"]))
  assert count(zoo) == count(_stock.stock_flax_model(case.name, case.num_classes))


def test_model_row_measures_a_train_step_and_checks_the_loss():
  case = _models.MODEL_SUITES["lenet5_train"][1]
  row = _models.run_model_case(case, batch=4, impls=("jaxconv", "flax"), dtype="float32", repeats=2, warmup=1,
                               budget_s=None, seed=0, ceiling=1e9)
  assert row["results"]["jaxconv"]["ok"] and row["results"]["jaxconv"]["zoo_model"] == "LeNet5"
  r = row["results"]["flax"]
  assert r["ok"] and r["timing"]["n"] == 2 and r["images_per_s"] == pytest.approx(4 / r["timing"]["median_s"])
  assert math.isfinite(r["loss_last"]) and r["loss_last"] < r["loss_first"]  # 3 SGD steps on one batch
  assert row["flops"] > 3 * 2 * 4 * 28 * 28 * 6 * 25  # at least the first convolution's share


# --- reports ---------------------------------------------------------------------------------


def _row(case, mode, fps, ok=True, rel=1e-7):
  return {
      "case": case, "shape": "8x8x4->4 k3 N1", "mode": mode, "flops": 2e9,
      "results": {
          impl: {"timing": {"median_s": 2e9 / v, "compile_s": 0.5, "n": 3}, "flops_per_s": v, "frac_ceiling": v / 100e9,
                 "agreement": {"rel_err": rel, "ok": ok if impl == "flax" else True, "detail": "" if ok else "too far",
                               "max_abs_err": rel, "tol": 1e-4}}
          for impl, v in fps.items()
      },
  }


def _doc(status="complete"):
  return {
      "schema": 1, "status": status, "duration_s": 12.0, "notes": ["PyTorch peer unavailable (ImportError)"],
      "config": {"dtype": "float32", "repeats": 5, "warmup": 1, "budget_s": 2.0, "seed": 0, "quick": False,
                 "argv": ["--suite", "special"]},
      "environment": {"backend": "cpu", "device_kind": "cpu", "versions": {"jax": "0.10.2"}, "thread_env": {}},
      "ceiling": {"size": 512, "dtype": "float32", "flops_per_s": 100e9, "best_flops_per_s": 110e9,
                  "medians": [100e9], "timing": {"n": 3}},
      "suites": {
          "special": {"kind": "layer", "description": "d", "complete": status == "complete", "rows": [
              _row("a", "fwd", {"reference": 10e9, "jaxconv": 20e9, "flax": 40e9}),
              _row("b", "fwd", {"reference": 10e9, "jaxconv": 80e9, "flax": 40e9}, ok=False, rel=3e-3),
              _row("a", "fwd+bwd", {"reference": 5e9, "jaxconv": 5e9}),
          ]},
          "lenet5_train": {"kind": "model", "description": "m", "complete": True, "rows": [{
              "model": "lenet5", "batch": 8, "flops": 1e9, "results": {
                  "jaxconv": {"images_per_s": 300.0, "loss_first": 2.3, "loss_last": 2.1, "ok": True, "timing": {}},
                  "flax": {"images_per_s": 100.0, "loss_first": 2.3, "loss_last": 2.2, "ok": True, "timing": {}}}}]},
      },
  }


def test_markdown_has_ratio_tables_verdicts_and_flags_disagreement():
  md = bench.render_markdown(_doc())
  line_a = next(l for l in md.splitlines() if l.startswith("| a |") and "40" in l)
  cells = [c.strip() for c in line_a.split("|")]
  assert "2.00" in cells and "0.50" in cells and "20%" in cells  # jaxconv/ref, jaxconv/flax, % ceiling
  assert "**FAIL** flax (3e-03)" in md and "1 result(s) disagree with the reference" in md
  assert "jaxconv/ref 4.00x" in md  # geometric mean of 2 and 8 on the fwd rows
  assert "PyTorch peer unavailable" in md and "## Model suites" in md
  assert "jaxconv is 3.00x flax" in md and "Status: **complete**" in md
  # headline: fwd jaxconv/ref, fwd+bwd jaxconv/ref, fwd jaxconv/flax (sqrt(0.5 * 2)), ..., rows that agree
  assert "| special | 4.00x | 1.00x | 1.00x | — | — | 5% | 7/8 |" in md
  assert "lenet5 train step (batch 8): jaxconv 300 images/s, 3.00x stock Flax, — PyTorch." in md


def test_wins_and_hand_written_analysis(tmp_path):
  w = "\n".join(_report.wins(_doc()))
  assert "- **fwd**: fastest flax 1/2, jaxconv 1/2; a peer is >1.5x faster than jaxconv on 1: special/a (flax 2.0x)." in w
  (tmp_path / "analysis.md").write_text("XLA wins the forward because ...\n")
  bench.write_report(_doc(), str(tmp_path), plots=False, log=lambda s: None)
  md = (tmp_path / "report.md").read_text()
  assert "## Analysis (hand-written: analysis.md in this folder)\n\nXLA wins the forward because ..." in md


def test_partial_results_render():
  doc = _doc(status="interrupted")
  del doc["ceiling"]
  md = bench.render_markdown(doc)
  assert "Status: **interrupted**" in md and "*Incomplete: the run stopped inside this suite.*" in md


def test_write_report_writes_markdown_and_pngs(tmp_path):
  paths = bench.write_report(_doc(), str(tmp_path), log=lambda s: None)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ["models_images_per_s.png", "report.md", "special_ceiling.png", "special_gflops.png"]
  for p in paths:
    if p.endswith(".png"):
      with open(p, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_json_is_saved_atomically_and_round_trips(tmp_path):
  path = str(tmp_path / "results.json")
  _runner.save_json(_doc(), path)
  _runner.save_json(_doc("interrupted"), path)
  with open(path) as f:
    assert json.load(f)["status"] == "interrupted"
  assert os.listdir(tmp_path) == ["results.json"]  # no temporary files left behind


# --- running, interrupting, CLI errors --------------------------------------------------------

ONE = ("tiny", (bench.ConvCase("t", 1, (6, 6), 2, 3, (3, 3), padding=1),))


def test_execute_notes_a_missing_peer_and_interrupts_keep_partial_results(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  monkeypatch.setitem(_cases.LAYER_SUITES, "tiny", ONE)
  real = _impls.layer_prepare

  def prepare(impl, case, mode, *a, **k):
    if mode == "fwd+dx":
      raise KeyboardInterrupt
    return real(impl, case, mode, *a, **k)

  monkeypatch.setattr(_impls, "layer_prepare", prepare)
  with pytest.raises(KeyboardInterrupt):
    _runner.execute(str(tmp_path), suites=["tiny"], repeats=1, budget_s=None, ceiling_size=64,
                    modes=("fwd", "fwd+bwd", "fwd+dx"), log=lambda s: None)
  doc = json.loads((tmp_path / "results.json").read_text())
  assert doc["status"] == "interrupted"
  assert [r["mode"] for r in doc["suites"]["tiny"]["rows"]] == ["fwd", "fwd+bwd"]
  assert all(set(r["results"]) == {"reference", "jaxconv", "flax"} for r in doc["suites"]["tiny"]["rows"])
  assert all(x["agreement"]["ok"] for r in doc["suites"]["tiny"]["rows"] for x in r["results"].values())
  assert doc["suites"]["tiny"]["rows"][0]["anchor"]["agreement"]["ok"]
  assert any("PyTorch peer unavailable" in n for n in doc["notes"])
  assert "PyTorch peer unavailable" in (tmp_path / "report.md").read_text()


def test_cli_lists_valid_suites_for_an_unknown_one(tmp_path, capsys):
  assert cli.main(["--suite", "special", "nope", "--suite", "lenet_mnist,x", "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "unknown suite(s) 'nope', 'x'" in err and "lenet_mnist, resnet_cifar" in err and "resnet18_cifar_train" in err
  assert os.listdir(tmp_path) == []


def test_cli_refuses_an_unwritable_out_dir_before_running(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert cli.main(["--suite", "special", "--out", str(blocker / "sub")]) == 2
  assert "is not a writable directory" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--impl", "tensorflow"], "unknown implementation(s) ['tensorflow']"),
    (["--mode", "bwd"], "unknown mode(s) ['bwd']"),
    (["--repeats", "0"], "--repeats must be >= 1; got 0"),
    (["--budget", "-1"], "--budget must be > 0 seconds"),
    (["--batch-scale", "0"], "--batch-scale must be >= 1; got 0"),
])
def test_cli_rejects_bad_options(args, message, capsys):
  assert cli.main(args) == 2
  assert message in capsys.readouterr().err


def test_cli_returns_argparse_errors_and_help_as_a_status(capsys):
  assert cli.main(["--repeats", "many"]) == 2
  assert "invalid int value: 'many'" in capsys.readouterr().err
  assert cli.main(["--help"]) == 0
  assert "--include-large" in capsys.readouterr().out


def test_cli_list_and_render(tmp_path, capsys):
  assert cli.main(["--list"]) == 0
  assert "stage1 3x3 64" in capsys.readouterr().out
  assert cli.main(["--render", str(tmp_path)]) == 2
  _runner.save_json(_doc(), str(tmp_path / "results.json"))
  assert cli.main(["--render", str(tmp_path)]) == 0
  assert (tmp_path / "report.md").exists() and (tmp_path / "special_gflops.png").exists()


def test_failures_make_the_exit_status_nonzero():
  fails = cli._failures(_doc())
  assert fails == ["special b fwd flax: too far"]


def test_datasheet_peaks():
  assert bench.datasheet_peak("NVIDIA H100 80GB HBM3", "float32")["flops_per_s"] == 67e12
  assert bench.datasheet_peak("NVIDIA H100 PCIe", "bfloat16")["flops_per_s"] == 756e12
  assert bench.datasheet_peak("Intel Xeon", "float32") is None


def test_profile_names_operations_by_their_source():
  from benchmarks.profile_step import describe, op_names

  hlo = """HloModule jit_step
%fused_computation.3 (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %neg = f32[4]{0} negate(%param_0), metadata={op_name="jit(step)/transpose(jvp(LeNet5))/fc1/neg"}
}
ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %iota = s32[4]{0} iota(), iota_dimension=0
  %ffi_call.2 = f32[4]{0} custom-call(%p), custom_call_target="jaxconv_narrow_forward_avx2", metadata={op_name="jit(step)/jvp(LeNet5)/conv1/ffi_call"}
  ROOT %neg_fusion = f32[4]{0} fusion(%ffi_call.2), kind=kLoop, calls=%fused_computation.3
}
"""
  names = op_names(hlo)
  assert names["neg_fusion"] == "jit(step)/transpose(jvp(LeNet5))/fc1/neg"  # from the called computation
  assert names["ffi_call.2"].endswith("(jaxconv_narrow_forward_avx2)") and names["iota"] == ""
  assert describe(names["neg_fusion"]) == ("gradient", "fc1/neg")
  assert describe(names["ffi_call.2"])[0] == "forward" and describe("") == ("", "(added by XLA)")
