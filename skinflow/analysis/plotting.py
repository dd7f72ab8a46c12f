"""Matplotlib plumbing shared by the charts: a headless pyplot and one way to write a figure."""

from __future__ import annotations

from pathlib import Path


def pyplot(headless: bool = True):
    """``matplotlib.pyplot``, on the Agg backend when ``headless`` (commands, callbacks; not notebooks)."""
    import matplotlib

    if headless:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110, close: bool = True) -> Path:
    """Write ``fig`` as PNG (creating the folder) and, by default, close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if close:
        pyplot(headless=False).close(fig)
    return path
