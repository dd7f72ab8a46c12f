"""Plain classifiers beside the VLM on the 1,500 real Fitzpatrick17k photographs: what top-1 is reachable on exactly
the split, images and augmentation the DataModule gives the VLM (issue 29's baseline and first diagnosis).

    python benchmarks/real_sample_baseline.py                        # 3 seeds x (cnn, tower, probe), ~15 min on 2 cores
    python benchmarks/real_sample_baseline.py --arms cnn --seeds 0   # one arm, one seed
    python benchmarks/real_sample_baseline.py --vlm                  # also the kit's warmup recipe (~8 min a seed)
    python benchmarks/real_sample_baseline.py --save-grid grid.png   # a training batch as it enters the model

Arms, each trained from scratch per seed with AdamW and cross-entropy over the training split's labels:

- ``cnn``: a 1.27 M-parameter CNN built from ``torch.nn`` (a strided stem, four conv-BN-ReLU-pool stages, global
  average pool, linear);
- ``tower``: the tiny preset's own vision tower (random init, as the VLM starts) plus a linear head on its mean
  merged token, trained end to end: the architecture without the language model;
- ``probe``: the same tower frozen at its random init, only the linear head trained: what a random tower passes on;
- ``vlm`` (``--vlm``): ``fit --config configs/experiment/warmup_tiny_real_sample.yaml`` with the seed, its test
  metrics as the kit logs them.

Images come from the DataModule of ``configs/data/real_sample.yaml`` (its split, seed, ``image_size``, training
augmentation stream and evaluation transform); the CNN sees the same uint8 square as the processor, normalised with
the processor's mean and std; the tower arms see the processor's own ``pixel_values``. Reported on the test split:
top-1 and top-6 over the training labels, three-class (the three-partition class of the first answer). Mean ± std
over seeds (sample std).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from skinflow.data.ontology import ONTOLOGY  # noqa: E402

ARMS = ("cnn", "tower", "probe")
TINY_FIELDS = {"text_hidden": int, "text_layers": int, "text_heads": int, "vision_hidden": int, "vision_depth": int,
               "vision_heads": int, "rope_theta": float, "patch_size": int, "stem": str,
               "stem_widths": lambda v: [int(w) for w in v.split(",")]}


def datamodule(seed: int, image_size: int | None = None, tiny: dict | None = None):
    """The real-sample DataModule exactly as the VLM's recipe builds it (the YAML's init_args), set up."""
    import yaml

    from skinflow.data.datamodule import Fitzpatrick17kDataModule
    from skinflow.models.backbone import BackboneSpec, TinySize, build_processor

    args = yaml.safe_load((REPO / "configs/data/real_sample.yaml").read_text())["init_args"]
    args["csv_path"] = str((REPO / args["csv_path"]).resolve())  # data paths are relative to the repository root
    if image_size:
        args["image_size"] = image_size
    args["seed"] = seed  # the training order and augmentation stream; the split stays split_seed's, the VLM's
    dm = Fitzpatrick17kDataModule(**args, progress=False)
    dm.processor = build_processor(BackboneSpec(tiny=TinySize(**(tiny or {}))))  # the tower arms' patch size
    dm.setup("fit")
    dm.setup("test")
    return dm


def split_items(dm, split: str, epoch: int = 0, seed: int = 0) -> list[dict]:
    """One pass over a split: training items in the DataModule's epoch order with their augmentation seeds."""
    from skinflow.data.order import EpochShuffle

    dataset = dm.splits[split]
    if split != "train":
        return [dataset[i] for i in range(len(dataset))]
    order = EpochShuffle(len(dataset), seed)
    order.set_epoch(epoch)
    return [dataset[key] for key in order]


def unaugmented(dm, split: str):
    """``dm``'s ``split`` read with the evaluation transform (the training split without its augmentation)."""
    import copy

    from skinflow.data.transforms import eval_transform

    dataset = copy.copy(dm.splits[split])
    dataset.transform = eval_transform(dm.hparams.image_size)
    return dataset


def evaluation_batches(dm, split: str):
    """``split``'s batches as the model is evaluated on them: the test loader, or ``unaugmented`` for the others."""
    if split == "test":
        return dm.test_dataloader()
    return torch.utils.data.DataLoader(unaugmented(dm, split), batch_size=32, collate_fn=dm.collator("test"))


class SmallCNN(nn.Module):
    """A 5x5 stride-2 stem, then four conv-BN-ReLU-maxpool stages (64, 128, 256, 384 channels), global average pool,
    dropout, linear: 1.27 M parameters, about 0.25 GMAC an image at 112 px (cheap enough for 2 CPU cores)."""

    def __init__(self, classes: int, widths=(64, 128, 256, 384)):
        super().__init__()
        layers, channels = [nn.Conv2d(3, 32, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True)], 32
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(channels, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean((2, 3)))


class TowerClassifier(nn.Module):
    """The tiny preset's vision tower (the VLM's own, random init) and a linear head on the mean merged token."""

    def __init__(self, classes: int, frozen: bool, seed: int, tiny: dict | None = None):
        super().__init__()
        from skinflow.models.backbone import BackboneSpec, TinySize, build_backbone

        model, _ = build_backbone(BackboneSpec(seed=seed, tiny=TinySize(**(tiny or {}))))
        self.core = model.model  # Qwen2.5-VL's inner model: get_image_features runs the tower and its merger
        self.core.requires_grad_(False)
        self.visual = self.core.visual
        self.frozen = frozen
        self.visual.requires_grad_(not frozen)
        self.head = nn.Linear(self.core.config.text_config.hidden_size, classes)

    def forward(self, pixel_values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self.core.get_image_features(pixel_values, grid, return_dict=True).pooler_output  # one per image
        return self.head(torch.stack([t.mean(0) for t in tokens]))


def batches(items: list[dict], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def inputs(arm: str, chunk: list[dict], processor):
    images = [item["image"] for item in chunk]
    if arm == "cnn":
        x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
        return ((x - mean) / std,)
    vision = processor.images(images)
    return vision["pixel_values"], vision["image_grid_thw"]


def evaluate(model, arm: str, items: list[dict], labels: list[str], processor) -> dict[str, float]:
    model.eval()
    index = {label: i for i, label in enumerate(labels)}
    target = torch.tensor([index.get(item["target"].label, -1) for item in items])
    with torch.no_grad():
        logits = torch.cat([model(*inputs(arm, chunk, processor)) for chunk in batches(items, 64)])
    ranked = logits.argsort(-1, descending=True)
    top1 = ranked[:, 0]
    three = [ONTOLOGY.three(labels[p]) == item["target"].three for p, item in zip(top1.tolist(), items)]
    return {"top1": (top1 == target).float().mean().item(),
            "top6": (ranked[:, :6] == target[:, None]).any(-1).float().mean().item(),
            "three": float(np.mean(three)),
            "distinct_top1": int(top1.unique().numel())}


def train_arm(arm: str, dm, seed: int, epochs: int, lr: float, batch_size: int, log=print,
              tiny: dict | None = None) -> dict[str, float]:
    torch.manual_seed(seed)
    processor = dm.processor
    labels = sorted({item["target"].label for item in split_items(dm, "val")} | set(dm.splits["train"].records["label"]))
    index = {label: i for i, label in enumerate(labels)}
    model = SmallCNN(len(labels)) if arm == "cnn" else TowerClassifier(len(labels), frozen=arm == "probe", seed=seed,
                                                                               tiny=tiny)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps = epochs * -(-len(dm.splits["train"]) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        if arm == "probe":
            model.visual.eval()
        for chunk in batches(split_items(dm, "train", epoch, seed), batch_size):
            target = torch.tensor([index[item["target"].label] for item in chunk])
            loss = nn.functional.cross_entropy(model(*inputs(arm, chunk, processor)), target, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if (epoch + 1) % max(1, epochs // 4) == 0:
            log(f"  [{arm} seed {seed}] epoch {epoch + 1}/{epochs} loss {loss.item():.3f} ({time.time() - start:.0f} s)")
    result = evaluate(model, arm, split_items(dm, "test"), labels, processor)
    result["seconds"] = time.time() - start
    train = unaugmented(dm, "train")
    result["train_top1"] = evaluate(model, arm, [train[i] for i in range(len(train))], labels, processor)["top1"]
    result["params"] = sum(p.numel() for p in params)
    return result


def vlm_arm(seed: int, extra: list[str] = (), rank_labels: bool = False) -> dict[str, float]:
    """The kit's real-sample warmup recipe through its CLI (``extra``: overrides, for the diagnosis' variants); its
    test metrics as logged, and how many distinct first answers it gave on the test split (1: collapsed).
    ``rank_labels``: also the language model's likelihood ranking of the labels on test and train
    (``likelihood_ranking``; about 4 minutes more a seed on 2 cores)."""
    from skinflow.data.formats import parse_answer
    from skinflow.launcher import lightning_cli
    from skinflow.stages.base import SkinflowStage

    first_answers: list[str] = []
    original = SkinflowStage.generate_text

    def recording(self, batch):
        texts = original(self, batch)
        if not self.training and self.trainer is not None and self.trainer.testing:
            first_answers.extend((parse_answer(t).labels or ["-"])[0] for t in texts)
        return texts

    SkinflowStage.generate_text = recording
    start = time.time()
    try:
        cli = lightning_cli(["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_real_sample.yaml"),
                             f"--seed_everything={seed}", f"--data.init_args.seed={seed}", "--trainer.logger=false",
                             "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]",
                             f"--trainer.default_root_dir={REPO / '.cache' / 'baseline_vlm' / str(seed)}", *extra])
    finally:
        SkinflowStage.generate_text = original
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    out = {"top1": metrics["test/top1_exact"], "top6": metrics["test/top6_exact"], "three": metrics["test/top1_three"],
           "distinct_top1": len(set(first_answers)), "seconds": time.time() - start, "params": float("nan"),
           "head_top1": safe_head_top1(cli.model, cli.datamodule),
           "head_train_top1": safe_head_top1(cli.model, cli.datamodule, "train")}
    if rank_labels:
        for split in ("test", "train"):
            ranking = likelihood_ranking(cli.model, cli.datamodule, split)
            out[f"rank_{split}_top1"], out[f"rank_{split}_top6"] = ranking["top1"], ranking["top6"]
    return out


def safe_head_top1(stage, dm, split: str = "test") -> float:
    try:
        return label_head_top1(stage, dm, split)
    except Exception as err:  # noqa: BLE001  a diagnostic: never lose the run's figures to it
        print(f"  (label head top-1 not measured: {type(err).__name__}: {err})")
        return float("nan")


def label_head_top1(stage, dm, split: str = "test") -> float:
    """Top-1 of the warmup's auxiliary label head on ``split`` (nan without one): what the vision features alone
    support, beside the answer the language model writes from them. ``train`` is read with the evaluation transform,
    so it sits beside test top-1 as the fit to the training photographs (overfitting against underfitting)."""
    from skinflow.data.ontology import ONTOLOGY

    if getattr(stage, "label_head", None) is None:
        return float("nan")
    stage.eval()
    hits = total = 0
    with torch.no_grad():
        for batch in evaluation_batches(dm, split):
            features = stage.encode_images(stage.model, batch["pixel_values"], batch["image_grid_thw"])
            logits = stage.label_logits(features)
            gold = torch.tensor([ONTOLOGY.index(t.label) for t in batch["targets"]])
            hits += int((logits.argmax(-1) == gold).sum())
            total += len(gold)
    return hits / max(total, 1)


def first_entry_texts(labels) -> list[str]:
    """Each label as the answer's first entry, as the warmup teaches it: the rendered answer up to the entry's end
    (its newline included, so "melanoma" does not also score the start of "melanoma in situ")."""
    from skinflow.data.formats import render_answer

    texts = []
    for label in labels:
        text = render_answer((label,))
        texts.append(text[: text.index(label) + len(label) + 1])
    return texts


@torch.no_grad()
def label_loglikelihoods(stage, batch, labels) -> torch.Tensor:
    """log P(the answer's first entry is ``label`` | prompt, image) under the language model, for every image of
    ``batch`` and every label: (images, labels). The model's own ranking of the labels, beside the answer it writes
    greedily (whose entries 2-6 are the first one's neighbours in the label tree, as the warmup teaches)."""
    from skinflow.models.unwrap import bare_model
    from skinflow.stages.base import LOGPROB_CHUNK_MIB

    pad = stage.processor.tokenizer.pad_token_id
    entries = [stage.processor.tokenizer(t, add_special_tokens=False)["input_ids"] for t in first_entry_texts(labels)]
    width = max(map(len, entries))
    tokens = torch.full((len(entries), width), pad)
    valid = torch.zeros(len(entries), width, dtype=torch.bool)
    for j, ids in enumerate(entries):
        tokens[j, :len(ids)], valid[j, :len(ids)] = torch.tensor(ids), True
    features = stage.encode_images(stage.model, batch["pixel_values"], batch["image_grid_thw"])
    rows = []
    for i, image in enumerate(features):
        prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]
        P = len(prompt)
        ids = torch.cat([prompt.expand(len(entries), P), tokens], 1)  # right-padded: a causal model scores alike
        mask = torch.cat([torch.ones(len(entries), P, dtype=torch.long), valid.long()], 1)
        inputs = stage.model_inputs(ids, mask, None, batch["image_grid_thw"][i:i + 1].expand(len(entries), -1),
                                    tuple(image for _ in entries))
        hidden = bare_model(stage.model).model(**inputs, use_cache=False).last_hidden_state
        logp, _ = stage.head_logprobs(stage.model, hidden[:, P - 1:P - 1 + width], tokens, valid, LOGPROB_CHUNK_MIB)
        rows.append(logp.sum(1))  # 0 at the padding
    return torch.stack(rows)


def likelihood_ranking(stage, dm, split: str = "test") -> dict[str, float]:
    """Top-1 and top-6 of the language model's likelihood ranking of every ontology label (``label_loglikelihoods``)
    on ``split`` (``train`` with the evaluation transform, as ``label_head_top1``)."""
    stage.eval()
    labels = ONTOLOGY.labels
    hits1 = hits6 = total = 0
    for batch in evaluation_batches(dm, split):
        ranked = label_loglikelihoods(stage, batch, labels).argsort(1, descending=True)
        gold = torch.tensor([ONTOLOGY.index(t.label) for t in batch["targets"]])
        hits1 += int((ranked[:, 0] == gold).sum())
        hits6 += int((ranked[:, :6] == gold[:, None]).any(1).sum())
        total += len(gold)
    return {"top1": hits1 / max(total, 1), "top6": hits6 / max(total, 1)}


def rank_checkpoint(path: str, seed: int) -> None:
    """Print the label head's and the likelihood ranking's top-1 / top-6 of a trained warmup checkpoint, test and
    train split (the data of ``seed``: the split is the recipe's whatever the seed)."""
    from skinflow.stages.warmup import WarmupStage

    stage = WarmupStage.load_from_checkpoint(path, map_location="cpu")
    dm = datamodule(seed)
    dm.processor = stage.processor  # the checkpoint's own (its patch size)
    for split in ("test", "train"):
        ranking = likelihood_ranking(stage, dm, split)
        print(f"{split}: labels ranked by likelihood: top-1 {ranking['top1']:.3f}  top-6 {ranking['top6']:.3f}  "
              f"label head top-1 {label_head_top1(stage, dm, split):.3f}")


def save_grid(dm, path: str, n: int = 16) -> None:
    """The first ``n`` training items of epoch 0, as the processor receives them (after augmentation), beside the
    photographs they come from, and the processor's pixel_values turned back into images: what the model sees."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from skinflow.data.transforms import to_rgb

    items = split_items(dm, "train")[:n]
    dataset = dm.splits["train"]
    by_hash = {row["md5hash"]: row["image_file"] for row in dataset.records}
    vision = dm.processor.images([item["image"] for item in items])
    seen = dm.processor.pixels_to_images(vision["pixel_values"], vision["image_grid_thw"])
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.3))
    for col, (item, image) in enumerate(zip(items, seen)):
        with Image.open(dataset.image_dir / by_hash[item["target"].md5hash]) as img:
            original = to_rgb(img)
        for row, (picture, title) in enumerate([(original, "photograph"), (item["image"], "augmented"), (image, "model input")]):
            axes[row][col].imshow(picture)
            axes[row][col].axis("off")
            if col == 0:
                axes[row][col].set_title(title, fontsize=7, loc="left")
        axes[0][col].set_title(item["target"].label[:14], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {ARMS}")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--image-size", type=int, default=None, help="override the config's image_size")
    parser.add_argument("--tiny", action="append", default=[], metavar="KEY=VALUE",
                        help="a tiny-preset size for the tower arms (repeatable), e.g. --tiny vision_depth=6")
    parser.add_argument("--vlm", action="store_true", help="also run the kit's warmup recipe per seed")
    parser.add_argument("--save-grid", default=None, help="write a PNG of a training batch as the model sees it")
    parser.add_argument("--rank-labels", action="store_true", help="with --vlm: also rank every label by the language "
                        "model's likelihood as the first answer (top-1 / top-6 on test and train)")
    parser.add_argument("--rank-checkpoint", default=None, metavar="CKPT",
                        help="instead of training: the label head's and the likelihood ranking's figures of a warmup "
                        "checkpoint of the recipe (e.g. .cache/baseline_vlm/0/checkpoints/*.ckpt)")
    parser.add_argument("--vlm-arg", action="append", default=[], help="an override for the VLM recipe (repeatable), "
                        "e.g. --vlm-arg=--trainer.max_epochs=36")
    ns = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    arms = [a for a in ns.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arm(s) {sorted(unknown)}; known: {ARMS}")
    tiny = {}
    for pair in ns.tiny:
        key, _, value = pair.partition("=")
        if key not in TINY_FIELDS or not value:
            parser.error(f"--tiny {pair!r}: expected KEY=VALUE with KEY one of {sorted(TINY_FIELDS)}")
        tiny[key] = TINY_FIELDS[key](value)
    if ns.rank_labels and not ns.vlm:
        parser.error("--rank-labels ranks the labels of the --vlm run: add --vlm (or use --rank-checkpoint CKPT)")
    if ns.rank_checkpoint:
        if not Path(ns.rank_checkpoint).is_file():
            parser.error(f"--rank-checkpoint {ns.rank_checkpoint!r}: no such checkpoint file")
        rank_checkpoint(ns.rank_checkpoint, ns.seeds[0])
        return
    results: dict[str, list[dict]] = {}
    for seed in ns.seeds:
        dm = datamodule(seed, ns.image_size, tiny)
        if ns.save_grid and seed == ns.seeds[0]:
            save_grid(dm, ns.save_grid)
        sizes = {k: len(v) for k, v in dm.splits.items()}
        print(f"seed {seed}: splits {sizes}, image_size {dm.hparams.image_size}")
        for arm in arms:
            lr = ns.lr if arm == "cnn" else ns.lr / 2
            out = train_arm(arm, dm, seed, ns.epochs, lr, ns.batch_size, tiny=tiny)
            print(f"  {arm:<6} seed {seed}: top-1 {out['top1']:.3f}  top-6 {out['top6']:.3f}  three {out['three']:.3f}  "
                  f"distinct top-1 answers {out['distinct_top1']}  (train split top-1 {out['train_top1']:.3f}; "
                  f"{out['params'] / 1e6:.2f} M trained, {out['seconds']:.0f} s)")
            results.setdefault(arm, []).append(out)
        if ns.vlm:
            out = vlm_arm(seed, ns.vlm_arg, ns.rank_labels)
            print(f"  vlm    seed {seed}: top-1 {out['top1']:.3f}  top-6 {out['top6']:.3f}  three {out['three']:.3f}  "
                  f"distinct top-1 answers {out['distinct_top1']}  label head top-1 {out['head_top1']:.3f} "
                  f"(train split {out['head_train_top1']:.3f})  "
                  f"({out['seconds']:.0f} s) {' '.join(ns.vlm_arg)}")
            if ns.rank_labels:
                print(f"  vlm    seed {seed}, labels ranked by likelihood: top-1 {out['rank_test_top1']:.3f}  top-6 "
                      f"{out['rank_test_top6']:.3f}  (train split top-1 {out['rank_train_top1']:.3f})")
            results.setdefault("vlm", []).append(out)
    print("\n| arm | top-1 | top-6 | three-class | seeds |\n|---|---|---|---|---|")
    for arm, runs in results.items():
        cells = []
        for key in ("top1", "top6", "three"):
            values = np.array([r[key] for r in runs])
            cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}")
        print(f"| {arm} | {' | '.join(cells)} | {len(runs)} |")


if __name__ == "__main__":
    main()
