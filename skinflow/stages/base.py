"""What every skinflow stage shares: the backbone, evaluation by generation, sample tables, slim checkpoints.

Evaluation (``validation_step`` / ``test_step``) generates an answer for each image greedily, parses it into
ranked canonical labels and updates the split's metrics; a sample of prompts' completions is logged as an
MLflow table artifact at the end of each evaluation epoch.

Checkpoints hold only trainable weights (adapters, DVE, heads; everything for a full fine-tune) plus the
backbone's identity, so a 7B checkpoint stays small; ``init_from`` loads such a checkpoint's weights into a
fresh stage and refuses one made on a different backbone, naming both.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric, Metric
from transformers.modeling_outputs import BaseModelOutputWithPooling

from skinflow.data.formats import CAPTION_FIELDS, ParsedAnswer, Target, join_parsed, parse_answer, parse_caption
from skinflow.data.names import file_stem
from skinflow.data.ontology import ONTOLOGY
from skinflow.errors import UserError, require
from skinflow.metrics.clinical import BySkinType, ParseFailureRate, clinical_metrics
from skinflow.metrics.grading import GradingSpec, credit_matrix, graded_score, ranked_indices
from skinflow.models.backbone import BackboneSpec, LoRASpec, TinySize, backbone_identity, build_backbone, count_parameters
from skinflow.models.dve import DVESpec
from skinflow.models.generation import as_id_list
from skinflow.models.sharding import is_sharded, root_forward, shard_backbone
from skinflow.models.unwrap import bare_model
from skinflow.rl.engines import Sampling
from skinflow.rl.logprobs import chunked_token_logprobs, rows_per_chunk
from skinflow.rl.rewards import REWARDS, RewardSpec

SAMPLE_TABLE_ROWS = 16
LOGPROB_CHUNK_MIB = 64  # fp32 logits per LM-head chunk in the teacher-forced loss (``skinflow.rl.logprobs``)
# the dataclasses a stage's hyperparameters hold: a checkpoint being resumed (``--ckpt_path``) then loads with
# torch's safe ``weights_only`` unpickler instead of failing on them
torch.serialization.add_safe_globals([BackboneSpec, LoRASpec, DVESpec, TinySize, RewardSpec, GradingSpec])


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps``.

    The warmup stage's schedule. transformers' ``get_cosine_with_min_lr_schedule_with_warmup_lr_rate`` has the same
    warmup but counts the decay one step further on (``step - warmup + 1``); moving to it would shift every measured
    warmup trajectory in ``docs/results.md``, so the hand-written one stays until those are re-measured. The RL
    stages (constant after warmup, where the two agree) use transformers'.

    >>> [round(warmup_cosine(s, 2, 10, 0.1), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.55, 0.1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, content: torch.Tensor, content_weight: float) -> torch.Tensor:
    """Next-token cross-entropy over positions with a label; weights 1 (format) or ``content_weight`` (content).

    logits (B, L, V), labels (B, L) with -100 = ignore, content (B, L) bool. Token t is predicted at t-1.
    """
    logits, labels, content = logits[:, :-1].float(), labels[:, 1:], content[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (B, L-1)
    return weighted_nll(-ce, labels != -100, content, content_weight)


def weighted_nll(logp: torch.Tensor, valid: torch.Tensor, content: torch.Tensor, content_weight: float) -> torch.Tensor:
    """The weighted mean of -log p over valid positions, weights 1 (format) or ``content_weight`` (content); all
    (B, L). ``weighted_token_loss`` on logits, from log-probabilities already taken.

    >>> weighted_nll(torch.tensor([[-1.0, -2.0, -9.0]]), torch.tensor([[True, True, False]]),
    ...              torch.tensor([[False, True, True]]), 3.0).item()
    1.75
    """
    weights = valid.float() * torch.where(content, content_weight, 1.0)
    return -(logp * weights).sum() / weights.sum().clamp(min=1)


def target_window(labels: torch.Tensor) -> int:
    """How many trailing positions hold every target token and the position predicting the first one: (B, L) -> k.

    Batches are left-padded, so targets end every row; the LM head then runs on k positions instead of L (at
    Qwen2.5-VL's 151,936-token vocabulary the full (B, L, V) logits of a 600-token prompt dominate memory).

    >>> target_window(torch.tensor([[-100, -100, 5, 6], [-100, -100, -100, 7]]))
    3
    """
    has_label = (labels != -100).any(dim=0)  # (L,)
    if not has_label.any():
        return 1
    return labels.shape[1] - int(has_label.nonzero()[0]) + 1


def adamw_with_schedule(params, lr: float, weight_decay: float, betas: tuple[float, float], schedule) -> dict:
    """AdamW over ``params`` and ``schedule(optimizer)``'s learning-rate scheduler, stepped per optimizer step
    (Lightning's dict)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule(optimizer), "interval": "step"}}


def rng_states() -> dict:
    """The torch, CUDA, numpy and python generator states, in types torch's ``weights_only`` loader accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])


class CheckpointMismatch(UserError, RuntimeError):
    pass


def prediction_rows(completions: list[str], answers: list[ParsedAnswer], targets: list[Target],
                    credit: torch.Tensor) -> list[dict]:
    """One row per image: md5hash, label, skin type, the completion as generated, the parsed ranked labels, the
    parse status, graded credit at 1 and at 6 (``credit``: the stage's grading matrix) and every caption field
    (``caption/<field>``, empty where the completion has none). ``predict`` writes these rows as a CSV; ``test``
    logs them as ``predictions/test.json``; the judge reads them."""
    preds = ranked_indices(answers)
    target = torch.tensor([ONTOLOGY.index(t.label) for t in targets])
    at1, at6 = (graded_score(preds, target, credit, k).tolist() for k in (1, 6))
    rows = []
    for i, (text, answer, t) in enumerate(zip(completions, answers, targets)):
        fields, _ = parse_caption(text)
        rows.append({"md5hash": t.md5hash, "label": t.label, "fitzpatrick": t.fitzpatrick, "completion": text,
                     "parsed": join_parsed(answer.labels), "status": answer.status, "graded_at_1": float(at1[i]),
                     "graded_at_6": float(at6[i]), **{f"caption/{f}": fields.get(f, "") for f in CAPTION_FIELDS}})
    return rows


# weights a stage trains beside the backbone for its own loss only (the warmup's auxiliary label head): checkpointed
# for resume, left behind when a later stage, export or an analysis loads the checkpoint
TRAINING_ONLY = ("label_head.",)


def is_padding(batch: dict) -> bool:
    """A batch that only keeps this process in step with the others (``skinflow.data.order.EvenEvalShards``)."""
    padding = batch.get("padding")
    return padding is not None and bool(padding.all())


def trainable_state_keys(module: nn.Module) -> set[str]:
    """What a checkpoint keeps of ``module``: its trainable parameters, and the persistent buffers of every layer
    that has one (a BatchNorm's running statistics train with its weights: ``skinflow.models.stem``)."""
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    owners = {name.rpartition(".")[0] for name in trainable}
    persistent = set(module.state_dict(keep_vars=True))
    return trainable | {name for name, _ in module.named_buffers()
                        if name in persistent and name.rpartition(".")[0] in owners}


def read_stage_checkpoint(path: str | Path) -> dict:
    """A stage checkpoint's dict; one clear error naming the file when it is missing, damaged or not a stage's."""
    from skinflow.stages.fsdp import checkpoint_exists, is_sharded_checkpoint, read_sharded_checkpoint

    path = Path(path)
    if not checkpoint_exists(path):
        raise CheckpointMismatch(f"checkpoint {path} not found")
    try:
        if is_sharded_checkpoint(path):  # a distributed (FSDP2) checkpoint folder: gathered here, on one process
            checkpoint = read_sharded_checkpoint(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001  torch raises many kinds for a damaged file
        raise CheckpointMismatch(f"checkpoint {path} could not be read ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "backbone_identity" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointMismatch(f"checkpoint {path} is not a skinflow stage checkpoint (no backbone_identity/state_dict)")
    return checkpoint


def _describe(identity: dict | None) -> str:
    if identity is None:
        return "unknown"
    return f"preset={identity['preset']!r} path={identity['pretrained_path']!r} config={identity['config_sha256'][:12]}"


class SkinflowStage(LightningModule):
    """Base class: builds the backbone, evaluates by generation, trims checkpoints. Subclasses train."""

    stage_name = "base"

    def __init__(self, backbone: BackboneSpec | None = None, max_new_tokens: int = 96, init_from: str | None = None,
                 grading: GradingSpec | None = None):
        super().__init__()
        require(max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "must be at least 1")  # before the backbone
        self.backbone_spec = backbone or BackboneSpec()
        self.model, self.processor = build_backbone(self.backbone_spec)
        self.max_new_tokens = max_new_tokens
        grading = grading or GradingSpec()
        self.credit = credit_matrix(grading)  # the prediction table's graded_at_1 / graded_at_6
        self.metrics = nn.ModuleDict({split: clinical_metrics(grading) for split in ("val", "test")})
        self.parse_failure = nn.ModuleDict({split: ParseFailureRate() for split in ("val", "test")})
        # every registered reward, scored on the greedy completions: comparable across stages and prompts
        self.reward_means = nn.ModuleDict({
            split: nn.ModuleDict({name: MeanMetric() for name in REWARDS}) for split in ("val", "test")
        })
        self.metric_prefix = ""  # "start/" while the pipeline evaluates a stage's starting checkpoint
        self._samples: list[dict] = []
        self._predictions: list[dict] = []  # every test image's answer (``predictions/test.json``; the LLM judge reads it)
        self.strict_loading = False  # checkpoints carry trainable weights only
        if init_from:
            self.load_trainable(init_from)

    # -- generation and evaluation ---------------------------------------------------------------------------
    def model_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                     image_grid_thw: torch.Tensor, image_features: tuple[torch.Tensor, ...] | None = None) -> dict:
        """Keyword arguments of the backbone's forward / generate. ``mm_token_type_ids`` marks image tokens, so
        the model builds Qwen2.5-VL's 3-D (t, h, w) rotary positions from the grid, the same in training and
        generation; without it the forward falls back to 1-D positions that ignore left padding.

        ``image_features`` (one tensor per sequence, e.g. from ``shared_image_features``) replaces
        ``pixel_values``: the vision encoder then does not run inside the forward."""
        inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask, "image_grid_thw": image_grid_thw,
            "mm_token_type_ids": (input_ids == self.processor.image_token_id).int(),
        }
        if image_features is not None:
            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=image_features)}
        else:
            inputs["pixel_values"] = pixel_values
        return inputs

    @staticmethod
    def encode_images(model: torch.nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The vision encoder's output (merged patch embeddings), one tensor per image, of ``model`` (a PEFT
        wrapper or the bare Qwen2.5-VL model; adapters and DVE state as they are)."""
        core = bare_model(model)
        return core.model.get_image_features(pixel_values, image_grid_thw, return_dict=True).pooler_output

    @property
    def stop_token_ids(self) -> list[int]:
        """Generation stops on these: the tokenizer's EOS and the checkpoint's (``skinflow.models.generation``)."""
        return as_id_list(self.model.generation_config.eos_token_id)

    def greedy_sampling(self) -> Sampling:
        """Greedy decoding of one answer per prompt with the checkout's stop and pad ids, the placeholders
        suppressed, ``max_new_tokens`` long; the RL stages' rollout distribution is this with sampling switched on."""
        return Sampling(1, self.max_new_tokens, do_sample=False, eos_ids=tuple(self.stop_token_ids),
                        pad_id=self.processor.tokenizer.pad_token_id, suppressed=tuple(self.processor.placeholder_token_ids))

    def generation_kwargs(self) -> dict:
        """What every ``generate`` call passes. The model's generation config holds only token ids (the checkpoint's
        sampling settings and repetition penalty are neutralised), so nothing else shapes the distribution."""
        return self.greedy_sampling().token_kwargs()

    @torch.no_grad()
    def generate_text(self, batch: dict) -> list[str]:
        """Greedy completions for the batch's prompts."""
        inputs = self.model_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"], batch["image_grid_thw"])
        out = self.model.generate(**inputs, do_sample=False, **self.generation_kwargs())
        return self.processor.decode(out[:, batch["prompt_ids"].shape[1]:])

    def evaluate_batch(self, batch: dict, split: str) -> None:
        completions = self.generate_text(batch)  # a padding batch too: under FSDP2 every rank takes part
        if is_padding(batch):
            return
        answers = [parse_answer(text) for text in completions]
        self.update_metrics(split, answers, batch["targets"])
        for name, metric in self.reward_means[split].items():
            metric.update(REWARDS[name](completions, batch["targets"]).to(self.device))
        rows = prediction_rows(completions, answers, batch["targets"], self.credit)
        self._samples.extend(rows[: max(SAMPLE_TABLE_ROWS - len(self._samples), 0)])
        if split == "test":
            self._predictions.extend(rows)

    def update_metrics(self, split: str, answers: list[ParsedAnswer], targets: list[Target]) -> None:
        preds = ranked_indices(answers).to(self.device)
        target = torch.tensor([ONTOLOGY.index(t.label) for t in targets], device=self.device)
        fitzpatrick = torch.tensor([t.fitzpatrick for t in targets], device=self.device)
        self.parse_failure[split].update(torch.tensor([a.status != "ok" or not a.labels for a in answers], device=self.device))
        for metric in self.metrics[split].values():
            metric.update(preds, target, fitzpatrick) if isinstance(metric, BySkinType) else metric.update(preds, target)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.teacher_forced_loss(batch)
        if not is_padding(batch):
            self.log(f"{self.metric_prefix}val/loss", loss, batch_size=len(batch["targets"]), sync_dist=True)
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluate_batch(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        completions = self.generate_text(batch)
        if is_padding(batch):
            return []
        rows = prediction_rows(completions, [parse_answer(t) for t in completions], batch["targets"], self.credit)
        self._predictions.extend(rows)
        return rows

    def on_predict_epoch_end(self) -> None:
        """``predict``: the rows of every image as ``<default_root_dir>/predictions/<run id>/predict.csv`` and as
        the MLflow artifact ``predictions/predict.csv`` of the run."""
        import pandas as pd

        rows = self._gather_predictions()
        if not self.trainer.is_global_zero or not rows:
            return
        logger = self.logger if self.logger is not None and hasattr(self.logger, "run_id") else None
        name = file_stem(logger.run_id, "predict") if logger is not None else "predict"  # a run id stays one folder name
        path = Path(self.trainer.default_root_dir or ".") / "predictions" / name / "predict.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(path, index=False)
        if logger is not None:
            logger.experiment.log_artifact(logger.run_id, str(path), "predictions")
        print(f"predict: {len(rows)} rows -> {path}")

    def _gather_predictions(self) -> list[dict]:
        rows, self._predictions = self._predictions, []
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        return rows

    def _log_split(self, split: str) -> None:
        key = f"{self.metric_prefix}{split}"
        for name, metric in self.metrics[split].items():
            value = metric.compute()
            if isinstance(value, dict):  # stratified: {split}/{name}/fst_1 ... /worst, /gap
                for part, v in value.items():
                    if not torch.isnan(v):
                        self.log(f"{key}/{name}/{part}", v)
            elif not torch.isnan(value):
                self.log(f"{key}/{name}", value)
            metric.reset()
        self.log(f"{key}/parse_failure", self.parse_failure[split].compute())
        self.parse_failure[split].reset()
        for name, metric in self.reward_means[split].items():
            self.log(f"{key}/reward/{name}", metric.compute())
            metric.reset()
        self.log_samples(split)
        if split == "test":
            self.log_predictions()

    def log_predictions(self) -> None:
        """Every test image's completion and parsed ranked answer, from all processes, as the MLflow table
        ``predictions/test.json`` (``predictions/start/test.json`` for a pipeline stage's starting point)."""
        rows = self._gather_predictions()
        logger = self.logger
        if not rows or logger is None or not hasattr(logger, "run_id") or not self.trainer.is_global_zero:
            return
        table = {key: [row[key] for row in rows] for key in rows[0]}
        logger.experiment.log_table(logger.run_id, data=table, artifact_file=f"predictions/{self.metric_prefix}test.json")

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    def log_samples(self, split: str) -> None:
        """Completions of the first evaluation batches as an MLflow table artifact."""
        samples, self._samples = self._samples, []
        logger = self.logger
        if not samples or logger is None or not hasattr(logger, "run_id") or self.trainer.sanity_checking:
            return
        table = {key: [row[key] for row in samples] for key in samples[0]}
        logger.experiment.log_table(logger.run_id, data=table, artifact_file=f"samples/{self.metric_prefix}{split}_epoch{self.current_epoch:03d}.json")

    def teacher_forced_loss(self, batch: dict, content_weight: float = 1.0,
                            image_features: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Cross-entropy of the target tokens, content tokens weighted by ``content_weight`` (1: plain mean).

        The LM head runs only on the target positions, ``LOGPROB_CHUNK_MIB`` of logits at a time
        (``skinflow.rl.logprobs``): equal to ``weighted_token_loss`` on full logits, without (B, L, V) tensors.
        ``image_features`` (``encode_images``' output, gradients kept) replaces running the vision tower again."""
        inputs = self.model_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"],
                                   image_features)
        L, keep = batch["labels"].shape[1], target_window(batch["labels"])
        labels, content = batch["labels"][:, L - keep + 1:], batch["content_mask"][:, L - keep + 1:]  # token t+1 at t
        valid = labels != -100

        def loss() -> torch.Tensor:  # one forward of the (possibly sharded) root: hidden states, then the LM head
            hidden = bare_model(self.model).model(**inputs, use_cache=False).last_hidden_state  # no KV cache
            logp, _ = self.head_logprobs(self.model, hidden[:, L - keep:L - 1], labels.clamp(min=0), valid, LOGPROB_CHUNK_MIB)
            return weighted_nll(logp, valid, content, content_weight)

        return root_forward(self.model, loss)

    @staticmethod
    def head_logprobs(model: torch.nn.Module, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                      chunk_mib: float, temperature: float = 1.0, suppressed: torch.Tensor | None = None,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``model``'s LM head applied to ``hidden`` (n, T, H), ``chunk_mib`` MiB of logits at a time: the
        log-probabilities of ``tokens`` and the entropies at the ``mask`` positions (``chunked_token_logprobs``)."""
        head = bare_model(model).lm_head
        return chunked_token_logprobs(hidden, head.weight, tokens, mask, temperature, suppressed,
                                      rows_per_chunk(head.out_features, chunk_mib), with_entropy, head.bias)

    # -- sharding --------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Under ``ShardedDataParallel`` (``skinflow.stages.fsdp``): shard the backbone with FSDP2 over the
        data-parallel mesh (``skinflow.models.sharding``), then ``after_sharding``. Other strategies: nothing."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        from skinflow.stages.fsdp import ShardedDataParallel

        strategy = self._trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, ModelParallelStrategy) or is_sharded(self.model):
            return
        if not isinstance(strategy, ShardedDataParallel):
            raise UserError(f"trainer.strategy {type(strategy).__name__} is not supported: use "
                            "skinflow.stages.fsdp.ShardedDataParallel (configs/trainer/cpu_fsdp.yaml, gpu_bf16_fsdp.yaml)")
        shard_backbone(self.model, strategy.device_mesh["data_parallel"], strategy.sharding)
        self.after_sharding()

    def after_sharding(self) -> None:
        """Called once the backbone is sharded, before a checkpoint being resumed is restored."""

    # -- checkpoints -----------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        keys = trainable_state_keys(self)
        return {k: v for k, v in self.state_dict().items() if k in keys}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()
        checkpoint["backbone_identity"] = backbone_identity(self.backbone_spec, self.model)
        checkpoint["skinflow_stage"] = self.stage_name
        # torch / numpy / python (and CUDA) generator states: dropout and GRPO's sampling continue as they would
        # have (the data order does not need them: ``skinflow.data.order``)
        checkpoint["rng_states"] = rng_states()
        logger = self.logger if self._trainer is not None else None
        if logger is not None and hasattr(logger, "run_id"):  # the MLflow run a resume continues
            checkpoint["skinflow_run"] = {"run_id": logger.run_id, "experiment_id": getattr(logger, "experiment_id", None)}

    def check_identity(self, checkpoint: dict, source: str) -> None:
        theirs = checkpoint.get("backbone_identity")
        ours = backbone_identity(self.backbone_spec, self.model)
        if theirs is None or theirs["config_sha256"] != ours["config_sha256"]:
            raise CheckpointMismatch(
                f"checkpoint {source} was made on backbone {_describe(theirs)}, but this stage's backbone is {_describe(ours)}"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.check_identity(checkpoint, "being resumed")
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # restored here, after the data loaders and their first prefetch, right before the first resumed step
        states, self._rng_to_restore = getattr(self, "_rng_to_restore", None), None
        if states is not None:
            set_rng_states(states)

    def load_trainable(self, path: str | Path) -> None:
        """Load a previous stage's trainable weights (``init_from``); the backbones must match."""
        self.load_checkpoint_weights(read_stage_checkpoint(path), str(path))

    def load_checkpoint_weights(self, checkpoint: dict, source: str) -> None:
        """Load the trainable weights of a stage checkpoint already read (``read_stage_checkpoint``); refuses one
        made on another backbone, or holding weights this stage lacks, naming ``source``."""
        self.check_identity(checkpoint, source)
        weights = {k: v for k, v in checkpoint["state_dict"].items()
                   if not (k.startswith(TRAINING_ONLY) and k not in self.state_dict())}  # a warmup's label head
        missing = set(weights) - set(self.state_dict())
        if missing:
            raise CheckpointMismatch(f"checkpoint {source} holds weights this stage lacks, e.g. {sorted(missing)[:3]}")
        self.load_state_dict(weights, strict=False)

    def on_fit_start(self) -> None:
        # metric states reset during an earlier validate/test live as inference tensors; renew them
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()
        if self.logger is not None:
            self.logger.log_hyperparams({
                "params/total": count_parameters(self.model), "params/trainable": count_parameters(self.model, True),
            })
