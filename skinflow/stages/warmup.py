"""Supervised warmup: teacher-forced cross-entropy on the target text (caption block, then ranked answer).

The prompt and image tokens carry label -100, so only the target text is learned. AdamW with linear warmup and
cosine decay; LoRA or full training is the backbone's ``lora`` setting. Validation and test generate answers
and score them (see ``SkinflowStage``).

``content_weight`` re-weights the token losses: content tokens (caption values, answer entries: what the image
decides) weigh ``content_weight``, format tokens (tags, field names, numbering) weigh 1, and the loss is the
weighted mean. At 1 it is the usual mean over target tokens. A randomly initialised model needs it: format
tokens are ~90% of a target and learned within a few dozen steps, after which their gradients drown the few
tokens that depend on the image (measured on the tiny preset: colour-token accuracy 0.27 at 240 steps with
weight 1, 0.51 with weight 10).
"""

from __future__ import annotations

from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from skinflow.errors import require
from skinflow.metrics.grading import GradingSpec
from skinflow.models.backbone import BackboneSpec
from skinflow.stages.base import SkinflowStage, adamw_with_schedule, warmup_cosine


class WarmupStage(SkinflowStage):
    """Supervised warmup stage.

    Args:
        backbone: which backbone to build and what trains (preset, weights, LoRA, ...).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warmup length in optimizer steps.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine decay).
        max_new_tokens: generation length at validation and test.
        init_from: checkpoint of an earlier stage whose trainable weights to start from.
        content_weight: loss weight of content tokens relative to format tokens (see the module docstring).
        grading: credit values of the clinical hierarchy used by the validation/test metrics.
    """

    stage_name = "warmup"

    def __init__(
        self,
        backbone: BackboneSpec | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.05,
        max_new_tokens: int = 96,
        init_from: str | None = None,
        content_weight: float = 1.0,
        grading: GradingSpec | None = None,
    ):
        # checked before the backbone is built: a bad value is one line, at once
        require(lr > 0, "lr", lr, "must be positive")
        require(weight_decay >= 0, "weight_decay", weight_decay, "must be >= 0")
        require(all(0 <= b < 1 for b in betas), "betas", tuple(betas), "must each be in [0, 1)")
        require(warmup_steps >= 0, "warmup_steps", warmup_steps, "must be >= 0")
        require(0 <= min_lr_ratio <= 1, "min_lr_ratio", min_lr_ratio, "must be in [0, 1]")
        require(content_weight > 0, "content_weight", content_weight, "must be positive (1: every target token alike)")
        super().__init__(backbone, max_new_tokens, init_from, grading)
        self.save_hyperparameters()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.teacher_forced_loss(batch, self.hparams.content_weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["targets"]))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return adamw_with_schedule(self.trainable_parameters(), hp.lr, hp.weight_decay, hp.betas,
                                   lambda opt: LambdaLR(opt, partial(warmup_cosine, warmup_steps=hp.warmup_steps,
                                                                     total_steps=total, min_ratio=hp.min_lr_ratio)))
