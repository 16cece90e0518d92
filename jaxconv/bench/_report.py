"""Reports from a results document: Markdown tables of ratios with a verdict per suite, PNG plots.

Everything here reads only the JSON document, so a report can be re-rendered from a saved
``results.json`` (``jaxconv bench --render DIR``). matplotlib is imported lazily, for the plots.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Optional

from jaxconv.bench._cases import MODE_HELP, MODES
from jaxconv.bench._impls import IMPL_LABELS, IMPLS

REPORT_FILE = "report.md"
PEERS = ("reference", "flax", "torch")
SHORT = {"reference": "ref", "flax": "flax", "torch": "torch"}


def _fps(r: Optional[dict]) -> Optional[float]:
  return r.get("flops_per_s") if r else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
  """``a / b``, or ``None`` when either is missing or ``b`` is zero."""
  if a is None or b is None or b == 0:
    return None
  return a / b


def geomean(values: Sequence[Optional[float]]) -> Optional[float]:
  """Geometric mean of the positive values present (``None`` if there are none).

  Example:
    >>> geomean([2.0, 8.0, None])
    4.0
  """
  v = [x for x in values if x is not None and x > 0]
  return math.exp(sum(map(math.log, v)) / len(v)) if v else None


def _f(v: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
  return "—" if v is None else f"{v:{spec}}{suffix}"


def _gflops(v: Optional[float]) -> str:
  if v is None:
    return "—"
  g = v / 1e9
  return f"{g:.0f}" if g >= 100 else f"{g:.1f}" if g >= 1 else f"{g:.2f}"


def _present_impls(rows: Sequence[dict]) -> list[str]:
  seen = {i for r in rows for i in r["results"]}
  return [i for i in IMPLS if i in seen]


def _agree_cell(row: dict) -> str:
  worst, bad, missing = 0.0, [], False
  for impl, r in row["results"].items():
    a = r.get("agreement")
    if "error" in r:
      continue
    if a is None:
      missing = True
      continue
    worst = max(worst, a["rel_err"])
    if not a["ok"]:
      bad.append(impl)
  if bad:
    return f"**FAIL** {', '.join(bad)} ({worst:.0e})"
  return "n/a" if missing and worst == 0 else f"ok {worst:.0e}"


def layer_table(rows: Sequence[dict], mode: str) -> str:
  """One Markdown table of a layer suite's rows in ``mode``: GFLOP/s, ratios, % of ceiling."""
  rows = [r for r in rows if r["mode"] == mode]
  impls = _present_impls(rows)
  peers = [p for p in PEERS if p in impls]
  head = ["layer", "shape", "GFLOP"] + [f"{i} GFLOP/s" for i in impls]
  has_peak = any("frac_peak" in x for r in rows for x in r["results"].values())
  head += [f"jaxconv/{SHORT[p]}" for p in peers] + ["jaxconv % ceil"] + (["jaxconv % peak"] if has_peak else [])
  head += ["jaxconv compile s", "agree (rel err)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    res = r["results"]
    j = res.get("jaxconv", {})
    cells = [r["case"], f"`{r['shape']}`", f"{r['flops'] / 1e9:.3g}"]
    cells += ["error" if "error" in res.get(i, {}) else _gflops(_fps(res.get(i))) for i in impls]
    cells += [_f(ratio(_fps(j), _fps(res.get(p)))) for p in peers]
    cells.append(_f(j.get("frac_ceiling") and 100 * j["frac_ceiling"], ".0f", "%"))
    if has_peak:
      cells.append(_f(j.get("frac_peak") and 100 * j["frac_peak"], ".1f", "%"))
    cells.append(_f((j.get("timing") or {}).get("compile_s"), ".2f"))
    cells.append(_agree_cell(r))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def layer_verdict(rows: Sequence[dict], modes: Sequence[str]) -> list[str]:
  """Short factual verdict lines of a layer suite: geometric-mean ratios, ceiling, agreement."""
  out = []
  for mode in modes:
    mr = [r for r in rows if r["mode"] == mode]
    if not mr:
      continue
    parts = []
    for p in PEERS:
      g = geomean([ratio(_fps(r["results"].get("jaxconv")), _fps(r["results"].get(p))) for r in mr])
      if g is not None:
        parts.append(f"jaxconv/{SHORT[p]} {g:.2f}x")
    fr = [r["results"].get("jaxconv", {}).get("frac_ceiling") for r in mr]
    fr = [f for f in fr if f is not None]
    if len(fr) == 1:
      parts.append(f"jaxconv at {100 * fr[0]:.0f}% of the ceiling")
    elif fr:
      parts.append(f"jaxconv at {100 * min(fr):.0f}-{100 * max(fr):.0f}% of the ceiling (median {100 * statistics.median(fr):.0f}%)")
    wins: dict[str, int] = {}
    for r in mr:
      best = max(((i, _fps(x)) for i, x in r["results"].items() if _fps(x)), key=lambda t: t[1], default=None)
      if best:
        wins[best[0]] = wins.get(best[0], 0) + 1
    if wins:
      parts.append("fastest: " + ", ".join(f"{i} {n}/{len(mr)}" for i, n in sorted(wins.items(), key=lambda t: -t[1])))
    out.append(f"- **{mode}** (geometric means): " + "; ".join(parts) + ".")
  bad = [(r["case"], r["mode"], i) for r in rows for i, x in r["results"].items()
         if x.get("agreement") and not x["agreement"]["ok"]]
  errs = [(r["case"], r["mode"], i) for r in rows for i, x in r["results"].items() if "error" in x]
  worst = max((x["agreement"]["rel_err"] for r in rows for x in r["results"].values() if x.get("agreement")), default=None)
  if bad:
    out.append(f"- **Agreement: {len(bad)} result(s) disagree with the reference**: "
               + "; ".join(f"{c} {m} {i}" for c, m, i in bad[:8]) + ".")
  elif worst is not None:
    out.append(f"- Agreement: every result matches the reference (worst relative error {worst:.1e}).")
  anchors = [r["anchor"] for r in rows if r.get("anchor")]
  if anchors:
    a_bad = [a for a in anchors if "error" in a or not a["agreement"]["ok"]]
    out.append(f"- Anchor: the reference matches NumPy loops on the tiny version of {len(anchors) - len(a_bad)}/"
               f"{len(anchors)} configurations" + (" (**mismatch**)" if a_bad else "") + ".")
  if errs:
    out.append(f"- Errors in {len(errs)} result(s): " + "; ".join(f"{c} {m} {i}" for c, m, i in errs[:8]) + ".")
  return out


def model_table(doc: dict) -> tuple[str, list[str]]:
  """The model suites' table (images/s and ratios) and verdict lines."""
  head = ["suite", "model", "batch", "jaxconv img/s", "flax img/s", "torch img/s", "jaxconv/flax", "jaxconv/torch",
          "jaxconv % ceil", "jaxconv compile s", "loss first→last"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  verdict = []
  for name, s in doc.get("suites", {}).items():
    if s.get("kind") != "model":
      continue
    for r in s["rows"]:
      res = r["results"]
      ips = {i: res.get(i, {}).get("images_per_s") for i in ("jaxconv", "flax", "torch")}
      j = res.get("jaxconv", {})
      checks = [f"{i}: {x['loss_first']:.3g}→{x['loss_last']:.3g}" + ("" if x.get("ok") else " **FAIL**")
                for i, x in res.items() if x.get("loss_first") is not None]
      cells = [name, r["model"], str(r["batch"])]
      cells += ["error" if "error" in res.get(i, {}) else _f(ips[i], ".0f") for i in ips]
      cells += [_f(ratio(ips["jaxconv"], ips["flax"])), _f(ratio(ips["jaxconv"], ips["torch"]))]
      cells += [_f(j.get("frac_ceiling") and 100 * j["frac_ceiling"], ".0f", "%"),
                _f((j.get("timing") or {}).get("compile_s"), ".1f"), "; ".join(checks)]
      lines.append("| " + " | ".join(cells) + " |")
      fastest = max(((i, v) for i, v in ips.items() if v), key=lambda t: t[1], default=None)
      if fastest:
        parts = [f"fastest {fastest[0]} ({fastest[1]:.0f} images/s)"]
        for p in ("flax", "torch"):
          rr = ratio(ips["jaxconv"], ips[p])
          if rr is not None:
            parts.append(f"jaxconv is {rr:.2f}x {p}")
        verdict.append(f"- **{r['model']}** (batch {r['batch']}): " + "; ".join(parts) + ".")
  return "\n".join(lines), verdict


def headline(doc: dict) -> list[str]:
  """The few numbers a reader wants first: per layer suite the geometric-mean jaxconv/ref and
  jaxconv/flax ratios forward and forward+backward with the median fraction of the ceiling, and
  per model jaxconv's train-step speed relative to stock Flax and PyTorch."""
  head = ["suite", "fwd jaxconv/ref", "fwd+bwd jaxconv/ref", "fwd jaxconv/flax", "fwd+bwd jaxconv/flax",
          "fwd+bwd jaxconv/torch", "fwd+bwd % ceil (median)", "rows agree"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  any_layer = False
  for name, s in doc.get("suites", {}).items():
    if s.get("kind") != "layer" or not s["rows"]:
      continue
    any_layer = True
    cells = [name]
    for mode, peer in (("fwd", "reference"), ("fwd+bwd", "reference"), ("fwd", "flax"), ("fwd+bwd", "flax"),
                       ("fwd+bwd", "torch")):
      cells.append(_f(geomean([ratio(_fps(r["results"].get("jaxconv")), _fps(r["results"].get(peer)))
                               for r in s["rows"] if r["mode"] == mode]), ".2f", "x"))
    fr = [r["results"].get("jaxconv", {}).get("frac_ceiling") for r in s["rows"] if r["mode"] == "fwd+bwd"]
    fr = [f for f in fr if f is not None]
    cells.append(_f(100 * statistics.median(fr) if fr else None, ".0f", "%"))
    checked = [x.get("agreement") for r in s["rows"] for x in r["results"].values() if x.get("agreement")]
    cells.append(f"{sum(a['ok'] for a in checked)}/{len(checked)}")
    lines.append("| " + " | ".join(cells) + " |")
  out = lines + [""] if any_layer else []
  for s in doc.get("suites", {}).values():
    if s.get("kind") != "model":
      continue
    for r in s["rows"]:
      ips = {i: r["results"].get(i, {}).get("images_per_s") for i in ("jaxconv", "flax", "torch")}
      if ips["jaxconv"]:
        out.append(f"- {r['model']} train step (batch {r['batch']}): jaxconv {ips['jaxconv']:.0f} images/s, "
                   f"{_f(ratio(ips['jaxconv'], ips['flax']), '.2f', 'x')} stock Flax, "
                   f"{_f(ratio(ips['jaxconv'], ips['torch']), '.2f', 'x')} PyTorch.")
  return out


def _loads(v: Optional[Sequence[float]]) -> str:
  return "/".join(f"{x:.2f}" for x in v) if v else "—"


def busy_warning(env: dict) -> Optional[str]:
  """A warning when other work was running (1-minute load above half the CPUs at start or end).

  Example:
    >>> busy_warning({"load_average": [9.0, 8, 7], "load_average_end": [7.5, 8, 7], "cpu_count": 2})
    '**The machine was busy** (1-minute load 9.0 at the start and 7.5 at the end, on 2 CPUs): these timings are noisy.'
    >>> busy_warning({"load_average": [0.3, 0, 0], "cpu_count": 2}) is None
    True
  """
  start, end, n = env.get("load_average"), env.get("load_average_end"), env.get("cpu_count") or 1
  loads = [v[0] for v in (start, end) if v]
  if not loads or max(loads) <= 0.5 * n:
    return None
  where = f"{start[0]:.1f} at the start" + (f" and {end[0]:.1f} at the end" if end else "")
  return f"**The machine was busy** (1-minute load {where}, on {n} CPUs): these timings are noisy."


def _env_section(doc: dict) -> list[str]:
  env = doc.get("environment", {})
  v = env.get("versions", {})
  threads = ", ".join(f"{k}={x}" for k, x in env.get("thread_env", {}).items()) or "none set"
  if env.get("torch_threads") is not None:
    threads += f"; torch.get_num_threads()={env['torch_threads']}"
  load = env.get("load_average")
  load_end = env.get("load_average_end")
  rows = [
      ("date (UTC)", env.get("date_utc")),
      ("git commit", env.get("git_commit")),
      ("backend / device", f"{env.get('backend')} / {env.get('device_kind')} x{env.get('device_count')}"),
      ("CPU", f"{env.get('cpu_model')}, {env.get('cpu_count')} logical CPUs ({env.get('cpu_affinity')} usable)"),
      ("versions", ", ".join(f"{k} {x}" for k, x in v.items() if x) + (", torch absent" if not v.get("torch") else "")),
      ("python / OS", f"{env.get('python')} / {env.get('platform')}"),
      ("XLA_FLAGS", f"`{env.get('xla_flags')}`" if env.get("xla_flags") else "(empty)"),
      ("jaxconv conv formulation", ", ".join(f"{k}={x}" for k, x in (env.get("jaxconv_conv_config") or {}).items())
       + "".join(f"; {k}={x}" for k, x in (env.get("jaxconv_env") or {}).items()) or "—"),
      ("thread settings", threads),
      ("load average (1/5/15 min)", f"start {_loads(load)}, end {_loads(load_end)}" if load else "—"),
  ]
  return ["| | |", "|---|---|"] + [f"| {k} | {x} |" for k, x in rows]


ANALYSIS_FILE = "analysis.md"


def wins(doc: dict) -> list[str]:
  """Across every layer suite and per mode: how often each implementation is the fastest, and
  the rows where a peer beats jaxconv by more than 1.5x (where to look first)."""
  rows = [(n, r) for n, s in doc.get("suites", {}).items() if s.get("kind") == "layer" for r in s["rows"]]
  out = []
  for mode in MODES:
    mr = [(n, r) for n, r in rows if r["mode"] == mode]
    if not mr:
      continue
    count: dict[str, int] = {}
    behind = []
    for n, r in mr:
      fps = {i: _fps(x) for i, x in r["results"].items() if _fps(x)}
      if not fps:
        continue
      best = max(fps, key=fps.get)
      count[best] = count.get(best, 0) + 1
      j = fps.get("jaxconv")
      if j and best != "jaxconv" and fps[best] > 1.5 * j:
        behind.append(f"{n}/{r['case']} ({best} {fps[best] / j:.1f}x)")
    text = f"- **{mode}**: fastest " + ", ".join(f"{i} {c}/{len(mr)}" for i, c in sorted(count.items(), key=lambda t: -t[1]))
    if behind:
      text += f"; a peer is >1.5x faster than jaxconv on {len(behind)}: " + ", ".join(behind[:12])
      text += " ..." if len(behind) > 12 else ""
    out.append(text + ".")
  return out


def render_markdown(doc: dict, analysis: Optional[str] = None) -> str:
  """The whole Markdown report of a results document (complete or partial).

  ``analysis`` (hand-written Markdown, e.g. the results folder's ``analysis.md``) is placed after
  the headline, under its own heading.
  """
  cfg = doc.get("config", {})
  out = ["# jaxconv benchmark report", ""]
  status = doc.get("status", "?")
  argv = cfg.get("argv")
  out.append(f"Status: **{status}**" + (f" after {doc['duration_s']:.0f} s" if doc.get("duration_s") else "")
             + (f". Command: `jaxconv bench {' '.join(argv)}`" if argv is not None else "") + ".")
  reps = cfg.get("repeats")
  out.append(f"Settings: dtype {cfg.get('dtype')}; per measurement {cfg.get('warmup')} warm-up run(s), then the "
             f"median (min/max in results.json) of {reps} timed runs, cut to no fewer than {min(3, reps or 3)} when "
             f"the runs would exceed {cfg.get('budget_s')} s; compile time apart; seed {cfg.get('seed')}"
             + ("; **--quick** (smoke test at tiny batches: the rows check correctness, the speeds mean little)"
                if cfg.get("quick") else "") + ".")
  warn = busy_warning(doc.get("environment", {}))
  if warn:
    out += ["", warn]
  top = headline(doc)
  if top:
    out += ["", "## Headline", "", "Geometric means over each suite's rows; above 1x, jaxconv is faster.", ""] + top
  w = wins(doc)
  if w:
    out += ["", "## Where each implementation wins", ""] + w
  if analysis:
    out += ["", f"## Analysis (hand-written: {ANALYSIS_FILE} in this folder)", "", analysis.strip()]
  out += ["", "## Environment", ""] + _env_section(doc)
  ceil = doc.get("ceiling")
  out += ["", "## Machine ceiling", ""]
  if ceil:
    out.append(f"A {ceil['size']}x{ceil['size']} @ {ceil['size']}x{ceil['size']} {ceil['dtype']} matmul, measured in "
               f"this run: **{ceil['flops_per_s'] / 1e9:.1f} GFLOP/s**, the higher of the medians measured at the "
               f"start and at the end of the run ({', '.join(f'{v / 1e9:.1f}' for v in ceil.get('medians', []))}; "
               f"best single run {ceil['best_flops_per_s'] / 1e9:.1f}). Every \"% ceil\" is a fraction of it.")
  peak = doc.get("datasheet_peak")
  if peak:
    out.append(f"Datasheet peak of the {peak['device']} in {peak['dtype']} (dense): {peak['flops_per_s'] / 1e12:.1f} "
               f"TFLOP/s; each result's fraction of it is in results.json (`frac_peak`).")
  out += ["", "## How to read the tables", ""]
  out.append("- GFLOP/s = nominal operations (2 x multiply-accumulates of the convolution; each gradient counts as "
             "much as the forward) / median time. Modes: " + "; ".join(f"`{m}` {h}" for m, h in MODE_HELP.items()) + ".")
  out.append("- `jaxconv/X` = jaxconv.ops.conv's FLOP/s divided by X's: above 1, jaxconv is faster. `ref` is the "
             "einsum reference, `flax` stock XLA through flax.linen.Conv, `torch` PyTorch on the same cores.")
  out.append("- `agree`: the worst relative error (max |a - ref| / max |ref|) of any implementation against the "
             "reference on that row, forward outputs and gradients alike; FAIL names the offender.")
  out.append("- Implementations: " + "; ".join(f"`{k}` = {v}" for k, v in IMPL_LABELS.items()) + ".")
  if doc.get("notes"):
    out += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
  suites = doc.get("suites", {})
  for name, s in suites.items():
    if s.get("kind") != "layer":
      continue
    out += ["", f"## {name}: {s['description']}", ""]
    if s.get("wall_s") is not None:
      out.append(f"Suite time: {s['wall_s']:.0f} s wall, {s['cpu_s']:.0f} s CPU.\n")
    if not s.get("complete"):
      out.append("*Incomplete: the run stopped inside this suite.*\n")
    modes = [m for m in MODES if any(r["mode"] == m for r in s["rows"])]
    out += ["Verdict:", ""] + layer_verdict(s["rows"], modes)
    for mode in modes:
      out += ["", f"### {name} — {mode}", "", layer_table(s["rows"], mode)]
    for kind in ("gflops", "ceiling"):
      out += ["", f"![{name} {kind}]({name}_{kind}.png)"]
  if any(s.get("kind") == "model" for s in suites.values()):
    table, verdict = model_table(doc)
    out += ["", "## Model suites: train-step throughput", ""]
    out.append("One step = forward (train mode), softmax cross-entropy, backward, SGD with momentum, batch-norm "
               "statistics; fixed random batch. % ceil uses 3x the forward FLOPs (XLA cost analysis of the stock model).")
    out += ["", "Verdict:", ""] + (verdict or ["- no results"]) + ["", table]
    skipped = [f"{n} ({'; '.join(s.get('notes', []))})" for n, s in suites.items() if s.get("kind") == "model" and not s["rows"]]
    if skipped:
      out += ["", "Skipped: " + ", ".join(skipped) + "."]
    out += ["", "![models](models_images_per_s.png)"]
  return "\n".join(out) + "\n"


def write_markdown(doc: dict, out_dir: str) -> str:
  """Writes ``report.md`` into ``out_dir`` (with ``analysis.md`` from there, if present); returns its path."""
  path = os.path.join(out_dir, REPORT_FILE)
  analysis = None
  if os.path.exists(os.path.join(out_dir, ANALYSIS_FILE)):
    with open(os.path.join(out_dir, ANALYSIS_FILE)) as f:
      analysis = f.read()
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(render_markdown(doc, analysis))
  os.replace(tmp, path)
  return path


def _impl_colors() -> dict[str, str]:
  return {"jaxconv": "#1f77b4", "reference": "#7f7f7f", "flax": "#2ca02c", "torch": "#d62728"}


def plot_layer_suite(name: str, suite: dict, ceiling: Optional[float], out_dir: str) -> list[str]:
  """Two PNGs: GFLOP/s per shape per implementation, and fraction of the ceiling; a panel per mode."""
  import matplotlib

  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt

  rows = suite["rows"]
  modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
  if not modes:
    return []
  impls = _present_impls(rows)
  colors = _impl_colors()
  paths = []
  for kind in ("gflops", "ceiling"):
    ncol = 2 if len(modes) > 1 else 1
    nrow = math.ceil(len(modes) / ncol)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(nrow, ncol, figsize=(7 * ncol, 0.5 + 0.32 * len(cases) * len(impls) / 2.5 * nrow + 1.2 * nrow),
                             squeeze=False)
    for ax, mode in zip(axes.flat, modes):
      mr = {r["case"]: r for r in rows if r["mode"] == mode}
      h = 0.8 / len(impls)
      for k, impl in enumerate(impls):
        vals = []
        for c in cases:
          r = mr.get(c, {}).get("results", {}).get(impl, {})
          v = r.get("flops_per_s")
          if kind == "ceiling":
            v = r.get("frac_ceiling")
          else:
            v = v / 1e9 if v else None
          vals.append(v or 0.0)
        ax.barh([i + k * h for i in range(len(cases))], vals, height=h, color=colors.get(impl), label=impl)
      ax.set_yticks([i + 0.4 - h / 2 for i in range(len(cases))])
      ax.set_yticklabels(cases, fontsize=7)
      ax.invert_yaxis()
      ax.set_title(f"{name}: {mode}", fontsize=9)
      if kind == "gflops":
        ax.set_xlabel("GFLOP/s (median)")
        if ceiling:
          ax.axvline(ceiling / 1e9, color="k", ls="--", lw=0.8, label="matmul ceiling")
      else:
        ax.set_xlabel("fraction of the matmul ceiling")
        ax.axvline(1.0, color="k", ls="--", lw=0.8)
      ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(modes):]:
      ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path = os.path.join(out_dir, f"{name}_{kind}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
  return paths


def plot_models(doc: dict, out_dir: str) -> list[str]:
  """One PNG of train-step images/s per model per implementation."""
  import matplotlib

  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt

  rows = [r for s in doc.get("suites", {}).values() if s.get("kind") == "model" for r in s["rows"]]
  if not rows:
    return []
  colors = _impl_colors()
  impls = ["jaxconv", "flax", "torch"]
  fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3), squeeze=False)
  for ax, r in zip(axes.flat, rows):
    vals = [r["results"].get(i, {}).get("images_per_s") or 0.0 for i in impls]
    ax.bar(impls, vals, color=[colors[i] for i in impls])
    ax.set_title(f"{r['model']} (batch {r['batch']})", fontsize=9)
    ax.set_ylabel("train images/s")
    ax.tick_params(labelsize=7)
  fig.tight_layout()
  path = os.path.join(out_dir, "models_images_per_s.png")
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return [path]


def write_report(doc: dict, out_dir: str, *, plots: bool = True, log: Callable[[str], None] = print) -> list[str]:
  """Writes ``report.md`` and (when matplotlib imports) the PNG plots; returns the paths written."""
  paths = [write_markdown(doc, out_dir)]
  if plots:
    try:
      import matplotlib  # noqa: F401
    except Exception as e:  # noqa: BLE001 - plots are optional; the Markdown and JSON are not
      log(f"note: no plots ({type(e).__name__}: {e}); install matplotlib for PNGs.")
      return paths
    ceiling = (doc.get("ceiling") or {}).get("flops_per_s")
    for name, s in doc.get("suites", {}).items():
      if s.get("kind") == "layer":
        paths += plot_layer_suite(name, s, ceiling, out_dir)
    paths += plot_models(doc, out_dir)
  log(f"report: {paths[0]} ({len(paths) - 1} plots)")
  return paths
