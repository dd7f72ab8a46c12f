"""Tables the notebooks show, computed from the MLflow store with the compare command's pieces.

- ``paper_table``: the paper's ablation table: one row per ablation row, its factors, Top-1 and Top-6, graded
  Top-1, malignant miss rate and the worst skin type's graded Top-1, each mean ± std over seeds (numbers are
  ``skinflow.analysis.compare.summarize``'s, so they equal ``python -m skinflow compare``'s).
- ``skin_type_table``: graded Top-1 per Fitzpatrick type per row (mean over seeds), with worst type and gap.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from skinflow.analysis.compare import client_for, summarize
from skinflow.analysis.sources import NotebookRuns, grid_frame
from skinflow.data.ontology import SKIN_TYPE_KEYS
from skinflow.tracking.store import DEFAULT_TRACKING_URI

PAPER_COLUMNS = {  # metric key on the grid's parent runs -> column title
    "final/test/top1_exact": "Top-1",
    "final/test/top6_exact": "Top-6",
    "final/test/graded_top1": "graded Top-1",
    "final/test/malignant_miss_top1": "malignant miss",
    "final/test/graded_top1_by_fst/worst": "worst skin type",
}


def grid_runs(experiment: str, tracking_uri: str = DEFAULT_TRACKING_URI, ablation: str | None = None) -> pd.DataFrame:
    """The FINISHED parent runs of an ablation grid (tag ``skinflow.ablation``, default: the experiment name),
    in the grid file's row order (tag ``skinflow.row_index``), then by seed."""
    return grid_frame(client_for(tracking_uri), experiment, ablation)


def parent_runs(source: str | NotebookRuns, tracking_uri: str = DEFAULT_TRACKING_URI, ablation: str | None = None) -> pd.DataFrame:
    """The runs a table is over: a grid experiment's (``grid_runs``), or those a notebook chose (``notebook_runs``)."""
    return source.frame if isinstance(source, NotebookRuns) else grid_runs(source, tracking_uri, ablation)


def paper_table(source: str | NotebookRuns, tracking_uri: str = DEFAULT_TRACKING_URI, ablation: str | None = None) -> pd.DataFrame:
    """Numeric table indexed by row: factor columns, then ``<title> mean``, ``<title> std``, ``<title> n``."""
    frame = parent_runs(source, tracking_uri, ablation)
    summary = summarize(frame, list(PAPER_COLUMNS), ["row"]).table.set_index("row")
    factors = [c for c in frame.columns if c.startswith("tags.") and c[5:] in ("stage1", "dve")]
    out = frame.groupby("tags.skinflow.row")[factors].first().rename(columns=lambda c: c[5:]) if factors else pd.DataFrame(index=summary.index)
    out = out.reindex(summary.index)
    for key, title in PAPER_COLUMNS.items():
        out[f"{title} mean"] = summary[f"{key}_mean"]
        out[f"{title} std"] = summary[f"{key}_std"]
        out[f"{title} n"] = summary[f"n_{key}"]
    return out


def mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``0.512 ± 0.013`` (``± -`` for a single seed).

    >>> mean_std(0.51234, 0.0131), mean_std(0.5, float("nan"))
    ('0.512 ± 0.013', '0.500 ± -')
    """
    return f"{mean:.{digits}f} ± " + ("-" if math.isnan(std) else f"{std:.{digits}f}")


def format_paper_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The paper's layout: factors, then one ``mean ± std`` column per metric (n = seeds in the header)."""
    out = table[[c for c in ("stage1", "dve") if c in table.columns]].copy()
    for title in PAPER_COLUMNS.values():
        n = table[f"{title} n"]
        label = f"{title} (n={int(n.min())})" if n.min() == n.max() else title
        out[label] = [mean_std(m, s, digits) for m, s in zip(table[f"{title} mean"], table[f"{title} std"])]
    return out


def skin_type_table(source: str | NotebookRuns, tracking_uri: str = DEFAULT_TRACKING_URI, ablation: str | None = None,
                    metric: str = "graded_top1") -> pd.DataFrame:
    """Per row: mean over seeds of ``final/test/<metric>_by_fst/fst_t`` for each type with images, the seeds' mean
    worst type and gap, and the number of seeds."""
    frame = parent_runs(source, tracking_uri, ablation)
    keys = [f"final/test/{metric}_by_fst/{t}" for t in SKIN_TYPE_KEYS]
    present = [k for k in keys if f"metrics.{k}" in frame.columns]
    extra = [f"final/test/{metric}_by_fst/{s}" for s in ("worst", "gap")]
    summary = summarize(frame, present + extra, ["row"]).table.set_index("row")
    out = pd.DataFrame(index=summary.index)
    for key in present + extra:
        out[key.rsplit("/", 1)[-1]] = summary[f"{key}_mean"]
    out["seeds"] = summary[f"n_{extra[0]}"]
    return out


def skin_type_chart(table: pd.DataFrame, path: str | Path | None = None, title: str = "graded Top-1 by skin type"):
    """Bars per Fitzpatrick type, one colour per row; saved as PNG when ``path`` is given. Returns the figure."""
    from skinflow.analysis.plotting import grouped_bars, pyplot, save_figure

    plt = pyplot(headless=path is not None)
    types = [c for c in table.columns if c.startswith("fst_")]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    grouped_bars(ax, [t.replace("fst_", "type ") for t in types],
                 {str(row): values[types].astype(float).tolist() for row, values in table.iterrows()})
    ax.set_ylabel("mean over seeds")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, close=False)  # returned for the notebook to show
    return fig
