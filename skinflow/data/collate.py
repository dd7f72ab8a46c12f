"""Collation of (image, Target) items into model inputs through the backbone's processor.

A batch holds, for B images:

- ``pixel_values`` (sum of patches over images, C*T*P*P) and ``image_grid_thw`` (B, 3);
- ``input_ids`` / ``attention_mask`` / ``labels`` (B, L): prompt + target text, left-padded; ``labels`` is -100
  everywhere but the target tokens (teacher forcing on the target text only);
- ``content_mask`` (B, L): True on target tokens that carry content (caption values, answer entries) rather than
  format (tags, field names, numbering), for content-weighted losses;
- ``prompt_ids`` / ``prompt_mask`` (B, Lp): the prompt alone, left-padded, for generation;
- ``targets``: the ``Target`` records;
- ``padding`` (B,) bool: items that only keep a process in step with the others in a multi-process evaluation
  (``skinflow.data.order.EvenEvalShards``; whole batches, never counted).

``prompt: mixed`` (supervised warmup only) draws the prompt per item from ``warmup``, ``caption`` (items with a
caption) and ``diagnosis``, with the matching target text, so the warmed-up model already follows the prompts the
RL stages use. The draw comes from the collator's own seeded generator: the same sequence every run.
"""

from __future__ import annotations

import random
from typing import Literal

import torch

from skinflow.data.formats import DataError, PROMPTS, SYSTEM_PROMPT, Target, content_spans, render_target
from skinflow.errors import ConfigError
from skinflow.models.processor import VisionLanguageProcessor

IGNORE_INDEX = -100
MIXED = "mixed"
# the DataModule's ``prompt`` choices: one of PROMPTS for every example, or ``mixed`` (one drawn per example)
PromptChoice = Literal["warmup", "caption", "diagnosis", "mixed"]


def left_pad(sequences: list[list[int]], pad: int, fill: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged sequences, padding on the left; returns (ids, mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask


class VisionLanguageCollator:
    def __init__(self, processor: VisionLanguageProcessor, prompt: PromptChoice = "warmup", with_caption: bool = True, seed: int = 0):
        if prompt != MIXED and prompt not in PROMPTS:
            raise ConfigError(f"prompt={prompt!r} is not one of {[*PROMPTS, MIXED]}")
        self.processor = processor
        self.prompt = prompt
        self.prompt_texts = {name: processor.chat_prompt(text, SYSTEM_PROMPT) for name, text in PROMPTS.items()}
        self.with_caption = with_caption
        self.rng = random.Random(seed)

    def task(self, target: Target, seed: int | None = None) -> str:
        """The item's prompt; ``mixed`` draws it from the item's seed when it has one (a training item from
        ``EpochShuffle``: the same draw in a resumed run), else from the collator's own stream."""
        if self.prompt != MIXED:
            return self.prompt
        rng = self.rng if seed is None else random.Random(seed)
        return rng.choice(["warmup", "diagnosis", *(["caption"] if self.with_caption and target.caption else [])])

    def __call__(self, items: list[dict]) -> dict:
        skipped = [item["skipped"] for item in items if "skipped" in item]  # unreadable at load time
        items = [item for item in items if "skipped" not in item]
        if not items:
            raise DataError(f"every image of a batch could not be read: {skipped}")
        tok = self.processor.tokenizer
        vision = self.processor.images([item["image"] for item in items])
        targets: list[Target] = [item["target"] for item in items]
        prompts, fulls, labels, contents = [], [], [], []
        for grid, target, item in zip(vision["image_grid_thw"], targets, items):
            task = self.task(target, item.get("seed"))
            prompt = tok(self.processor.expand_image_tokens(self.prompt_texts[task], grid), add_special_tokens=False)["input_ids"]
            text = render_target(target, self.with_caption, task)
            encoded = tok(text + tok.eos_token, add_special_tokens=False, return_offsets_mapping=True)
            answer = encoded["input_ids"]
            spans = content_spans(text)
            content = [any(a < end and start < b for a, b in spans) for start, end in encoded["offset_mapping"]]
            prompts.append(prompt)
            fulls.append(prompt + answer)
            labels.append([IGNORE_INDEX] * len(prompt) + answer)
            contents.append([0] * len(prompt) + [int(c) for c in content])
        input_ids, attention_mask = left_pad(fulls, tok.pad_token_id)
        label_ids, _ = left_pad(labels, tok.pad_token_id, fill=IGNORE_INDEX)
        content_mask, _ = left_pad(contents, 0)
        prompt_ids, prompt_mask = left_pad(prompts, tok.pad_token_id)
        return {
            **vision, "input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids,
            "content_mask": content_mask.bool(), "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "targets": targets,
            "skipped_images": skipped,
            # items that only keep a process in step with the others (``skinflow.data.order.EvenEvalShards``)
            "padding": torch.tensor([bool(item.get("padding")) for item in items]),
        }
