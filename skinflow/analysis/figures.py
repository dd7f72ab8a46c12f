"""Figures and frames for the notebooks (and the report): DVE gains, attention overlays, PNGs inline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skinflow.analysis.attention import attention_maps, top_share
from skinflow.analysis.runs import short_layer_name


def show_png(path: str | Path):
    """An inline image for a notebook cell (IPython's display object)."""
    from IPython.display import Image

    return Image(filename=str(path))


def save_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path)
    return path


def gains_frame(gains: dict[str, torch.Tensor], items: list[dict]) -> pd.DataFrame:
    """Long table of DVE group gains: one row per (image, layer, group) with the image's label and skin type."""
    rows = []
    for name, beta in gains.items():
        layer = short_layer_name(name)
        for i, item in enumerate(items):
            target = item["target"]
            for k, value in enumerate(beta[i].tolist()):
                rows.append({"image": i, "md5hash": target.md5hash, "label": target.label,
                             "fitzpatrick": target.fitzpatrick, "layer": layer, "group": k, "beta": value})
    return pd.DataFrame(rows)


def gains_chart(frame: pd.DataFrame):
    """Left: distribution of beta per layer (all images, all groups). Right: mean beta per label and group."""
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(frame["layer"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].boxplot([frame.loc[frame["layer"] == layer, "beta"] for layer in layers], showfliers=False)
    axes[0].set_xticks(range(1, len(layers) + 1), layers, rotation=30, ha="right", fontsize=7)
    axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("group gain beta (1 = base weight)")
    axes[0].set_title("per layer, over images and groups", fontsize=9)
    by_label = frame.pivot_table(index="label", columns="group", values="beta", aggfunc="mean")
    shown = axes[1].imshow(by_label.to_numpy(), aspect="auto", cmap="coolwarm", vmin=2 - by_label.to_numpy().max(),
                           vmax=by_label.to_numpy().max())
    axes[1].set_yticks(range(len(by_label)), [s[:28] for s in by_label.index], fontsize=7)
    axes[1].set_xlabel("frequency group k")
    axes[1].set_title("mean over layers and images, per label", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.04)
    fig.tight_layout()
    return fig


def attention_summary(stages: dict[str, object], items: list[dict], batch: dict) -> tuple[pd.DataFrame, dict]:
    """Concentration (top-10% share) per image for each named stage; returns the table and the maps."""
    maps, rows = {}, []
    for name, stage in stages.items():
        on_device = {k: v.to(stage.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        maps[name] = [m.cpu() for m in attention_maps(stage, on_device)]
        for i, (item, m) in enumerate(zip(items, maps[name])):
            rows.append({"model": name, "image": i, "label": item["target"].label, "top10_share": top_share(m)})
    return pd.DataFrame(rows), maps


def attention_grid_figure(items: list[dict], maps: dict[str, list[torch.Tensor]], columns: int = 4):
    """Each image (columns) with each model's attention over it (rows)."""
    import matplotlib.pyplot as plt

    n = min(columns, len(items))
    fig, axes = plt.subplots(len(maps), n, figsize=(2.4 * n, 2.5 * len(maps)), squeeze=False)
    for r, (name, model_maps) in enumerate(maps.items()):
        for c in range(n):
            ax = axes[r][c]
            image = np.asarray(items[c]["image"])
            h, w = image.shape[:2]
            ax.imshow(image)
            ax.imshow(model_maps[c].numpy(), cmap="inferno", alpha=0.55, extent=(0, w, h, 0), interpolation="nearest")
            ax.set_title(f"{name}: {top_share(model_maps[c]):.2f}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig
