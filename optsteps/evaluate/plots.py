"""Plots logged with the runs, drawn with matplotlib's object API (no global backend change): a schedule against
the baselines of the same NFE in t and λ (``schedule_figures``), a metric against NFE (``curves_figure``) and the
speedup figure (``speedup_figure``)."""

from __future__ import annotations

import math

from optsteps.core.schedule import Schedule
from optsteps.errors import OptstepsError

BASELINE_KINDS = ("uniform-t", "uniform-lambda", "karras", "time-quadratic")


def _figure(nrows=1, ncols=1, size=(6.4, 4.2), fixed_margins: bool = False):
    """``fixed_margins``: fixed subplot margins instead of the constrained layout, which is half of the drawing
    time of the small one-panel plots logged with every run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout=None if fixed_margins else "constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if fixed_margins:
        fig.subplots_adjust(left=0.11, right=0.98, bottom=0.12, top=0.92)
    return fig, axes


def schedule_figures(schedule: Schedule) -> dict:
    """``schedule_t.png`` and ``schedule_lambda.png``: the schedule against the baselines of the same NFE."""
    from optsteps.core.baselines import baseline

    curves = {}
    for kind in BASELINE_KINDS:
        if kind == schedule.method:
            continue  # drawn as this run
        try:
            curves[kind] = baseline(kind, schedule.noise_schedule, schedule.nfe, schedule.t[0], schedule.t[-1])
        except OptstepsError:
            continue
    out = {}
    for fname, attr, ylabel in (
        ("schedule_t.png", "timesteps_t", "t"),
        ("schedule_lambda.png", "lambdas", "λ = log(α/σ)"),
    ):
        fig, ax = _figure(fixed_margins=True)
        ax = ax[0][0]
        for kind, s in curves.items():
            y = getattr(s, attr).tolist()
            xs = [i for i, v in enumerate(y) if math.isfinite(v)]
            ax.plot(xs, [y[i] for i in xs], "--", marker=".", alpha=0.6, label=kind)
        y = getattr(schedule, attr).tolist()
        xs = [i for i, v in enumerate(y) if math.isfinite(v)]
        ax.plot(
            xs,
            [y[i] for i in xs],
            "-",
            marker="o",
            color="black",
            lw=2,
            label=f"{schedule.method or 'schedule'} (this run)",
        )
        ax.set_xlabel("step i")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{schedule.model} {schedule.solver} NFE {schedule.nfe}: {ylabel}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out[fname] = fig
    return out


def curves_figure(rows: list[dict], key: str, label: str):
    """One panel per (model, solver): ``key`` against NFE, one line per method with its 95 % interval as error bars
    (rows with ``ci95``); the teacher dashed."""
    groups = {}
    for r in rows:
        if key in r:
            groups.setdefault((r.get("model"), r.get("solver") if r.get("method") != "teacher" else None), []).append(r)
    panels = sorted({g for g in groups if g[1] is not None}, key=str)
    if not panels:
        return None
    fig, axes = _figure(1, len(panels), (6.4 * len(panels), 4.8))
    for ax, (model, solver) in zip(axes[0], panels):
        by_method = {}
        for r in groups[(model, solver)]:
            ci = (r.get("ci95") or {}).get(key)
            by_method.setdefault(r["method"], []).append((r["nfe"], r[key], ci))
        for method, pts in sorted(by_method.items()):
            pts.sort(key=lambda p: p[0])
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            if any(p[2] for p in pts):  # asymmetric bars: value − lo, hi − value (0 where a row has no interval)
                err = [
                    [max(0.0, p[1] - p[2][0]) if p[2] else 0.0 for p in pts],
                    [max(0.0, p[2][1] - p[1]) if p[2] else 0.0 for p in pts],
                ]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
            else:
                ax.plot(xs, ys, marker="o", label=method)
        for r in groups.get((model, None), []):
            ax.axhline(r[key], ls="--", color="gray", label=f"teacher ({r['solver']} × {r['nfe']})")
        ax.set_xlabel("NFE")
        ax.set_ylabel(label)
        ax.set_title(f"{model} · {solver}")
        if key.startswith("fid") and all(p[1] > 0 for pts in by_method.values() for p in pts):
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def speedup_figure(entries: list[dict]):
    """One panel per (metric, solver): for each optimized method, the NFE at which the best baseline matches it
    (``speedup.best_baseline``) against its own NFE K, on log axes, with the diagonal N* = K (no speedup);
    censored points (the baseline range ends first) are drawn hollow and named in the legend."""
    from optsteps.evaluate.speedup import best_baseline

    best = best_baseline(entries)
    panels = sorted({(e["metric"], e["solver"]) for e in best})
    if not panels:
        return None
    from matplotlib.lines import Line2D

    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig, axes = _figure(rows, cols, (7.0 * cols, 5.6 * rows))
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (metric, solver) in zip(flat, panels):
        pts = [e for e in best if e["metric"] == metric and e["solver"] == solver]
        ks = sorted({e["nfe"] for e in pts})
        for method in sorted({e["method"] for e in pts}):
            es = sorted((e for e in pts if e["method"] == method), key=lambda e: e["nfe"])
            line = ax.plot([e["nfe"] for e in es], [e["baseline_nfe"] for e in es], "-", label=method)[0]
            for e in es:
                ax.plot(
                    [e["nfe"]],
                    [e["baseline_nfe"]],
                    "o",
                    color=line.get_color(),
                    mfc="none" if e["censored"] else line.get_color(),
                )
                ax.annotate(  # the speedup N*/K at the point ("≤"/">" where censored)
                    f"{ {'<=': '≤', '>': '>'}.get(e['censored'] or '', '') }×{e['speedup']:.2g}",
                    (e["nfe"], e["baseline_nfe"]),
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize=9,
                    color=line.get_color(),
                )
        ax.plot(ks, ks, "--", color="gray", label="no speedup (N* = K)")
        handles, _ = ax.get_legend_handles_labels()
        if any(e["censored"] for e in pts):
            handles.append(
                Line2D([], [], ls="none", marker="o", mfc="none", color="black", label="censored (baseline range ends)")
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

        ax.yaxis.set_major_locator(MaxNLocator(nbins=8))  # plain NFE ticks: the range is often inside one decade
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ks)
        ax.set_xlabel("NFE K of the optimized schedule")
        ax.set_ylabel("NFE of the best baseline at equal quality")
        ax.set_title(f"{solver} · {metric}", fontsize=12)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=9)
    return fig
