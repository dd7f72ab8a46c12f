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

``label_loss_weight`` adds an auxiliary loss: a linear head on the image's mean merged vision token predicts the
reference label (cross-entropy over the ontology's labels), weighted by it and added to the text loss. The text
loss reaches the vision tower only through the language model; the head gives the tower a direct signal, which a
randomly initialised tower on real photographs needs (``docs/results.md``, "Real photographs"). The head is a
training aid: checkpointed for resume, never handed to a later stage or exported. 0 (the default) leaves it out.
``label_smoothing`` smooths that head's targets (the mass spread over all the ontology's labels), as the CNN baseline
of ``benchmarks/real_sample_baseline.py`` trains. ``text_loss_trains_vision`` false stops the text loss's gradient at
the vision features: the tower and merger then learn from the label head alone (as the baseline's tower arm does),
and the language model learns to read them (on the real-photograph recipe it did not help, seed 0: test top-1 0.264
against 0.277; ``docs/results.md``).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from skinflow.data.ontology import ONTOLOGY
from skinflow.errors import UserError, require
from skinflow.metrics.grading import GradingSpec
from skinflow.models.backbone import BackboneSpec
from skinflow.models.unwrap import bare_model
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
        label_loss_weight: weight of the auxiliary label loss on the vision features (0: none; see the module
            docstring).
        label_smoothing: label smoothing of the auxiliary label loss (0: none).
        text_loss_trains_vision: whether the text loss's gradient reaches the vision tower (false needs the label
            head: it is then the tower's only signal).
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
        label_loss_weight: float = 0.0,
        label_smoothing: float = 0.0,
        text_loss_trains_vision: bool = True,
    ):
        # checked before the backbone is built: a bad value is one line, at once
        require(lr > 0, "lr", lr, "must be positive")
        require(weight_decay >= 0, "weight_decay", weight_decay, "must be >= 0")
        require(all(0 <= b < 1 for b in betas), "betas", tuple(betas), "must each be in [0, 1)")
        require(warmup_steps >= 0, "warmup_steps", warmup_steps, "must be >= 0")
        require(0 <= min_lr_ratio <= 1, "min_lr_ratio", min_lr_ratio, "must be in [0, 1]")
        require(content_weight > 0, "content_weight", content_weight, "must be positive (1: every target token alike)")
        require(label_loss_weight >= 0, "label_loss_weight", label_loss_weight, "must be >= 0 (0: no label head)")
        require(0 <= label_smoothing < 1, "label_smoothing", label_smoothing, "must be in [0, 1)")
        require(text_loss_trains_vision or label_loss_weight > 0, "text_loss_trains_vision", text_loss_trains_vision,
                "false needs label_loss_weight > 0 (else nothing trains the vision tower)")
        super().__init__(backbone, max_new_tokens, init_from, grading)
        self.save_hyperparameters()
        self.label_head = None
        if label_loss_weight > 0:
            hidden = bare_model(self.model).config.text_config.hidden_size  # the merger's output width
            self.label_head = nn.Linear(hidden, len(ONTOLOGY))

    def label_logits(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The label head on each image's mean merged vision token: (images, ontology labels)."""
        return self.label_head(torch.stack([f.mean(0) for f in features]).float())

    def label_loss(self, features: tuple[torch.Tensor, ...], targets) -> torch.Tensor:
        """Cross-entropy of the label head (``label_logits``)."""
        logits = self.label_logits(features)
        labels = torch.tensor([ONTOLOGY.index(t.label) for t in targets], device=logits.device)
        return nn.functional.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss to minimise and the label head's loss (None without the head)."""
        if self.label_head is None:
            return self.teacher_forced_loss(batch, self.hparams.content_weight), None
        # one pass of the vision tower feeds both losses
        features = self.encode_images(self.model, batch["pixel_values"], batch["image_grid_thw"])
        label_loss = self.label_loss(features, batch["targets"])
        if not self.hparams.text_loss_trains_vision:
            features = tuple(f.detach() for f in features)
        text_loss = self.teacher_forced_loss(batch, self.hparams.content_weight, features)
        return text_loss + self.hparams.label_loss_weight * label_loss, label_loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, label_loss = self.training_loss(batch)
        if label_loss is not None:
            self.log("train/label_loss", label_loss, batch_size=len(batch["targets"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["targets"]))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def configure_model(self) -> None:
        from lightning.pytorch.strategies import ModelParallelStrategy

        if self.label_head is not None and isinstance(getattr(self._trainer, "strategy", None), ModelParallelStrategy):
            raise UserError("model.init_args.label_loss_weight > 0 is not supported under sharding (FSDP2 would not "
                            "reduce the label head's gradients): use it with DDP or one process")
        super().configure_model()

    def configure_optimizers(self):
        hp = self.hparams
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return adamw_with_schedule(self.trainable_parameters(), hp.lr, hp.weight_decay, hp.betas,
                                   lambda opt: LambdaLR(opt, partial(warmup_cosine, warmup_steps=hp.warmup_steps,
                                                                     total_steps=total, min_ratio=hp.min_lr_ratio)))
