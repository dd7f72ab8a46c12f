"""``python -m skinflow compare``: mean ± std over seeds of runs in the MLflow store, as a table, CSV and bar chart.

Runs are read from one experiment (finished runs only, unless ``--status`` says otherwise), grouped by tags or
params (``--group-by row`` looks for the tag ``row``, then ``skinflow.row``, then the param ``row``), and each
metric is summarised per group over the runs that have it. A run that lacks a metric is not silently dropped: the
table's ``n`` column counts the runs each mean is over, and the runs left out are listed with the metric they lack.

    python -m skinflow compare --experiment skinflow-ablation-tiny --group-by row \
        --metric final/test/top1_exact --metric final/test/graded_top1 --out mlruns/compare --log-to-mlflow

The pure pieces (``runs_frame``, ``summarize``, ``format_summary``, ``bar_chart``) are what the notebooks import.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

import pandas as pd

from skinflow.errors import UserError
from skinflow.metrics.headline import HEADLINE_METRICS
from skinflow.tracking.store import DEFAULT_TRACKING_URI, StoreError, client_for_existing, search_runs

DEFAULT_METRICS = HEADLINE_METRICS
COMPARE_TAG = "compare"  # value of skinflow.stage on the runs this command logs (never compared themselves)


class CompareError(UserError):
    pass


def client_for(tracking_uri: str = DEFAULT_TRACKING_URI):
    """A client for reading: never creates or re-initialises a store (``StoreError`` when the URI names none)."""
    return client_for_existing(tracking_uri)


def experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"no experiment named {name!r} in {client.tracking_uri}; experiments there: {known}")
    return experiment.experiment_id


Level = Literal["pipeline", "stage", "all"]
LEVELS = {  # which runs a comparison takes
    "pipeline": "pipeline and ablation parent runs (one per pipeline run; their final/... metrics)",
    "stage": "stage child runs (one per stage of each pipeline run)",
    "all": "every run, single fit runs included",
}


def runs_frame(client, experiment: str, filter_string: str = "", status: str | None = "FINISHED",
               level: Level = "all") -> pd.DataFrame:
    """One row per run (``mlflow.search_runs``' pandas output): ``run_id``, ``run_name``, ``status``,
    ``start_time``, then ``tags.<k>``, ``params.<k>``, ``metrics.<k>`` (the latest value of each metric), for the
    runs of ``level`` (``LEVELS``). Runs this command logged are left out."""
    exp_id = experiment_id(client, experiment)
    frame = search_runs(client, [exp_id], filter_string)
    if frame.empty:
        return frame
    frame = frame.assign(run_name=frame.get("tags.mlflow.runName"))
    tag = lambda key: frame[key] if key in frame.columns else pd.Series(None, index=frame.index, dtype=object)  # noqa: E731
    keep = tag("tags.skinflow.stage") != COMPARE_TAG
    if status:
        keep &= frame["status"] == status
    if level == "pipeline":
        keep &= tag("tags.skinflow.stage") == "pipeline"
    elif level == "stage":
        keep &= tag("tags.mlflow.parentRunId").notna()
    return frame[keep].dropna(axis=1, how="all").reset_index(drop=True)


def group_column(frame: pd.DataFrame, key: str) -> str:
    """The frame's column for a ``--group-by`` key: tag ``key``, tag ``skinflow.key``, param ``key``, or a plain
    column (``run_name``, ``status``)."""
    for column in (f"tags.{key}", f"tags.skinflow.{key}", f"params.{key}", key):
        if column in frame.columns:
            return column
    tags = sorted(c[5:] for c in frame.columns if c.startswith("tags.") and not c.startswith("tags.mlflow."))
    params = sorted(c[7:] for c in frame.columns if c.startswith("params."))
    raise CompareError(f"no tag or param named {key!r} on these runs; tags: {tags}; params: {params[:30]}")


@dataclass
class Summary:
    table: pd.DataFrame  # one row per group: the group keys, then n_<metric>, <metric>_mean, <metric>_std
    groups: list[str]  # the --group-by keys
    metrics: list[str]
    left_out: list[tuple[str, str, str]]  # (run_id, run_name, metric) of runs lacking a metric


CONFIG_KEY = "tags.skinflow.config_key"  # a run's config without its seeds (skinflow.resume.config_key)


def check_configs(frame: pd.DataFrame, keys: pd.DataFrame, columns: list[str]) -> None:
    """Refuse a group that pools runs of different configs (seeds aside): name the group and the runs of each."""
    if CONFIG_KEY not in frame.columns:
        return
    for group, part in frame.groupby([keys[c] for c in columns], sort=False):
        configs = part[CONFIG_KEY].dropna().unique()
        if len(configs) > 1:
            runs = {c[:8]: sorted(part.loc[part[CONFIG_KEY] == c, "run_name"].astype(str))[:3] for c in configs}
            raise CompareError(f"group {group} pools runs of {len(configs)} different configs {runs}; add config_key "
                               "to --group-by to keep them apart, or pass --pool-configs to pool them anyway")


def summarize(frame: pd.DataFrame, metrics: list[str], group_by: list[str], pool_configs: bool = True) -> Summary:
    """Mean and sample standard deviation (ddof = 1; NaN for a single run) of each metric per group.

    ``pool_configs=False`` refuses a group whose runs differ in config other than by seed (``check_configs``)."""
    if frame.empty:
        raise CompareError("no runs to compare (check --experiment, --filter and --status)")
    missing = [m for m in metrics if f"metrics.{m}" not in frame.columns]
    if missing:
        known = sorted(c[8:] for c in frame.columns if c.startswith("metrics."))
        raise CompareError(f"no run has metric(s) {missing}; metrics there include: {known[:40]}")
    columns = [group_column(frame, key) for key in group_by] or ["run_name"]
    keys = frame[columns].fillna("-").astype(str)
    if not pool_configs:
        check_configs(frame, keys, columns)
    left_out = []
    for metric in metrics:
        lacking = frame[frame[f"metrics.{metric}"].isna()]
        left_out += [(r.run_id, r.run_name, metric) for r in lacking.itertuples()]
    names = list(group_by or ["run_name"])
    values = frame[[f"metrics.{m}" for m in metrics]].astype(float)
    table = values.groupby([keys[c] for c in columns], sort=False).agg(["count", "mean", "std"])  # std: ddof 1
    table.columns = [{"count": f"n_{m[8:]}", "mean": f"{m[8:]}_mean", "std": f"{m[8:]}_std"}[stat] for m, stat in table.columns]
    table.index.names = names
    return Summary(table.reset_index(), names, list(metrics), left_out)


def format_summary(summary: Summary, digits: int = 4) -> str:
    """Fixed-width text: one row per group, ``mean ± std (n)`` per metric.

    >>> frame = pd.DataFrame({"run_name": ["a", "a", "b"], "tags.row": ["x", "x", "y"],
    ...                       "run_id": ["1", "2", "3"], "metrics.top1": [0.5, 0.7, 0.4]})
    >>> print(format_summary(summarize(frame, ["top1"], ["row"])))
    row  top1
    x    0.6000 ± 0.1414 (2)
    y    0.4000 ± - (1)
    """
    header = [*summary.groups, *summary.metrics]
    rows = []
    for record in summary.table.to_dict("records"):
        cells = [str(record[g]) for g in summary.groups]
        for metric in summary.metrics:
            mean, std, n = record[f"{metric}_mean"], record[f"{metric}_std"], record[f"n_{metric}"]
            cells.append("-" if not n else f"{mean:.{digits}f} ± {'-' if math.isnan(std) else f'{std:.{digits}f}'} ({n})")
        rows.append(cells)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def bar_chart(summary: Summary, path: str | Path, title: str = "") -> Path:
    """Grouped bars (one cluster per metric, one bar per group) with ± std error bars, as PNG."""
    from skinflow.analysis.plotting import grouped_bars, pyplot, save_figure

    plt = pyplot()
    table = summary.table
    labels = [" / ".join(str(r[g]) for g in summary.groups) for r in table.to_dict("records")]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(summary.metrics) * max(1, len(labels)) ** 0.5), 4.2))
    grouped_bars(ax, [m.split("/", 1)[-1] if m.startswith(("test/", "val/")) else m for m in summary.metrics],
                 {label: [table[f"{m}_mean"].iloc[i] for m in summary.metrics] for i, label in enumerate(labels)},
                 {label: [table[f"{m}_std"].iloc[i] for m in summary.metrics] for i, label in enumerate(labels)})
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    ax.set_ylabel("mean ± std over runs")
    ax.set_title(title)
    ax.legend(fontsize=8, title=" / ".join(summary.groups), title_fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def default_metrics(frame: pd.DataFrame) -> list[str]:
    """``final/test/...`` (pipeline and ablation parents) where runs have it, else ``test/...``."""
    for prefix in ("final/", ""):
        chosen = [prefix + m for m in DEFAULT_METRICS if f"metrics.{prefix}{m}" in frame.columns]
        if chosen:
            return chosen
    raise CompareError("none of the default metrics is logged on these runs; name some with --metric")


def compare(experiment: str, metrics: list[str] | None = None, group_by: list[str] | None = None,
            tracking_uri: str = DEFAULT_TRACKING_URI, filter_string: str = "", status: str | None = "FINISHED",
            out: str | Path | None = None, log_to_mlflow: bool = False, pool_configs: bool = False,
            level: Level = "pipeline") -> dict:
    """The command's work, callable from notebooks: returns ``{"summary", "text", "csv", "png", "run_id"}``.

    ``level`` picks pipeline parents (default), stage children or all runs (``LEVELS``). A group may pool seeds,
    never configs, unless ``pool_configs``."""
    client = client_for(tracking_uri)
    frame = runs_frame(client, experiment, filter_string, status, level)
    if frame.empty and level != "all" and not runs_frame(client, experiment, filter_string, status, "all").empty:
        other = "stage" if level == "pipeline" else "pipeline"
        raise CompareError(f"experiment {experiment!r} has no {LEVELS[level].split(' (')[0]}; --level {other} or "
                           "--level all compares the others")
    metrics = list(metrics or default_metrics(frame))
    summary = summarize(frame, metrics, list(group_by or []), pool_configs)
    text = format_summary(summary)
    out = Path(out or Path("mlruns") / "compare" / experiment)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "comparison.csv"
    summary.table.to_csv(csv, index=False)
    png = bar_chart(summary, out / "comparison.png", title=experiment)
    run_id = None
    if log_to_mlflow:
        run = client.create_run(experiment_id(client, experiment), run_name="compare",
                                tags={"skinflow.stage": COMPARE_TAG, "skinflow.compare.group_by": ",".join(summary.groups)})
        run_id = run.info.run_id
        client.log_artifact(run_id, str(csv))
        client.log_artifact(run_id, str(png))
        client.log_text(run_id, text, "comparison.txt")
        client.set_terminated(run_id, "FINISHED")
    return {"summary": summary, "text": text, "csv": csv, "png": png, "run_id": run_id}


def compare_command(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m skinflow compare", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--metric", action="append", default=[], help="metric key (repeatable); default: top-1, "
                        "top-6, graded top-1 and malignant miss on test (final/test/... for pipeline runs)")
    parser.add_argument("--group-by", default="", help="comma-separated tags or params, e.g. row or stage1,dve")
    parser.add_argument("--filter", default="", help="MLflow filter string, e.g. \"tags.skinflow.stage = 'pipeline'\"")
    parser.add_argument("--status", default="FINISHED", help="run status to keep (FINISHED); 'any' keeps all")
    parser.add_argument("--level", choices=list(LEVELS), default="pipeline",
                        help="; ".join(f"{k}: {v}" for k, v in LEVELS.items()) + " (default: pipeline)")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--out", default=None, help="folder for comparison.csv and comparison.png "
                        "(default mlruns/compare/<experiment>)")
    parser.add_argument("--log-to-mlflow", action="store_true", help="also log the CSV and PNG to a 'compare' run")
    parser.add_argument("--pool-configs", action="store_true",
                        help="let a group pool runs whose configs differ (by default only seeds may differ)")
    ns = parser.parse_args(argv)
    try:
        result = compare(ns.experiment, ns.metric, [k.strip() for k in ns.group_by.split(",") if k.strip()],
                         ns.tracking_uri, ns.filter, None if ns.status.lower() == "any" else ns.status, ns.out,
                         ns.log_to_mlflow, ns.pool_configs, ns.level)
    except (CompareError, StoreError) as error:
        parser.exit(2, f"compare: {error}\n")
    print(result["text"])
    for run_id, name, metric in result["summary"].left_out:
        print(f"left out of {metric}: run {run_id} ({name}) does not have it")
    print(f"\nwrote {result['csv']} and {result['png']}" + (f"; logged to run {result['run_id']}" if result["run_id"] else ""))
    return result
