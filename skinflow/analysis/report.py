"""``python -m skinflow report --run-id ID``: one self-contained HTML page for a pipeline run (or a single run).

The page holds, with every figure embedded as a base64 PNG (no file or network reference, so it can be mailed):

- the metric table: test metrics per stage (``start`` rows for stages evaluated before training), from the store;
- training curves per stage: loss, each reward term, KL, learning rate and validation scores against the step,
  with a smoothed line over the logged points;
- graded Top-1 per Fitzpatrick skin type per stage, and of the last tested stage with image counts and bootstrap
  95% intervals; its nine-partition confusion matrix and per-label recall from the prediction table;
- excerpts of each stage's last validation samples and last rollout table;
- the attention overlays the ``AttentionMaps`` callback logged (last validation of each stage).

    python -m skinflow report --run-id 5678bdb4... [--tracking-uri sqlite:///mlruns/mlflow.db] [--out report.html]
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import os
import tempfile
import time
from pathlib import Path

from skinflow.analysis.compare import CompareError, client_for
from skinflow.analysis.plotting import pyplot
from skinflow.data.formats import split_parsed
from skinflow.data.names import file_stem
from skinflow.data.ontology import SKIN_TYPE_KEYS
from skinflow.metrics.headline import HEADLINE_METRICS
from skinflow.tracking.store import DEFAULT_TRACKING_URI, StoreError

TABLE_METRICS = (*HEADLINE_METRICS, "test/parse_failure", "test/graded_top1_by_fst/worst",
                 "test/graded_top1_by_fst/gap")
CURVES = ("train/loss", "reward/total", "rl/kl", "rl/entropy", "train/lr", "val/graded_top1", "val/reward/caption_fields",
          "val/attention_top10_share")
SMOOTHING = 0.6  # TensorBoard's default slider position
SMOOTH_FROM = 10  # points; a shorter series is drawn as points only


def png_data(fig) -> str:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def report_runs(client, run_id: str) -> tuple[object, list]:
    """The run and its stage runs: a pipeline parent's children in start order, or the run alone."""
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    children = sorted(children, key=lambda r: r.info.start_time)
    return run, children or [run]


def metric_rows(stages: list) -> dict[str, dict[str, float]]:
    rows = {}
    for stage in stages:
        metrics = stage.data.metrics
        if any(f"start/{k}" in metrics for k in TABLE_METRICS):
            rows[f"{stage.info.run_name} (start)"] = {k: metrics[f"start/{k}"] for k in TABLE_METRICS if f"start/{k}" in metrics}
        rows[stage.info.run_name] = {k: metrics[k] for k in TABLE_METRICS if k in metrics}
    return rows


def table_html(rows: dict[str, dict[str, float]]) -> str:
    head = "".join(f"<th>{html.escape(k.removeprefix('test/'))}</th>" for k in TABLE_METRICS)
    body = []
    for name, values in rows.items():
        cells = "".join(f"<td>{values[k]:.4f}</td>" if k in values else "<td>–</td>" for k in TABLE_METRICS)
        body.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return f"<table><tr><th>stage</th>{head}</tr>{''.join(body)}</table>"


# each stage's question, and the metric(s) that answer it: start (the checkpoint it began from) -> end
CLAIMS = {
    "warmup": ("does supervised warmup teach the format and the labels?", ("test/graded_top1", "test/top6_exact")),
    "stage1": ("does Stage I raise the validation caption reward?", ("val/reward/caption_fields",)),
    "stage2": ("does Stage II raise graded top-1 and top-6?", ("test/graded_top1", "test/graded_top6")),
}


def stage_claims(stages: list) -> list[dict]:
    """One row per stage and claim metric: ``{stage, question, metric, start, end}`` (``start`` is the
    ``start/<metric>`` the pipeline logs when it evaluates a stage's starting checkpoint; None where absent).

    >>> from types import SimpleNamespace as N
    >>> run = N(info=N(run_name="stage1"), data=N(tags={"skinflow.stage": "stage1"},
    ...         metrics={"start/val/reward/caption_fields": 0.41, "val/reward/caption_fields": 0.47}))
    >>> [(c["metric"], c["start"], c["end"]) for c in stage_claims([run])]
    [('val/reward/caption_fields', 0.41, 0.47)]
    """
    rows = []
    for stage in stages:
        kind = stage.data.tags.get("skinflow.stage", stage.info.run_name)
        if kind not in CLAIMS:
            continue
        question, keys = CLAIMS[kind]
        metrics = stage.data.metrics
        for key in keys:
            rows.append({"stage": stage.info.run_name, "question": question, "metric": key,
                         "start": metrics.get(f"start/{key}"), "end": metrics.get(key)})
    return rows


def claims_html(rows: list[dict]) -> str:
    def cell(value):
        return "<td>–</td>" if value is None else f"<td>{value:.4f}</td>"

    body = []
    for r in rows:
        change = "<td>–</td>" if r["start"] is None or r["end"] is None else f"<td>{r['end'] - r['start']:+.4f}</td>"
        body.append(f"<tr><th>{html.escape(r['stage'])}</th><td style='text-align:left'>{html.escape(r['question'])}</td>"
                    f"<td style='text-align:left'>{html.escape(r['metric'])}</td>{cell(r['start'])}{cell(r['end'])}{change}</tr>")
    return ("<table><tr><th>stage</th><th>question</th><th>metric</th><th>start</th><th>end</th><th>change</th></tr>"
            + "".join(body) + "</table>")


def logged_table(client, run_id: str, path: str) -> list[dict]:
    """Rows of a table ``MlflowClient.log_table`` wrote (``{"columns": [...], "data": [[...]]}``); [] when absent."""
    import json

    try:
        with tempfile.TemporaryDirectory() as folder:
            table = json.loads(Path(client.download_artifacts(run_id, path, folder)).read_text())
    except Exception:  # noqa: BLE001 - a run that never logged it
        return []
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def prediction_table(client, stage) -> list[dict]:
    """The stage's ``predictions/test.json`` rows (``SkinflowStage.prediction_rows``), [] when it has none."""
    return logged_table(client, stage.info.run_id, "predictions/test.json")


def last_table(client, stage, folder: str, contains: str = "") -> tuple[str, list[dict]]:
    """(path, rows) of the last table (by name: ``step000123``, ``val_epoch004``) directly under ``folder`` whose
    name contains ``contains``; ("", []) when there is none. Subfolders (``samples/start/``) are not searched."""
    try:
        files = sorted(a.path for a in client.list_artifacts(stage.info.run_id, folder)
                       if not a.is_dir and a.path.endswith(".json") and contains in a.path.rsplit("/", 1)[-1])
    except Exception:  # noqa: BLE001 - a run without artifacts
        return "", []
    return (files[-1], logged_table(client, stage.info.run_id, files[-1])) if files else ("", [])


EXCERPT_ROWS = 6
EXCERPT_CHARS = 400
SAMPLE_COLUMNS = ("label", "fitzpatrick", "completion", "parsed", "status", "graded_at_1", "graded_at_6")
ROLLOUT_COLUMNS = ("step", "label", "completion", "reward/total")


def excerpt_html(path: str, rows: list[dict], columns: tuple[str, ...]) -> str:
    """The first ``EXCERPT_ROWS`` rows of a logged table, ``columns`` it has (and any ``reward/`` term of a
    rollout), text cut at ``EXCERPT_CHARS`` with the cut marked, all escaped.

    >>> page = excerpt_html("rollouts/step000004.json", [{"label": "acne", "completion": "<b>" + "x" * 500}], ("label", "completion"))
    >>> "&lt;b&gt;" in page, "… (+103 chars)" in page, "rollouts/step000004.json" in page
    (True, True, True)
    """
    if not rows:
        return ""
    extra = [k for k in reward_terms(rows[0]) if k not in columns]
    keys = [k for k in columns if k in rows[0]] + extra

    def cell(value):
        if isinstance(value, float):
            return f"<td>{value:.3f}</td>"
        text = "" if value is None else str(value)
        if len(text) > EXCERPT_CHARS:
            text = f"{text[:EXCERPT_CHARS]}… (+{len(text) - EXCERPT_CHARS} chars)"
        return f"<td class=text>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(cell(r.get(k)) for k in keys) + "</tr>" for r in rows[:EXCERPT_ROWS])
    return (f"<p class=meta>{html.escape(path)}: {min(len(rows), EXCERPT_ROWS)} of {len(rows)} rows</p>"
            f"<table class=excerpt><tr>{head}</tr>{body}</table>")


NO_ANSWER = "no answer"


def first_answer(row: dict) -> str:
    """The top-ranked label of a prediction row, "" when it has none."""
    return next(iter(split_parsed(row.get("parsed"))), "")


def nine_confusion(rows: list[dict]):
    """Counts of (reference nine-partition, top-1 answer's nine-partition); an unparsed or out-of-ontology
    first answer is column ``no answer``.

    >>> rows = [{"label": "psoriasis", "parsed": "eczema; psoriasis"}, {"label": "melanoma", "parsed": ""}]
    >>> table = nine_confusion(rows)
    >>> int(table.loc["inflammatory", "inflammatory"]), int(table.loc["malignant melanoma", NO_ANSWER]), int(table.values.sum())
    (1, 1, 2)
    """
    import pandas as pd

    from skinflow.data.ontology import ONTOLOGY

    def first(row):
        top = first_answer(row)
        return ONTOLOGY.nine(top) if top in ONTOLOGY else NO_ANSWER

    parts = list(ONTOLOGY.nine_partitions)
    frame = pd.DataFrame({"reference": [ONTOLOGY.nine(r["label"]) for r in rows], "answer": [first(r) for r in rows]})
    return pd.crosstab(frame["reference"], frame["answer"]).reindex(index=parts, columns=[*parts, NO_ANSWER], fill_value=0)


def label_recall(rows: list[dict]):
    """Per reference label: images and top-1 recall (first parsed answer is the label), worst first."""
    import pandas as pd

    frame = pd.DataFrame({"label": [r["label"] for r in rows],
                          "hit": [first_answer(r) == r["label"] for r in rows]})
    out = frame.groupby("label")["hit"].agg(images="size", recall="mean").reset_index()
    return out.sort_values(["recall", "images"], ascending=[True, False]).reset_index(drop=True)


def confusion_html(rows: list[dict]) -> str:
    table = nine_confusion(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(f"<tr><th>{html.escape(i)}</th>" + "".join(f"<td>{int(v)}</td>" for v in table.loc[i]) + "</tr>"
                   for i in table.index)
    recall = label_recall(rows)
    recall_rows = "".join(f"<tr><th>{html.escape(r.label)}</th><td>{r.images}</td><td>{r.recall:.3f}</td></tr>"
                          for r in recall.itertuples())
    return (f"<p>{len(rows)} test images; rows: reference nine-partition, columns: the top-1 answer's.</p>"
            f"<table class=confusion><tr><th>reference \\ answer</th>{head}</tr>{body}</table>"
            f"<h3>Per-label top-1 recall (worst first)</h3><table class=recall><tr><th>label</th><th>images</th>"
            f"<th>recall</th></tr>{recall_rows}</table>")


def bootstrap_by_skin_type(rows: list[dict], resamples: int = 1000, seed: int = 0):
    """Per Fitzpatrick type of the prediction rows: images, mean graded top-1 (``graded_at_1``) and a percentile
    bootstrap 95% interval of that mean (``resamples`` draws with replacement, fixed ``seed``).

    >>> rows = [{"fitzpatrick": 2, "graded_at_1": v} for v in (0.0, 1.0, 1.0, 1.0)] + [{"fitzpatrick": 5, "graded_at_1": 0.5}]
    >>> table = bootstrap_by_skin_type(rows)
    >>> [(int(r.type), int(r.images), r.mean) for r in table.itertuples()]
    [(2, 4, 0.75), (5, 1, 0.5)]
    >>> bool(table["low"][0] < 0.75 < table["high"][0]), float(table["low"][1]), float(table["high"][1])
    (True, 0.5, 0.5)
    """
    import numpy as np
    import pandas as pd

    from skinflow.data.ontology import SKIN_TYPES

    rng = np.random.default_rng(seed)
    out = []
    for t in SKIN_TYPES:
        values = np.array([float(r["graded_at_1"]) for r in rows if int(r["fitzpatrick"]) == t])
        if not len(values):
            continue
        means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
        out.append({"type": t, "images": len(values), "mean": float(values.mean()),
                    "low": float(np.percentile(means, 2.5)), "high": float(np.percentile(means, 97.5))})
    return pd.DataFrame(out, columns=["type", "images", "mean", "low", "high"])


def skin_type_interval_figure(name: str, table) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    x = range(len(table))
    ax.bar(x, table["mean"], 0.6, yerr=[table["mean"] - table["low"], table["high"] - table["mean"]], capsize=4)
    for i, r in enumerate(table.itertuples()):
        ax.text(i, r.high + 0.02, f"n={r.images}", ha="center", fontsize=8)
    ax.set_xticks(list(x), [f"type {t}" for t in table["type"]])
    ax.set_ylabel("graded Top-1 (test), bootstrap 95%")
    ax.set_title(name, fontsize=9)
    ax.set_ylim(0, min(1.1, max(1.0, float(table["high"].max()) + 0.1)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png_data(fig)


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average with its start-up bias divided out, so the first
    point is the first value and a constant series stays constant; ``weight`` 0 returns the values.

    >>> smooth([1.0, 1.0, 1.0])
    [1.0, 1.0, 1.0]
    >>> smooth([0.0, 1.0], 0.0)
    [0.0, 1.0]
    >>> [round(v, 4) for v in smooth([0.0, 1.0], 0.5)]  # (0.5*0 + 0.5*1) / (1 - 0.5**2)
    [0.0, 0.6667]
    """
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i) if weight else value)
    return out


def reward_terms(keys) -> list[str]:
    """The ``reward/<term>`` keys among ``keys`` (metric names, table columns), in order, without their ``_std``."""
    return [k for k in keys if k.startswith("reward/") and not k.endswith("_std")]


def curve_keys(metrics) -> list[str]:
    """The stage's curves: ``CURVES`` then every reward term it logged (``reward/<name>``, not its ``_std``).

    >>> curve_keys({"train/loss": 1, "reward/total": 1, "reward/format": 1, "reward/format_std": 1, "val/loss": 1})
    ['train/loss', 'reward/total', 'reward/format']
    """
    return [k for k in CURVES if k in metrics] + sorted(k for k in reward_terms(metrics) if k not in CURVES)


def curves_figure(client, stage) -> str | None:
    """One panel per curve: the logged points faint, their ``smooth`` line over them (series of at least
    ``SMOOTH_FROM`` points; shorter ones are drawn with markers only)."""
    plt = pyplot()
    series = {}
    for key in curve_keys(stage.data.metrics):
        history = sorted(client.get_metric_history(stage.info.run_id, key), key=lambda m: m.step)
        series[key] = ([m.step for m in history], [m.value for m in history])
    if not series:
        return None
    cols = min(4, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes.flat, series.items()):
        if len(steps) >= SMOOTH_FROM:
            ax.plot(steps, values, lw=0.8, alpha=0.3, color="C0")
            ax.plot(steps, smooth(values), lw=1.6, color="C0")
            ax.set_title(f"{key} (smoothed {SMOOTHING})", fontsize=8)
        else:
            ax.plot(steps, values, marker=".", lw=1, color="C0")
            ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle(stage.info.run_name, fontsize=9)
    fig.tight_layout()
    return png_data(fig)


def skin_type_figure(stages: list) -> str | None:
    from skinflow.analysis.plotting import grouped_bars

    plt = pyplot()
    tested = [(s.info.run_name, s.data.metrics) for s in stages
              if any(f"test/graded_top1_by_fst/{t}" in s.data.metrics for t in SKIN_TYPE_KEYS)]
    if not tested:
        return None
    types = [t for t in SKIN_TYPE_KEYS if any(f"test/graded_top1_by_fst/{t}" in m for _, m in tested)]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    grouped_bars(ax, [t.replace("fst_", "type ") for t in types],
                 {name: [metrics.get(f"test/graded_top1_by_fst/{t}", math.nan) for t in types] for name, metrics in tested})
    ax.set_ylabel("graded Top-1 (test)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png_data(fig)


def attention_images(client, stage, limit: int = 8) -> list[tuple[str, str]]:
    """(name, data URI) of the overlays of the stage's last validation that logged any."""
    try:
        steps = [a.path for a in client.list_artifacts(stage.info.run_id, "attention") if a.is_dir]
    except Exception:  # noqa: BLE001 - a run without artifacts
        return []
    if not steps:
        return []
    files = [a.path for a in client.list_artifacts(stage.info.run_id, sorted(steps)[-1]) if a.path.endswith(".png")][:limit]
    out = []
    with tempfile.TemporaryDirectory() as folder:
        for path in files:
            local = client.download_artifacts(stage.info.run_id, path, folder)
            out.append((path, "data:image/png;base64," + base64.b64encode(Path(local).read_bytes()).decode()))
    return out


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}img{max-width:100%}.grid img{width:320px;margin:4px}h2{margin-top:1.6em}
.meta{color:#555;font-size:13px}td.text{text-align:left;white-space:pre-wrap;max-width:640px;font-family:monospace;font-size:12px}"""


def build_report(run_id: str, tracking_uri: str = DEFAULT_TRACKING_URI) -> str:
    client = client_for(tracking_uri)
    try:
        run, stages = report_runs(client, run_id)
    except Exception as error:  # noqa: BLE001 - MLflow raises its own exception types
        raise CompareError(f"no run {run_id!r} in {client.tracking_uri}: {error}") from error
    experiment = client.get_experiment(run.info.experiment_id).name
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.info.start_time / 1000))
    minutes = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 60000
    tags = run.data.tags
    parts = [f"<h1>{html.escape(run.info.run_name or run_id)}</h1>",
             f"<p class=meta>run {run_id} · experiment {html.escape(experiment)} · {run.info.status} · started {started} · "
             f"{minutes:.1f} min · commit {html.escape(tags.get('mlflow.source.git.commit', 'unknown'))}"
             + "".join(f" · {html.escape(k)}={html.escape(v)}" for k, v in sorted(tags.items())
                       if k.startswith("skinflow.") or k in ("stage1", "dve")) + "</p>",
             "<h2>What each stage answered</h2>", claims_html(stage_claims(stages)),
             "<h2>Test metrics</h2>", table_html(metric_rows(stages))]
    tested = [(stage, rows) for stage in stages if (rows := prediction_table(client, stage))]
    if tested:
        stage, rows = tested[-1]
        parts += [f"<h2>Confusion at the nine-partition level: {html.escape(stage.info.run_name)}</h2>", confusion_html(rows)]
    parts.append("<h2>Training curves</h2>")
    for stage in stages:
        figure = curves_figure(client, stage)
        parts.append(f"<img alt='curves {html.escape(stage.info.run_name)}' src='{figure}'>"
                     f"<p class='meta curves'>{html.escape(stage.info.run_name)}: {html.escape(', '.join(curve_keys(stage.data.metrics)))}</p>"
                     if figure else f"<p>{html.escape(stage.info.run_name)}: no curves logged</p>")
    figure = skin_type_figure(stages)
    parts += ["<h2>By skin type</h2>", f"<img alt='skin types' src='{figure}'>" if figure else "<p>no per-type metrics</p>"]
    if tested and "graded_at_1" in tested[-1][1][0]:
        stage, rows = tested[-1]
        table = bootstrap_by_skin_type(rows)
        parts.append(f"<img alt='skin types with intervals' src='{skin_type_interval_figure(stage.info.run_name, table)}'>")
        parts.append("<table class=fst><tr><th>type</th><th>images</th><th>graded top-1</th><th>95% low</th><th>95% high</th></tr>"
                     + "".join(f"<tr><th>{r.type}</th><td>{r.images}</td><td>{r.mean:.4f}</td><td>{r.low:.4f}</td>"
                               f"<td>{r.high:.4f}</td></tr>" for r in table.itertuples()) + "</table>")
    parts.append("<h2>What the model wrote</h2>")
    for stage in stages:
        path, rows = last_table(client, stage, "samples", "val_epoch")
        rollout_path, rollouts = last_table(client, stage, "rollouts")
        if rows or rollouts:
            parts.append(f"<h3>{html.escape(stage.info.run_name)}</h3>")
            if rows:
                parts.append("<h4>Greedy validation answers, last epoch</h4>" + excerpt_html(path, rows, SAMPLE_COLUMNS))
            if rollouts:
                parts.append("<h4>Sampled rollouts, last table</h4>" + excerpt_html(rollout_path, rollouts, ROLLOUT_COLUMNS))
    if not any("class=excerpt" in p for p in parts):
        parts.append("<p>no sample or rollout tables logged</p>")
    parts.append("<h2>Attention of the answer's first token</h2>")
    for stage in stages:
        images = attention_images(client, stage)
        if images:
            parts.append(f"<h3>{html.escape(stage.info.run_name)}</h3><div class=grid>"
                         + "".join(f"<img alt='{html.escape(p)}' src='{uri}'>" for p, uri in images) + "</div>")
    if not any("<h3>" in p for p in parts):
        parts.append("<p>no attention overlays logged (add the AttentionMaps callback and validate)</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>skinflow report {run_id}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def report_command(argv: list[str]) -> Path:
    # one report reads ten or more artifacts: MLflow's progress bar per download would print ten bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(prog="python -m skinflow report", description=__doc__.split("\n")[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--out", default=None, help="HTML file (default mlruns/reports/<run id>.html)")
    parser.add_argument("--log-to-mlflow", action="store_true", help="also log the page to the run as report.html")
    ns = parser.parse_args(argv)
    try:
        page = build_report(ns.run_id, ns.tracking_uri)
    except (CompareError, StoreError) as error:
        parser.exit(2, f"report: {error}\n")
    out = Path(ns.out or Path("mlruns") / "reports" / f"{file_stem(ns.run_id, 'run')}.html")  # the id stays a name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    if ns.log_to_mlflow:
        client_for(ns.tracking_uri).log_artifact(ns.run_id, str(out))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return out
