"""Which runs a notebook shows: the ablation grid its first cell names or, when that grid is not in the store, the
demo's pipeline runs (``make demo`` / ``make demo-quick``), said in one line.

A grid takes ~40 minutes to make; the demo's runs are what a new user has first. On the demo's runs a notebook
shows one row per pipeline run name (``demo``, ``demo-quick``; repeats of one name are pooled like seeds, and the
``n`` columns count them). Errors here speak the notebook's language (the names in its first cell), not the
command line's flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from skinflow.analysis.compare import client_for, runs_frame
from skinflow.errors import UserError
from skinflow.tracking.store import DEFAULT_TRACKING_URI, StoreError

DEMO_EXPERIMENT = "skinflow-pipeline"  # configs/pipeline/demo.yaml and demo_quick.yaml
MAKE_GRID = "python -m skinflow ablate --config configs/ablation/paper_table_real_sample.yaml"


class NotebookError(UserError):
    """Nothing to show: the message names the notebook's variables and the command that makes the runs."""


@dataclass(frozen=True)
class NotebookRuns:
    experiment: str  # the MLflow experiment the runs are in
    frame: pd.DataFrame  # one row per FINISHED parent run, with ``tags.skinflow.row`` set (a grid row or a run name)
    filter_string: str  # the same runs for ``compare``
    group_by: tuple[str, ...]  # the same grouping for ``compare``
    demo: bool  # the grid was absent and these are the demo's runs
    note: str  # the one line said when the notebook starts


def grid_frame(client, experiment: str, ablation: str | None = None) -> pd.DataFrame:
    """The FINISHED parent runs of an ablation grid (tag ``skinflow.ablation``, default the experiment name), in the
    grid file's row order (tag ``skinflow.row_index``), then by seed; empty if none."""
    frame = runs_frame(client, experiment, f"tags.`skinflow.ablation` = '{ablation or experiment}'")
    if frame.empty:
        return frame
    order = [c for c in ("tags.skinflow.row_index", "tags.skinflow.seed") if c in frame.columns]
    keys = frame[order].apply(pd.to_numeric, errors="coerce") if order else None
    return frame.loc[keys.sort_values(order).index] if order else frame


def demo_frame(client, experiment: str = DEMO_EXPERIMENT) -> pd.DataFrame:
    """The FINISHED pipeline parent runs of ``experiment`` that tested a final stage, oldest first, with the run name
    as their row (``tags.skinflow.row``)."""
    frame = runs_frame(client, experiment, level="pipeline")
    if frame.empty or "metrics.final/test/top1_exact" not in frame.columns:
        return frame.iloc[0:0]
    frame = frame[frame["metrics.final/test/top1_exact"].notna()].sort_values("start_time")
    return frame.assign(**{"tags.skinflow.row": frame["run_name"].astype(str)}).reset_index(drop=True)


def experiments(client) -> list[str]:
    return sorted(e.name for e in client.search_experiments())


def notebook_runs(experiment: str, tracking_uri: str = DEFAULT_TRACKING_URI, fallback: str = DEMO_EXPERIMENT,
                  say=print) -> NotebookRuns:
    """The grid ``experiment`` if it holds finished grid runs, else the demo's runs in ``fallback``; ``say`` gets
    one line telling which (and, for the demo, how to make the grid). ``NotebookError`` when neither has runs."""
    try:
        client = client_for(tracking_uri)
    except StoreError:  # its message speaks of --tracking-uri
        raise NotebookError(f"TRACKING_URI = {tracking_uri!r} holds no MLflow store (the notebook runs in "
                            f"{Path.cwd()}); run `make demo-quick` "
                            "(about 2 minutes) in a terminal at the repository root and start the notebook there, or "
                            "set TRACKING_URI in the first cell") from None
    names = experiments(client)
    if experiment in names:
        frame = grid_frame(client, experiment)
        if not frame.empty:
            rows = frame["tags.skinflow.row"].nunique() if "tags.skinflow.row" in frame.columns else 0
            note = f"Grid {experiment!r}: {len(frame)} finished runs, {rows} rows ({tracking_uri})."
            say(note)
            return NotebookRuns(experiment, frame, f"tags.`skinflow.ablation` = '{experiment}'", ("row",), False, note)
    if fallback in names:
        frame = demo_frame(client, fallback)
        if not frame.empty:
            note = (f"Grid {experiment!r} is not in {tracking_uri}: showing the demo's {len(frame)} finished runs in "
                    f"{fallback!r} instead, one row per run name (make the grid with `{MAKE_GRID}`, then re-run).")
            say(note)
            return NotebookRuns(fallback, frame, "tags.`skinflow.stage` = 'pipeline'", ("run_name",), True, note)
    raise NotebookError(f"no finished runs to show: EXPERIMENT = {experiment!r} (set in the first cell) has no grid runs "
                        f"and {fallback!r} no demo runs in {tracking_uri} (experiments there: {names}); run `make "
                        f"demo-quick` (about 2 minutes) at the repository root, or `{MAKE_GRID}` for the grid")


def row_runs(runs: NotebookRuns, row: str, seed: int | None = None) -> list[str]:
    """Parent run ids of ``row`` (and ``seed``, for a grid; the demo's runs have no seed tag), newest first."""
    frame = runs.frame[runs.frame["tags.skinflow.row"].astype(str) == row]
    if seed is not None and not runs.demo and "tags.skinflow.seed" in frame.columns:
        frame = frame[frame["tags.skinflow.seed"].astype(str) == str(seed)]
    return list(frame.sort_values("start_time", ascending=False)["run_id"])
