"""Where the model looks: attention of the answer's first token over the image, as a map and a concentration.

The query is the last prompt position, the one whose output predicts the answer's first token. Its attention
weights over the prompt are averaged over layers and heads of the language model, restricted to the image tokens,
renormalised to sum to 1, and laid back on the image grid: Qwen2.5-VL merges 2 x 2 patches into one token, so an
image of (h, w) patches has (h/2) x (w/2) tokens in row-major order. Concentration is the share of that mass in
the top 10% of image tokens (0.1 for uniform attention, 1 when one tenth of the patches take everything).

``AttentionMaps`` is the Lightning callback: at each validation it maps N fixed validation images, logs
``val/attention_top10_share`` and one PNG overlay per image (``attention/step<k>/<i>_<md5>.png``) to MLflow.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback

from skinflow.analysis.plotting import pyplot, save_figure
from skinflow.data.names import file_stem
from skinflow.models.unwrap import bare_model


def top_share(weights: torch.Tensor, fraction: float = 0.1) -> float:
    """Share of the total weight held by the largest ceil(fraction * n) entries.

    >>> round(top_share(torch.ones(20)), 6), top_share(torch.tensor([0.0] * 9 + [1.0]))
    (0.1, 1.0)
    """
    flat = weights.flatten().float()
    k = max(1, math.ceil(fraction * flat.numel()))
    return float(flat.topk(k).values.sum() / flat.sum())


def token_grid(weights: torch.Tensor, grid_thw: torch.Tensor, merge: int = 2) -> torch.Tensor:
    """(t*h*w / merge^2,) image-token weights -> (h/merge, w/merge) map (frames averaged), row-major.

    >>> token_grid(torch.arange(6.0), torch.tensor([1, 4, 6])).tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    t, h, w = (int(v) for v in grid_thw)
    return weights.view(t, h // merge, w // merge).mean(0)


def image_attention(last_rows: list[torch.Tensor], image_mask: torch.Tensor) -> list[torch.Tensor]:
    """Per sequence, the last position's attention over its image tokens, averaged over layers (and heads, already)
    and renormalised. last_rows: per layer (B, L), the head-mean of the last query's weights; image_mask (B, L)
    bool -> B tensors (n_b,)."""
    last = torch.stack(last_rows).mean(dim=0)  # (B, L)
    out = []
    for row, mask in zip(last, image_mask):
        weights = row[mask]
        out.append(weights / weights.sum().clamp_min(1e-12))
    return out


def language_attention_modules(core: torch.nn.Module) -> list[torch.nn.Module]:
    return [layer.self_attn for layer in core.model.language_model.layers]


@torch.no_grad()
def attention_maps(stage, batch: dict) -> list[torch.Tensor]:
    """(h/2, w/2) attention maps of the batch's prompts (a skinflow stage and a collated batch on its device).

    The backbone runs once with eager attention (the only kind that computes the weights); a hook on each
    language layer's attention keeps only the last query's head-mean row, (B, L), so memory stays at one row per
    layer even at 7B scale. The backbone then goes back to its own attention kind.
    """
    model = stage.model
    core = bare_model(model)
    previous = core.config._attn_implementation
    was_training = model.training
    rows: list[torch.Tensor] = []

    def keep_last_row(module, args, output):
        rows.append(output[1][:, :, -1, :].float().mean(dim=1))  # (B, L)

    hooks = [m.register_forward_hook(keep_last_row) for m in language_attention_modules(core)]
    model.eval()
    core.set_attn_implementation("eager")
    try:
        inputs = stage.model_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"], batch["image_grid_thw"])
        model(**inputs, logits_to_keep=1, use_cache=False)  # attention rows only: no KV cache
    finally:
        for hook in hooks:
            hook.remove()
        core.set_attn_implementation(previous)
        model.train(was_training)
    merge = core.config.vision_config.spatial_merge_size
    weights = image_attention(rows, batch["prompt_ids"] == stage.processor.image_token_id)
    return [token_grid(w, g, merge) for w, g in zip(weights, batch["image_grid_thw"])]


def distinct_label_indices(labels: list, n: int) -> list[int]:
    """The first index of each label in order, up to ``n``; topped up with the next indices when there are fewer
    than ``n`` labels.

    >>> distinct_label_indices(["a", "a", "b", "a", "c"], 3), distinct_label_indices(["a", "a", "a"], 2)
    ([0, 2, 4], [0, 1])
    """
    first: dict = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    chosen = list(first.values())[:n]
    chosen += [i for i in range(len(labels)) if i not in chosen][: n - len(chosen)]
    return sorted(chosen)


def overlay_png(image: np.ndarray, attention: torch.Tensor, path: str | Path, title: str = "",
                vmax: float | None = None) -> Path:
    """The image with the attention map (nearest-upsampled to the image) over it, and the map alone, coloured
    from 0 to ``vmax`` (one scale shared by the images of one validation) with the uniform level 1/n marked on
    the colour bar: near-uniform attention shows as flat colour, not as contrast."""
    plt = pyplot()
    heat = attention.cpu().numpy()
    vmax = float(heat.max()) if vmax is None else vmax
    uniform = 1.0 / heat.size
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    height, width = image.shape[:2]
    axes[0].imshow(image)
    axes[0].imshow(heat, cmap="inferno", alpha=0.55, extent=(0, width, height, 0), interpolation="nearest", vmin=0, vmax=vmax)
    axes[0].set_title(title, fontsize=8)
    shown = axes[1].imshow(heat, cmap="inferno", interpolation="nearest", vmin=0, vmax=vmax)
    axes[1].set_title(f"top-10% share {top_share(attention):.2f}", fontsize=8)
    bar = fig.colorbar(shown, ax=axes[1], fraction=0.046)
    bar.ax.axhline(uniform, color="cyan", lw=1.5)
    bar.ax.text(1.6, uniform, "uniform", color="teal", fontsize=7, va="center", transform=bar.ax.get_yaxis_transform())
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


class AttentionMaps(Callback):
    """At every ``every_n``-th validation: attention maps of the first ``num_images`` validation images.

    Logs ``val/attention_top10_share`` (mean over the images) and, with an MLflow logger, one PNG overlay per
    image under ``attention/step<global_step>/``. The images are the same every time (the validation split's
    first image of each of its first ``num_images`` labels, un-augmented), so the overlays show how the model's
    gaze moves over training; all overlays of one validation share one colour scale.
    """

    def __init__(self, num_images: int = 4, every_n: int = 1, top_fraction: float = 0.1, split: str = "val"):
        self.num_images, self.every_n, self.top_fraction, self.split = num_images, every_n, top_fraction, split
        self.validations = 0
        self.last: list[dict] = []  # what the last call mapped: md5hash, label, map, share (tests, notebooks)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if (self.validations - 1) % self.every_n:
            return
        datamodule = trainer.datamodule
        dataset = datamodule.splits[self.split]
        labels = list(dataset.records["label"]) if hasattr(dataset, "records") else [None] * len(dataset)
        items = [dataset[i] for i in distinct_label_indices(labels, self.num_images)]
        if not items:
            return
        batch = datamodule.collator(self.split)(items)
        batch = {k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        maps = attention_maps(pl_module, batch)
        self.last = [{"md5hash": item["target"].md5hash, "label": item["target"].label, "map": m.cpu(),
                      "share": top_share(m, self.top_fraction)} for item, m in zip(items, maps)]
        shares = [entry["share"] for entry in self.last]
        pl_module.log(f"{self.split}/attention_top10_share", float(np.mean(shares)), batch_size=len(shares))
        logger = trainer.logger
        if logger is None or not hasattr(logger, "run_id") or not trainer.is_global_zero:
            return
        vmax = max(float(entry["map"].max()) for entry in self.last)
        with tempfile.TemporaryDirectory() as folder:
            for i, (item, entry) in enumerate(zip(items, self.last)):
                name = f"{i}_{file_stem(item['target'].md5hash, 'image')}.png"  # ids may come from any dataset
                title = f"{item['target'].label} · step {trainer.global_step}"
                overlay_png(item["image"], entry["map"], Path(folder) / name, title, vmax)
            logger.experiment.log_artifacts(logger.run_id, folder, f"attention/step{trainer.global_step:06d}")
