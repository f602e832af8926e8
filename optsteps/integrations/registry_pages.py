"""What the MLflow registry's pages say: the markdown of a schedule version and of a registered model, the params
a schedule run carries (seeds, solver order, times and sigmas) and the per-NFE table logged with a summary run.

Plain functions of plain values (tags, params, metrics as MLflow stores them: strings and floats); they import no
MLflow, so the adapter (``mlflow_registry``) gathers and writes, and this module only words. One rule per page:

- a version: what the schedule is (method, solver and order, NFE, times and σ, start state), the model it is for
  (name and weights' hash), its metrics with their 95 % intervals, the paired difference to the best baseline of its
  evaluation and to its runner-up (or to the champion) with their intervals, the speedup against the best baseline,
  and how to run it (``optsteps apply``, diffusers with ``OptstepsScheduler``, ComfyUI sigmas);
- a registered model: one line per NFE with its champion (method, version, value and interval, significance);
- runs: numbers rounded to ``PARAM_DIGITS`` significant digits in lists so a param stays under MLflow's 6000
  characters (the exact schedule is the run's ``schedule/`` artifact).
"""

from __future__ import annotations

import json
import math

PARAM_LIMIT = 6000  # MLflow 3's longest param value
PARAM_DIGITS = 6


def fmt(v, digits: int = 4) -> str:
    """A number for a page: ``digits`` significant digits, '–' for None/NaN."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.{digits}g}"


def interval(ci) -> str:
    """``[lo, hi]`` of a 95 % interval, '' without one."""
    if not ci or len(ci) != 2:
        return ""
    return f"[{fmt(ci[0], 3)}, {fmt(ci[1], 3)}]"


def number_list(values, limit: int = PARAM_LIMIT, digits: int = PARAM_DIGITS) -> str:
    """``values`` as a JSON list rounded to ``digits`` significant digits, fewer digits until it fits ``limit``
    characters; a list too long even at 2 digits is cut and says how many values it left out."""
    vals = [float(v) for v in values]
    for d in range(digits, 1, -1):
        text = json.dumps([None if not math.isfinite(v) else float(f"{v:.{d}g}") for v in vals])
        if len(text) <= limit:
            return text
    keep = [float(f"{v:.2g}") if math.isfinite(v) else None for v in vals]
    while keep and len(json.dumps(keep)) + 40 > limit:
        keep = keep[: len(keep) * 3 // 4]
    return json.dumps(keep)[:-1] + f', "… {len(vals) - len(keep)} more"]'


def summary(values, head: int = 3, tail: int = 2) -> str:
    """The first and last values of a list, e.g. ``0.999, 0.74, 0.52 … 0.031, 0.001 (6 values)``."""
    vals = [fmt(v) for v in values]
    if len(vals) <= head + tail:
        return ", ".join(vals)
    return f"{', '.join(vals[:head])} … {', '.join(vals[-tail:])} ({len(vals)} values)"


def schedule_params(schedule, solver: str, eval_seed=None, teacher_seed=None) -> dict:
    """The run params of a schedule beyond its name: the solver's order (and its lower-order-final and corrector
    switches), the start-state rule, the times t and the σ (diffusers' convention) rounded (``number_list``), and
    the seeds (``eval_seed``: the held-out evaluation seed; ``teacher_seed``: the distillation seed of the teacher
    the schedule was fitted to) when known."""
    spec = schedule.with_meta(solver=solver).solver_spec
    out = {
        "order": spec.order if spec else "",
        "lower_order_final": spec.lower_order_final if spec else "",
        "corrector": spec.corrector if spec else "",
        "start_state": schedule.start_state,
        "times": number_list(schedule.t),
        "sigmas": number_list(schedule.sigmas.tolist()),
    }
    if eval_seed is not None:
        out["eval_seed"] = int(eval_seed)
    if teacher_seed is not None:
        out["teacher_seed"] = int(teacher_seed)
    return out


def _json(text, default=None):
    try:
        return json.loads(text) if text else default
    except (TypeError, ValueError):
        return default


def _metric_lines(metrics: dict, metric: str, names) -> list[str]:
    lines = ["| metric | value [95 % interval] |", "|---|---|"]
    for k in [metric, *[n for n in names if n != metric]]:
        if k not in metrics:
            continue
        lo, hi = metrics.get(f"{k}_ci95_lo"), metrics.get(f"{k}_ci95_hi")
        name = f"**{k}** (champion metric)" if k == metric else k
        lines.append(f"| {name} | {fmt(metrics[k])} {interval([lo, hi]) if lo is not None else ''} |")
    return lines


def _significance(ci) -> str:
    if not ci:
        return "no interval (point values)"
    return "significant: the interval excludes 0" if ci[0] > 0 or ci[1] < 0 else "within the noise: it includes 0"


def how_to(name: str, version, nfe, model: str = "") -> list[str]:
    """How to run a registered version: ``optsteps sample`` on its model, ``optsteps apply`` on a diffusers pipeline,
    diffusers with ``OptstepsScheduler``, ComfyUI sigmas."""
    ref = f"{name}/{version}"
    return [
        "### How to run it",
        "",
        f"With optsteps, on the model it was measured on and in a diffusers pipeline (the measured solver at the exact "
        f"times; `{name}@champion-nfe{nfe}` follows the current best):",
        "",
        "```bash",
        f"optsteps sample --model {model or 'MODEL'} --schedule {ref} --out grid.png",
        f'optsteps apply --pipeline /path/to/pipeline --schedule {ref} --prompt "a red apple" --out out.png',
        "```",
        "",
        "In your own diffusers code:",
        "",
        "```python",
        "from optsteps.core.schedule import Schedule",
        "from optsteps.integrations.diffusers import OptstepsScheduler",
        "",
        f"# optsteps registry export {ref} --format json --out schedule.json",
        'schedule = Schedule.load("schedule.json")',
        "pipe.scheduler = OptstepsScheduler.from_schedule(schedule, pipe.scheduler.config.prediction_type)",
        f'image = pipe("a red apple", num_inference_steps={nfe}).images[0]',
        "```",
        "",
        "ComfyUI (`SamplerCustom`'s SIGMAS; `--format comfyui-text` for KJNodes `CustomSigmas`):",
        "",
        "```bash",
        f"optsteps registry export {ref} --format comfyui",
        "```",
    ]


def version_description(
    name: str,
    version,
    tags: dict,
    params: dict,
    metrics: dict,
    run_tags: dict | None = None,
    compared_method: str | None = None,
    metric_names=(),
) -> str:
    """The markdown page of one schedule version, from its tags (method, solver, nfe, metric, standing), its run's
    params (times, sigmas, order, seeds, n) and metrics (with ``<metric>_ci95_lo``/``_hi``) and the run's tags
    (``model_sha256``, ``vs_best_baseline`` and ``speedup`` as JSON); ``compared_method``: the method of the version
    named in ``compared_with``."""
    run_tags = run_tags or {}
    method, solver, nfe = tags.get("method", "?"), tags.get("solver", "?"), tags.get("nfe", "?")
    metric = tags.get("metric", "")
    order = tags.get("order") or params.get("order", "")
    lines = [
        f"## {method} · {solver}{f' order {order}' if order else ''} · NFE {nfe}",
        "",
        f"A step schedule for **{tags.get('model', '?')}**: {nfe} network evaluations with the {solver} solver"
        f"{f' (order {order})' if order else ''}, found by **{method}**.",
        "",
    ]
    times, sigmas = _json(params.get("times"), []), _json(params.get("sigmas"), [])
    facts = []
    if times:
        facts.append(f"- times t: {summary(times)}")
    if sigmas:
        facts.append(f"- σ (diffusers' convention): {summary(sigmas)}")
    facts.append(f"- start state: {params.get('start_state', 'scaled')}")
    sha = run_tags.get("model_sha256")
    facts.append(f"- model: {tags.get('model', '?')}" + (f" (weights sha256 {sha[:16]})" if sha else ""))
    seeds = [f"{k.replace('_', ' ')} {params[k]}" for k in ("eval_seed", "teacher_seed") if params.get(k)]
    if params.get("n"):
        seeds.insert(0, f"{params['n']} held-out samples")
    if seeds:
        facts.append(f"- measured on {', '.join(seeds)}")
    lines += facts + ["", "### Metrics", ""] + _metric_lines(metrics, metric, metric_names)
    lines += ["", "### Where it stands", ""]
    decision, rank = tags.get("champion_decision", ""), tags.get("rank", "")
    if decision == "best":
        lines.append(f"**Champion** of its evaluation at NFE {nfe} by {metric} (rank {rank or '1'}).")
    elif decision == "behind":
        lines.append(f"Rank {rank} of its evaluation at NFE {nfe} by {metric}.")
    elif decision == "older_evaluation":
        lines.append("Measured in an older evaluation; the champion is from a newer one (not comparable pairwise).")
    elif decision == "not_comparable":
        lines.append("Registered without an evaluation id: not compared pairwise with the champion.")
    other, diff, ci = tags.get("compared_with"), tags.get("paired_diff"), _json(tags.get("paired_ci95"))
    if other and diff:
        who = f"{compared_method} ({other})" if compared_method else other
        role = "the runner-up" if decision == "best" else "the champion"
        lines.append(
            f"- vs {role} {who}: Δ {metric} = {fmt(float(diff))} {interval(ci)} (this − that, paired; "
            f"{_significance(ci)})."
        )
    vs = _json(run_tags.get("vs_best_baseline"), {}) or {}
    for k in dict.fromkeys((metric, "l2_to_teacher")):  # the champion metric and the distance the schedules fit
        d = vs.get(k)
        if not d:
            continue
        lines.append(
            f"- vs the best baseline ({d.get('baseline')}) on {k}: Δ = {fmt(d.get('diff'))} "
            f"{interval(d.get('ci95'))} (this − baseline; {_significance(d.get('ci95'))})."
        )
    for e in _json(run_tags.get("speedup"), []) or []:
        cens = {"<=": "≤ ", ">": "> "}.get(e.get("censored") or "", "")
        lines.append(
            f"- speedup on {e.get('metric')}: the best baseline ({e.get('baseline')}) needs {cens}"
            f"{fmt(e.get('baseline_nfe'), 3)} NFE for the quality this has at {nfe}: {cens}×{fmt(e.get('speedup'), 3)}."
        )
    lines += [""] + how_to(name, version, nfe, tags.get("model", ""))
    return "\n".join(lines) + "\n"


def model_description(name: str, champions: list[dict]) -> str:
    """The registered model's page: what it holds and a table of its champions, one line per NFE. ``champions``:
    dicts with nfe, version, method, metric, value, ci95 ([lo, hi] or None), significance, rank, evaluation_id."""
    model, _, solver = name.removesuffix("-schedules").rpartition("-")
    lines = [
        f"Step schedules for **{model or name}** sampled with **{solver}**, one version per schedule (method, NFE, "
        "exact times). The alias `champion-nfe<K>` points to the best version of the latest evaluation at K steps "
        "by the champion metric; its tags say whether the lead over the runner-up is significant "
        "(paired bootstrap, 95 %).",
        "",
    ]
    if champions:
        metrics = sorted({c.get("metric", "") for c in champions})
        one = metrics[0] if len(metrics) == 1 else ""  # one champion metric: named once, in the header
        lines += [
            f"| NFE | champion | version |{'' if one else ' metric |'} {one or 'value'} [95 % interval] "
            "| lead over the runner-up | versions ranked |",
            "|---|---|---|" + ("" if one else "---|") + "---|---|---|",
        ]
        for c in sorted(champions, key=lambda c: int(c["nfe"])):
            lines.append(
                f"| {c['nfe']} | {c.get('method', '')} | [{c['version']}](#/models/{name}/versions/{c['version']}) "
                + ("" if one else f"| {c.get('metric', '')} ")
                + f"| {fmt(c.get('value'))} {interval(c.get('ci95'))} "
                f"| {c.get('significance', '')} | {str(c.get('rank', '')).partition('/')[2]} |"
            )
    lines += [
        "",
        f"Use one: `optsteps apply --pipeline DIR --schedule {name}@champion-nfe<K> …`, "
        f"`optsteps registry export {name}@champion-nfe<K> --format comfyui`; list them: "
        f"`optsteps registry list --model {model or name}`.",
    ]
    return "\n".join(lines) + "\n"


def nfe_table(rows: list[dict], metric: str) -> tuple[str, str]:
    """The evaluation's rows as one table per NFE, best first by ``metric``: (CSV, markdown). Columns: nfe, solver,
    method, the metric with its interval, l2_to_teacher, the paired difference to the best baseline."""
    rs = [r for r in rows if r.get("method") != "teacher" and metric in r]
    rs.sort(key=lambda r: (r.get("solver", ""), int(r.get("nfe", 0)), r[metric]))
    head = ["solver", "nfe", "method", metric, "ci95_lo", "ci95_hi", "l2_to_teacher", "vs_best_baseline"]
    csv = [",".join(head)]
    md = [
        f"| solver | NFE | method | {metric} [95 % interval] | l2_to_teacher | Δ vs best baseline [95 %] |",
        "|---|---|---|---|---|---|",
    ]
    for r in rs:
        ci = (r.get("ci95") or {}).get(metric)
        vs = (r.get("vs_best_baseline") or {}).get(metric)
        vs_text = f"{fmt(vs['diff'])} {interval(vs.get('ci95'))} vs {vs.get('baseline')}" if vs else ""
        csv.append(
            ",".join(
                [
                    str(r.get("solver", "")),
                    str(r.get("nfe", "")),
                    str(r.get("method", "")),
                    repr(float(r[metric])),
                    repr(float(ci[0])) if ci else "",
                    repr(float(ci[1])) if ci else "",
                    repr(float(r["l2_to_teacher"])) if "l2_to_teacher" in r else "",
                    f"{vs['diff']!r}" if vs else "",
                ]
            )
        )
        md.append(
            f"| {r.get('solver', '')} | {r.get('nfe', '')} | {r.get('method', '')} | {fmt(r[metric])} {interval(ci)} "
            f"| {fmt(r.get('l2_to_teacher'))} | {vs_text} |"
        )
    return "\n".join(csv) + "\n", "\n".join(md) + "\n"


__all__ = [
    "PARAM_LIMIT",
    "fmt",
    "interval",
    "number_list",
    "summary",
    "schedule_params",
    "version_description",
    "model_description",
    "nfe_table",
    "how_to",
]
