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


def grouped_bars(ax, categories: list[str], series: dict[str, list[float]], errors: dict[str, list[float]] | None = None,
                 capsize: float = 3) -> list:
    """One cluster of bars per category, one bar (and colour) per series, centred on the category's tick;
    ``errors`` (same keys, NaN drawn as none) as ± error bars. Returns the bar containers in series order.

    >>> import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> bars = grouped_bars(ax, ["a", "b"], {"x": [1, 2], "y": [3, 4]})
    >>> [[round(float(b.get_x() + b.get_width() / 2), 2) for b in bars[i]] for i in (0, 1)]
    [[-0.2, 0.8], [0.2, 1.2]]
    >>> [float(b.get_height()) for b in bars[1]], [t.get_text() for t in ax.get_xticklabels()]
    ([3.0, 4.0], ['a', 'b'])
    >>> plt.close(fig)
    """
    import math

    width = 0.8 / max(len(series), 1)
    out = []
    for i, (label, values) in enumerate(series.items()):
        offsets = [c + (i - (len(series) - 1) / 2) * width for c in range(len(categories))]
        yerr = None
        if errors is not None:
            yerr = [0.0 if e is None or math.isnan(e) else e for e in errors[label]]
        out.append(ax.bar(offsets, [float(v) for v in values], width, yerr=yerr, capsize=capsize if yerr else 0, label=label))
    ax.set_xticks(range(len(categories)), categories)
    return out
