"""Runs suites and keeps their results: one JSON document, rewritten after every row.

The results file is written atomically (temporary file, then rename) after each row, so an
interrupted run loses at most the row in progress, and the report can be re-rendered from it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from jaxconv.bench import _cases, _impls, _models
from jaxconv.bench._env import collect_environment, datasheet_peak, matmul_ceiling
from jaxconv.bench._harness import agreement, default_tolerance, measure_interleaved

SCHEMA = 1
RESULTS_FILE = "results.json"


def all_suites() -> dict[str, str]:
  """Every suite name with its one-line description, layer suites first."""
  out = {name: desc for name, (desc, _) in _cases.LAYER_SUITES.items()}
  out.update({name: desc for name, (desc, _) in _models.MODEL_SUITES.items()})
  return out


def check_suites(names: Sequence[str]) -> list[str]:
  """Validates suite names (keeps order, drops repeats).

  Raises:
    ValueError: naming the unknown suites and listing the valid ones.

  Example:
    >>> check_suites(["special", "lenet_mnist", "special"])
    ['special', 'lenet_mnist']
  """
  valid = all_suites()
  unknown = [n for n in names if n not in valid]
  if unknown:
    raise ValueError(f"unknown suite(s) {', '.join(map(repr, unknown))}; valid suites: {', '.join(valid)}.")
  return list(dict.fromkeys(names))


def default_suites(backend: str, include_large: bool) -> list[str]:
  """Every layer suite and the model suites; GPU-sized models only on accelerators or on request,
  the optional layer suites (:data:`jaxconv.bench._cases.OPTIONAL_SUITES`) only on request.

  Example:
    >>> "resnet_cifar_b128" in default_suites("cpu", False), "resnet50_train" in default_suites("gpu", False)
    (False, True)
  """
  names = [n for n in _cases.LAYER_SUITES if include_large or n not in _cases.OPTIONAL_SUITES]
  for name, (_, case) in _models.MODEL_SUITES.items():
    if not case.large or include_large or backend != "cpu":
      names.append(name)
  return names


def check_out_dir(path: str) -> str:
  """Creates ``path`` if needed and proves it writable, before anything runs.

  Raises:
    ValueError: if the folder cannot be created or written, saying why.
  """
  path = os.path.abspath(path)
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
      pass
  except OSError as e:
    raise ValueError(f"--out {path!r} is not a writable directory ({e.strerror or e}).") from e
  return path


def save_json(doc: dict[str, Any], path: str) -> None:
  """Writes ``doc`` atomically: a crash never leaves a half-written file."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".results-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(doc, f, indent=1, default=float)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


class Run:
  """One benchmark run: configuration, environment, ceiling, rows; saved after every row."""

  def __init__(self, out_dir: str, config: dict[str, Any], log: Callable[[str], None] = print):
    self.out_dir = out_dir
    self.path = os.path.join(out_dir, RESULTS_FILE)
    self.log = log
    self.doc: dict[str, Any] = {"schema": SCHEMA, "status": "running", "config": config, "notes": [], "suites": {}}
    self.t0 = time.perf_counter()

  def note(self, text: str) -> None:
    if text not in self.doc["notes"]:
      self.doc["notes"].append(text)
      self.log(f"note: {text}")

  def save(self) -> None:
    self.doc["duration_s"] = time.perf_counter() - self.t0
    save_json(self.doc, self.path)


def _ratio_text(results: dict[str, Any]) -> str:
  parts = []
  for impl, r in results.items():
    if "flops_per_s" in r:
      parts.append(f"{impl} {r['flops_per_s'] / 1e9:.1f}")
    elif "error" in r:
      parts.append(f"{impl} ERROR")
  return " | ".join(parts)


def run_layer_suite(run: Run, name: str, *, impls: Sequence[str], torch: Any = None) -> None:
  """Measures every case x mode x implementation of a layer suite, saving after each row."""
  cfg = run.doc["config"]
  env = run.doc["environment"]
  desc, _ = _cases.LAYER_SUITES[name]
  cases = _cases.suite_cases(name, cfg["quick"], cfg.get("batch_scale", 1))
  suite = run.doc["suites"][name] = {"kind": "layer", "description": desc, "rows": [], "complete": False}
  ceiling = run.doc["ceiling"]["flops_per_s"]
  peak = (run.doc.get("datasheet_peak") or {}).get("flops_per_s")
  tol = default_tolerance(cfg["dtype"], env["backend"])
  ordered = ["reference"] + [i for i in impls if i != "reference"]  # the reference first: its output is the yardstick
  for case in cases:
    inputs = _impls.make_inputs(case, cfg["seed"])
    anchor = None
    if cfg["anchor"]:
      try:
        anchor = _impls.loops_anchor(case, cfg["seed"])
      except Exception as e:  # noqa: BLE001
        anchor = {"error": f"{type(e).__name__}: {e}"}
    for mode in cfg["modes"]:
      row: dict[str, Any] = {
          "case": case.name, "shape": case.describe(), "mode": mode, "flops": case.flops(mode), "results": {},
      }
      if anchor is not None and mode == cfg["modes"][0]:
        row["anchor"] = anchor
      prepares, expected = {}, None
      for impl in ordered:
        if impl == "torch" and torch is None:
          continue
        try:
          if impl not in impls:  # the reference is excluded from timing but still the yardstick
            expected = _impls.reference_outputs(case, mode, inputs, cfg["dtype"])
          else:
            prepares[impl] = _impls.layer_prepare(impl, case, mode, inputs, cfg["dtype"], torch)
        except Exception as e:  # noqa: BLE001 - one failing implementation must not lose the row
          row["results"][impl] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
      measured = measure_interleaved(prepares, eager=("torch",), repeats=cfg["repeats"], warmup=cfg["warmup"],
                                     budget_s=cfg["budget_s"])
      outs = {}
      for impl, m in measured.items():
        if isinstance(m, BaseException):
          row["results"][impl] = {"error": f"{type(m).__name__}: {str(m)[:500]}"}
          continue
        timing, out = m
        outs[impl] = _impls.torch_to_channels_last(out, case, mode) if impl == "torch" else out
        res: dict[str, Any] = {"timing": timing.to_dict(), "flops_per_s": row["flops"] / timing.median_s}
        res["frac_ceiling"] = res["flops_per_s"] / ceiling
        if peak:
          res["frac_peak"] = res["flops_per_s"] / peak
        row["results"][impl] = res
      if "reference" in outs:
        expected = outs["reference"] if env["backend"] == "cpu" else _impls.reference_outputs(
            case, mode, inputs, cfg["dtype"])
      for impl, out in outs.items():
        row["results"][impl]["agreement"] = agreement(out, expected, tol=tol).to_dict() if expected is not None else None
      del outs, measured
      suite["rows"].append(row)
      run.save()
      bad = [i for i, r in row["results"].items() if r.get("agreement") and not r["agreement"]["ok"]]
      flag = f"  DISAGREES: {', '.join(bad)}" if bad else ""
      run.log(f"[{name}] {case.name:<24} {mode:<8} GFLOP/s: {_ratio_text(row['results'])}{flag}")
  suite["complete"] = True
  run.save()


def run_model_suite(run: Run, name: str, *, impls: Sequence[str], torch: Any = None) -> None:
  """Measures one model suite's train step for jaxconv, stock Flax and PyTorch."""
  cfg = run.doc["config"]
  env = run.doc["environment"]
  desc, case = _models.MODEL_SUITES[name]
  suite = run.doc["suites"][name] = {"kind": "model", "description": desc, "rows": [], "complete": False}
  if cfg["quick"]:
    if not case.quick_batch:
      suite["notes"] = ["not part of --quick"]
      suite["complete"] = True
      run.save()
      return
    batch = case.quick_batch
  else:
    batch = case.gpu_batch if (case.gpu_batch and env["backend"] != "cpu") else case.batch
  model_impls = tuple(i for i in ("jaxconv", "flax", "torch") if i in impls)
  row = _models.run_model_case(
      case, batch=batch, impls=model_impls, dtype=cfg["dtype"], repeats=cfg["repeats"], warmup=cfg["warmup"],
      budget_s=cfg["model_budget_s"], seed=cfg["seed"], torch=torch, ceiling=run.doc["ceiling"]["flops_per_s"],
  )
  for n in row["notes"]:
    run.note(n)
  suite["rows"].append(row)
  suite["complete"] = True
  run.save()
  text = " | ".join(
      f"{i} {r['images_per_s']:.0f} img/s" if "images_per_s" in r else f"{i} ERROR" for i, r in row["results"].items()
  )
  run.log(f"[{name}] {case.name} batch {batch}: {text}")


def _ceiling(dtype: str, size: Optional[int], repeats: int) -> dict[str, Any]:
  c = matmul_ceiling(dtype, size=size, repeats=max(repeats, 3), warmup=1, budget_s=3.0)
  c["medians"] = [c["flops_per_s"]]
  return c


def update_ceiling(doc: dict[str, Any], again: dict[str, Any]) -> None:
  """Adds a second ceiling measurement: the ceiling becomes the higher of the medians, and every
  row's ``frac_ceiling`` is recomputed (a busy moment must not make the ceiling look low).

  Example:
    >>> doc = {"ceiling": {"flops_per_s": 10.0, "best_flops_per_s": 11.0, "medians": [10.0]},
    ...        "suites": {"s": {"rows": [{"results": {"jaxconv": {"flops_per_s": 5.0, "frac_ceiling": 0.5}}}]}}}
    >>> update_ceiling(doc, {"flops_per_s": 20.0, "best_flops_per_s": 21.0, "medians": [20.0]})
    >>> doc["ceiling"]["flops_per_s"], doc["ceiling"]["medians"], doc["suites"]["s"]["rows"][0]["results"]["jaxconv"]["frac_ceiling"]
    (20.0, [10.0, 20.0], 0.25)
  """
  c = doc["ceiling"]
  medians = c.get("medians", [c["flops_per_s"]]) + again["medians"]
  if again["flops_per_s"] > c["flops_per_s"]:
    c.update({k: v for k, v in again.items() if k != "medians"})
  c["best_flops_per_s"] = max(c["best_flops_per_s"], again["best_flops_per_s"])
  c["medians"] = medians
  for s in doc.get("suites", {}).values():
    for r in s.get("rows", []):
      for x in r.get("results", {}).values():
        if "flops_per_s" in x:
          x["frac_ceiling"] = x["flops_per_s"] / c["flops_per_s"]


def execute(
    out_dir: str,
    *,
    suites: Sequence[str],
    quick: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    budget_s: Optional[float] = 2.0,
    model_budget_s: Optional[float] = 20.0,
    dtype: str = "float32",
    impls: Sequence[str] = _impls.IMPLS,
    modes: Sequence[str] = _cases.MODES,
    seed: int = 0,
    anchor: bool = True,
    batch_scale: int = 1,
    ceiling_size: Optional[int] = None,
    argv: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = print,
    render: bool = True,
) -> dict[str, Any]:
  """Runs ``suites`` and writes ``results.json`` (after every row) and the report into ``out_dir``.

  Returns:
    The results document (also on disk). On KeyboardInterrupt the partial results are saved
    and rendered with ``status: "interrupted"`` before the interrupt propagates.
  """
  from jaxconv.bench import _report

  config = {
      "suites": list(suites), "quick": quick, "repeats": repeats, "warmup": warmup, "budget_s": budget_s,
      "model_budget_s": model_budget_s, "dtype": dtype, "impls": list(impls), "modes": list(modes), "seed": seed,
      "anchor": anchor, "batch_scale": batch_scale, "argv": list(argv) if argv is not None else None,
  }
  run = Run(out_dir, config, log)
  torch = None
  if "torch" in impls:
    torch, why = _impls.import_torch()
    if why:
      run.note(why)
  run.doc["environment"] = collect_environment(torch)
  env = run.doc["environment"]
  run.log(f"jaxconv bench: {env['backend']} ({env['device_kind']}, {env['cpu_model']}, {env['cpu_count']} CPUs); "
          f"writing {run.path}")
  try:
    run.doc["ceiling"] = _ceiling(dtype, ceiling_size, repeats)
    run.doc["datasheet_peak"] = datasheet_peak(env["device_kind"], dtype)
    run.save()
    run.log(f"ceiling: {run.doc['ceiling']['size']}^2 {dtype} matmul at {run.doc['ceiling']['flops_per_s'] / 1e9:.1f} GFLOP/s")
    for name in suites:
      wall0, cpu0 = time.perf_counter(), time.process_time()
      if name in _cases.LAYER_SUITES:
        run_layer_suite(run, name, impls=impls, torch=torch)
      else:
        run_model_suite(run, name, impls=impls, torch=torch)
      # Wall and CPU seconds of the suite: on a busy machine the CPU time is the better guide to
      # how long the suite takes on a quiet one.
      run.doc["suites"][name]["wall_s"] = time.perf_counter() - wall0
      run.doc["suites"][name]["cpu_s"] = time.process_time() - cpu0
      run.save()
      if render:
        _report.write_markdown(run.doc, out_dir)
    end = _ceiling(dtype, ceiling_size, repeats)
    update_ceiling(run.doc, end)
    run.doc["status"] = "complete"
  except KeyboardInterrupt:
    run.doc["status"] = "interrupted"
    run.note("interrupted: the results are partial")
    raise
  except Exception as e:
    run.doc["status"] = "failed"
    run.note(f"failed: {type(e).__name__}: {e}; the results are partial")
    raise
  finally:
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    run.save()
    if render:
      _report.write_report(run.doc, out_dir, log=log)
  return run.doc
