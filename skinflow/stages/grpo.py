"""GRPO: Stage I (structured caption) and Stage II (ranked differential) differ only by config.

One ``training_step`` per batch of B images (manual optimisation):

1. sample G completions per image through the stage's rollout engine (``skinflow.rl.engines``: HF ``generate``,
   or a static cache with a compiled decode step; temperature, top-p, ``max_new_tokens``), each image encoded once
   for its G completions (here and in every log-probability pass);
2. score them with the configured rewards (``skinflow.rl.rewards``) -> (B, G);
3. group advantages (std-normalised or mean-only), one per completion or, with ``credit: field``, one per token
   (each caption line gets its own field's term, ``skinflow.rl.credit``), and the groups with no signal;
4. log-probabilities of the reference (beta > 0: the stage's starting policy, a frozen snapshot of the trainable
   weights taken when the stage is built, ``skinflow.models.reference``) and, for mu > 1, of the sampling policy;
5. mu optimisation passes over the same rollout, each one optimizer step, the rollout split into micro-batches
   of ``micro_batch_size`` sequences whose gradients accumulate (the loss weights are normalised over the whole
   rollout, so any split gives the same gradient);
6. log rewards, KL, clipping, entropy, lengths; every ``table_every`` steps a rollout table to MLflow.

Sampler and scorer use one distribution: the engine applies only temperature, top-p, top-k 0 and the suppressed
placeholders (the checkpoint's generation config is neutralised, ``skinflow.models.generation``), and the scorer
applies the same temperature and suppression. RL stages run without dropout (``disable_dropout``) and with frozen
batch statistics (``freeze_batch_statistics``), since the sampler runs in eval mode and the scorer in train mode.
``top_p < 1`` samples from a truncated distribution the scorer does not truncate (as in TRL); the shipped configs
use 1.0.

The maths lives in ``skinflow.rl.grpo`` (shape legend in ``skinflow.rl``). Validation and test generate greedily
and use the clinical metric collection of ``SkinflowStage``.
"""

from __future__ import annotations

import time
from typing import Literal, get_args
import warnings
from contextlib import contextmanager
from dataclasses import replace
from functools import partial

import torch

from skinflow.metrics.grading import GradingSpec
from skinflow.models.backbone import BackboneSpec
from skinflow.models.sharding import root_forward
from skinflow.models.unwrap import bare_model
from skinflow.models.reference import disable_dropout, snapshot_trainable, swapped_parameters
from skinflow.models.stem import freeze_batch_statistics
from skinflow.errors import ConfigError, require
from skinflow.rl.grpo import LOSS_WEIGHTS, AdvantageScale, LossName, group_advantages, policy_loss, tied_groups, token_entropy, token_logprobs
from skinflow.rl.engines import EngineOutput, Prompts, Sampling, build_engine
from skinflow.rl.credit import completion_token_fields, field_token_advantages, tied_field_groups
from skinflow.rl.rewards import FIELD_TERMS, RewardSpec, combined_reward
from skinflow.rl.rollout import Rollout, completion_mask, shared_image_features
from skinflow.stages.base import SkinflowStage, adamw_with_schedule

Credit = Literal["sequence", "field"]  # one advantage per completion, or one per caption field

# Lightning warns that a step-interval checkpoint under manual optimisation holds the weights after the step; for
# resuming that is what is wanted (the next step starts from them), so the warning, repeated per save, is noise
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")

TABLE_ROWS = 32


class GRPOStage(SkinflowStage):
    """Group Relative Policy Optimisation over the shared backbone.

    Args:
        backbone: which backbone to build and what trains (LoRA, DVE, ...); must match ``init_from``'s.
        rewards: the rewards and their weights, e.g. ``[{name: caption_fields, weight: 1.0}]``.
        stage: name of the stage in logs and checkpoints (``stage1``, ``stage2``).
        group_size: G, completions sampled per image.
        temperature: sampling temperature (log-probabilities use the same temperature).
        top_p: nucleus sampling threshold.
        max_new_tokens: completion length limit for sampling and evaluation.
        loss: ``grpo`` | ``dr_grpo`` | ``dapo`` (token averaging, see ``skinflow.rl.grpo``).
        advantage_scale: ``std`` (divide by the group's std) or ``none`` (mean-only, Dr. GRPO).
        eps_low: lower clipping range of the ratio (1 - eps_low).
        eps_high: upper clipping range of the ratio (1 + eps_high; DAPO's clip-higher uses 0.28).
        beta: weight of the k3 KL to the reference; 0 skips the reference pass.
        num_iterations: mu, optimisation passes (optimizer steps) over each rollout.
        micro_batch_size: sequences per forward/backward (gradient accumulation); ``None``: the whole rollout.
        rollout_engine: how rollouts are sampled (``skinflow.rl.engines``): ``hf`` (transformers ``generate``),
            ``compiled`` (static KV cache and a compiled decode step), a name given to ``register_engine``, or a
            ``module:Class`` path.
        rollout_options: keyword arguments of the engine, e.g. ``{bucket: 64}`` for ``compiled`` (prompts padded
            to a multiple of 64 tokens, one compiled shape per bucket).
        logprob_chunk_mib: the LM head runs on as many completion positions at a time as fit this many MiB of fp32
            logits (``skinflow.rl.logprobs``), so no (micro-batch, T, V) logits exist in any scoring pass; 0: the
            full-logits computation (for comparison; about five vocabulary-sized copies per micro-batch).
        drop_tied_groups: leave out of the loss the groups whose rewards all tie (they have zero advantage but
            still carry KL and length in the average); they are counted in ``rl/frac_zero_std_groups`` either way.
            When every group of a batch ties there is no policy signal: with beta > 0 the step runs on the KL
            term alone over all groups (so every batch is an optimizer step and ``max_steps`` counts batches);
            with beta = 0 it is skipped (``rl/skipped_step``) and does not count toward ``max_steps``.
        credit: ``sequence`` (GRPO: every token of a completion gets its advantage) or ``field`` (the tokens of
            each caption line get the advantage of that field's term of ``caption_fields``; mean-only advantages;
            see ``skinflow.rl.credit``). With ``field`` a group is tied only when its total and every field tie.
        lr: AdamW learning rate (constant after ``warmup_steps``).
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warmup in optimizer steps.
        max_grad_norm: gradient clipping by global norm (0: off).
        table_every: log a table of prompts, completions and rewards every this many training steps (0: never).
        init_from: checkpoint of the previous stage whose trainable weights to start from.
        grading: credit values of the clinical hierarchy used by the validation/test metrics.
    """

    def __init__(
        self,
        backbone: BackboneSpec | None = None,
        rewards: list[RewardSpec] | None = None,
        stage: str = "grpo",
        group_size: int = 4,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 96,
        loss: LossName = "grpo",
        advantage_scale: AdvantageScale = "std",
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        beta: float = 0.04,
        num_iterations: int = 1,
        micro_batch_size: int | None = None,
        rollout_engine: str = "hf",
        rollout_options: dict | None = None,
        logprob_chunk_mib: float = 64.0,
        drop_tied_groups: bool = True,
        credit: Credit = "sequence",
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        max_grad_norm: float = 1.0,
        table_every: int = 50,
        init_from: str | None = None,
        grading: GradingSpec | None = None,
    ):
        if loss not in LOSS_WEIGHTS:
            raise ConfigError(f"loss={loss!r} is not one of {sorted(LOSS_WEIGHTS)}")
        if advantage_scale not in get_args(AdvantageScale):
            raise ConfigError(f"advantage_scale={advantage_scale!r} is not 'std' or 'none'")
        if num_iterations < 1:
            raise ConfigError(f"num_iterations={num_iterations}: mu, the optimisation passes per rollout, must be at least 1")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size={micro_batch_size} must be at least 1 (or null: the whole rollout)")
        if logprob_chunk_mib < 0:
            raise ConfigError(f"logprob_chunk_mib={logprob_chunk_mib} must be >= 0 (0: full logits)")
        if group_size < 2:
            raise ConfigError(f"group_size={group_size}: GRPO needs at least 2 completions per image")
        require(temperature > 0, "temperature", temperature, "must be positive (sampling divides the logits by it)")
        require(0 < top_p <= 1, "top_p", top_p, "must be in (0, 1]")
        require(0 <= eps_low < 1, "eps_low", eps_low, "must be in [0, 1)")
        require(eps_high >= 0, "eps_high", eps_high, "must be >= 0")
        require(beta >= 0, "beta", beta, "must be >= 0 (0: no KL term)")
        require(lr > 0, "lr", lr, "must be positive")
        require(weight_decay >= 0, "weight_decay", weight_decay, "must be >= 0")
        require(warmup_steps >= 0, "warmup_steps", warmup_steps, "must be >= 0")
        require(max_grad_norm >= 0, "max_grad_norm", max_grad_norm, "must be >= 0 (0: no clipping)")
        require(table_every >= 0, "table_every", table_every, "must be >= 0 (0: never)")
        engine = build_engine(rollout_engine, rollout_options)  # a bad engine: one line before the backbone is built
        super().__init__(backbone, max_new_tokens, init_from, grading)
        self.engine = engine
        self.rewards = list(rewards or [RewardSpec("ranked_diagnosis")])
        if credit not in get_args(Credit):
            raise ConfigError(f"credit={credit!r} is not 'sequence' or 'field'")
        self.split_reward = None  # the reward whose field terms get field-level credit
        if credit == "field":
            splittable = [r for r in self.rewards if r.name in FIELD_TERMS]
            if len(splittable) != 1:
                raise ConfigError(f"credit='field' needs exactly one reward with field terms ({sorted(FIELD_TERMS)}); "
                                 f"rewards are {[r.name for r in self.rewards]}")
            if advantage_scale != "none":
                raise ConfigError("credit='field' needs advantage_scale='none': a group's total can tie while its "
                                 "fields differ, so there is no std to divide by")
            self.split_reward = splittable[0]
        self.stage_name = stage
        self.automatic_optimization = False
        disable_dropout(self.model)  # sampled in eval mode, scored in train mode: no dropout may tell them apart
        freeze_batch_statistics(self.model)  # nor batch statistics (the tiny preset's convolutional stem)
        # the starting policy (after ``init_from``, before any resume restores weights): the KL reference
        self._reference_weights = snapshot_trainable(self) if beta else {}
        self.timings: dict[str, float] = {}  # seconds per phase of the last training step (logged as time/<phase>)
        self.save_hyperparameters()

    def after_sharding(self) -> None:
        """The KL reference taken again from the sharded weights (each rank keeps its own shard of the starting
        policy, never the whole model); the compiled engine runs its own decode loop, which FSDP2 does not gather
        for, so sharded stages sample with ``hf``."""
        from skinflow.rl.engines import HFEngine

        if type(self.engine) is not HFEngine:
            raise ConfigError(f"rollout_engine={self.hparams.rollout_engine!r} does not run on a sharded (FSDP2) model; "
                              "use rollout_engine: hf")
        if self.hparams.beta:
            self._reference_weights = snapshot_trainable(self)

    def on_train_start(self) -> None:
        super().on_train_start()
        self.check_answer_room()

    def check_answer_room(self, sample: int = 16) -> int | None:
        """Warn when ``max_new_tokens`` cannot hold the answer format: completions are cut off and every reward
        is zero, which trains nothing. Measured on the reference texts of the first ``sample`` training records;
        returns their longest length in tokens (``None`` without a skinflow DataModule)."""
        from lightning.pytorch.utilities import rank_zero_warn

        from skinflow.data.formats import render_target

        datamodule = getattr(self.trainer, "datamodule", None)
        split = getattr(datamodule, "splits", {}).get("train")
        if split is None or not len(split):
            return None
        task = datamodule.hparams.prompt if datamodule.hparams.prompt in ("caption", "diagnosis", "warmup") else "warmup"
        tok = self.processor.tokenizer
        texts = [render_target(split.target(split.records[i]), datamodule.hparams.with_caption, task) + tok.eos_token
                 for i in range(min(sample, len(split)))]
        needed = max(len(tok(text, add_special_tokens=False)["input_ids"]) for text in texts)
        if needed > self.max_new_tokens:
            rank_zero_warn(f"max_new_tokens={self.max_new_tokens} is shorter than the {task!r} answers need (up to "
                           f"{needed} tokens for the first {len(texts)} training records): completions will be cut off "
                           "and earn no reward; raise model.init_args.max_new_tokens")
        return needed

    # -- the algorithm ---------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        hp = self.hparams
        B, G = len(batch["targets"]), hp.group_size
        self.timings = {}
        with self.phase("rollout"):
            rollout = self.rollout(batch)  # N = B*G sequences, image-major
        targets = [t for t in batch["targets"] for _ in range(G)]
        rewards = combined_reward(rollout.texts, targets, self.rewards)  # name -> (N,)
        total = rewards["total"].view(B, G).to(self.device)  # (B, G)
        if self.split_reward is None:
            advantages = group_advantages(total, hp.advantage_scale)  # (B, G)
            tied = tied_groups(total)  # (B,)
        else:
            advantages, tied = self.field_advantages(rollout, targets, total)  # (B, G, T), (B,)
        keep = ~tied if hp.drop_tied_groups and not tied.all() else torch.ones_like(tied)  # all tied: KL-only step
        rows = keep.repeat_interleave(G).nonzero().squeeze(1)  # kept sequences, indices into N
        skip = bool(tied.all()) and not hp.beta  # nothing to learn and no KL: no step
        stats = {} if skip else self.optimise(rollout.select(rows), advantages.flatten(0, 1)[rows])
        self.log_step(rewards, tied, rollout, stats)
        if hp.table_every and batch_idx % hp.table_every == 0:
            self.log_rollout_table(rollout, targets, rewards)

    def field_advantages(self, rollout: Rollout, targets: list, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Field-level credit (``skinflow.rl.credit``): per-token advantages (B, G, T) and the groups with no
        signal (B,)."""
        B, G = total.shape
        decode = lambda ids: self.processor.decode([ids])[0]  # noqa: E731  the decoder that made ``rollout.texts``
        token_field = completion_token_fields(decode, rollout.completion_ids.cpu(), rollout.completion_mask.cpu(),
                                              rollout.texts)  # (N, T)
        scores = FIELD_TERMS[self.split_reward.name](rollout.texts, targets).view(B, G, -1).to(total.device)
        advantages = field_token_advantages(total, scores, self.split_reward.weight,
                                            token_field.view(B, G, -1).to(total.device))
        return advantages, tied_field_groups(total, scores)

    @torch.no_grad()
    def rollout(self, batch: dict) -> Rollout:
        """G sampled completions per image from the stage's rollout engine, in eval mode (KV cache on even with
        gradient checkpointing), cut at the first stop id and padded after it."""
        G = self.hparams.group_size
        B = batch["prompt_ids"].shape[0]
        tokens = self.sample(batch).tokens  # (N, T) image-major
        prompt_ids = batch["prompt_ids"].repeat_interleave(G, dim=0)  # (N, Lp)
        mask, clipped = completion_mask(tokens, self.stop_token_ids)
        tokens = tokens.masked_fill(~mask, self.processor.tokenizer.pad_token_id)
        image_index = torch.arange(B, device=prompt_ids.device).repeat_interleave(G)  # (N,)
        return Rollout(prompt_ids, batch["prompt_mask"].repeat_interleave(G, dim=0), batch["pixel_values"],
                       batch["image_grid_thw"], image_index, tokens, mask, clipped, self.processor.decode(tokens))

    def sample(self, batch: dict, return_scores: bool = False) -> EngineOutput:
        """The engine's raw sample of the batch under the stage's ``sampling()``, the model in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.engine.sample(self.model, Prompts(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"],
                                                              batch["image_grid_thw"], self.processor.image_token_id),
                                          self.sampling(), return_scores)
        finally:
            self.model.train(was_training)

    def sampling(self) -> Sampling:
        """The rollout's distribution: G samples per prompt at the stage's temperature and top-p, no top-k, the
        placeholders suppressed, the checkout's stop ids; nothing from the checkpoint's generation config."""
        hp = self.hparams
        return replace(self.greedy_sampling(), group_size=hp.group_size, temperature=hp.temperature, top_p=hp.top_p,
                       do_sample=True)

    def sampler_and_scorer_logprobs(self, batch: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A fidelity check of one rollout: (sampler log-probs (N, T), scorer log-probs (N, T), completion mask).
        The sampler's come from the engine's processed scores under the rollout's own arguments (the distribution
        it drew from), the scorer's from the training forward (``completion_logprobs``) in the stage's current mode.
        They agree when nothing but temperature and the suppressed placeholders shapes sampling and no dropout
        is active; ``benchmarks/checkout_fidelity.py`` and the stand-in tests use it."""
        torch.manual_seed(seed)
        rollout = self.rollout(batch)
        torch.manual_seed(seed)
        out = self.sample(batch, return_scores=True)
        T, mask = rollout.completion_ids.shape[1], rollout.completion_mask
        if not torch.equal(out.tokens[:, :T][mask], rollout.completion_ids[mask]):
            raise RuntimeError("the check's sample drew other tokens than the rollout under the same seed")
        sampler = token_logprobs(out.scores[:, :T], rollout.completion_ids)
        with torch.no_grad():
            scorer = self.completion_logprobs(self.model, rollout)[0]
        return sampler, scorer, mask

    def completion_inputs(self, model: torch.nn.Module, part: Rollout) -> dict:
        """Forward arguments of prompt + completion for ``part``. Each distinct image goes through ``model``'s vision
        encoder once (``shared_image_features``), not once per completion."""
        ids = torch.cat([part.prompt_ids, part.completion_ids], dim=1)  # (n, Lp + T)
        mask = torch.cat([part.prompt_mask, part.completion_mask.long()], dim=1)
        features = shared_image_features(partial(self.encode_images, model), part.pixel_values, part.image_grid_thw,
                                         part.image_index)
        return self.model_inputs(ids, mask, None, part.sequence_grid_thw, features)

    def completion_logits(self, model: torch.nn.Module, part: Rollout) -> torch.Tensor:
        """Next-token logits at each completion position: (n, T, V), the full-logits path (``logprob_chunk_mib: 0``)
        and the reference the chunked one is tested against."""
        T = part.completion_ids.shape[1]
        logits = root_forward(model, lambda: model(**self.completion_inputs(model, part), logits_to_keep=T + 1,
                                                   use_cache=False).logits[:, :-1])  # position t predicts token t+1
        # the sampler never draws the image/video placeholders (``generation_kwargs``): score with the same support
        return logits.index_fill(-1, self.placeholder_ids(logits.device), float("-inf"))

    def completion_logprobs(self, model: torch.nn.Module, part: Rollout,
                            with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(completion token) at the stage's temperature, placeholders suppressed, and (``with_entropy``) the
        detached entropy of pi: (n, T) each. Chunked from the final hidden states (``skinflow.rl.logprobs``), or
        from full logits when ``logprob_chunk_mib`` is 0; both are 0 after each completion's end in the chunked
        path (those positions carry no loss weight either way)."""
        temperature, chunk_mib = self.hparams.temperature, self.hparams.logprob_chunk_mib
        if not chunk_mib:
            logits = self.completion_logits(model, part)  # (n, T, V)
            entropy = token_entropy(logits.detach(), temperature) if with_entropy else torch.zeros_like(logits[..., 0])
            return token_logprobs(logits, part.completion_ids, temperature), entropy
        T = part.completion_ids.shape[1]

        def scored() -> tuple[torch.Tensor, torch.Tensor]:  # one forward of the (possibly sharded) root
            hidden = bare_model(model).model(**self.completion_inputs(model, part), use_cache=False).last_hidden_state
            return self.head_logprobs(model, hidden[:, -T - 1:-1], part.completion_ids, part.completion_mask, chunk_mib,
                                      temperature, self.placeholder_ids(hidden.device), with_entropy)  # (n, T) each

        return root_forward(model, scored)

    def placeholder_ids(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.processor.placeholder_token_ids, device=device, dtype=torch.long)

    @torch.no_grad()
    def reference_logprobs(self, part: Rollout) -> torch.Tensor:
        """Log-probabilities under the stage's starting policy: the snapshot lent to the live model."""
        with swapped_parameters(self, self._reference_weights):
            return self.completion_logprobs(self.model, part)[0]

    def optimise(self, rollout: Rollout, advantages: torch.Tensor) -> dict[str, float]:
        """mu optimizer steps over the kept sequences; advantages (n,) or per token (n, T). Returns token-mean statistics."""
        hp = self.hparams
        n = rollout.completion_ids.shape[0]
        chunks = torch.arange(n).split(hp.micro_batch_size or n)
        parts = [rollout.select(c) for c in chunks]
        weights = LOSS_WEIGHTS[hp.loss](rollout.completion_mask, self.max_new_tokens)  # (n, T)
        with self.phase("reference"):
            ref = [self.reference_logprobs(p) for p in parts] if hp.beta else [None] * len(parts)
        old = [None] * len(parts)
        if hp.num_iterations > 1:
            with torch.no_grad(), self.phase("old_logprobs"):
                old = [self.completion_logprobs(self.model, p)[0] for p in parts]
        optimizer, schedule = self.optimizers(), self.lr_schedulers()
        sums: dict[str, float] = {}
        clipped = counted = 0.0  # over every pass: pass 1 clips nothing (ratio 1), later passes do
        for iteration in range(hp.num_iterations):
            for c, part, ref_lp, old_lp in zip(chunks, parts, ref, old):
                with self.phase("policy_forward"):
                    logp, entropy = self.completion_logprobs(self.model, part, with_entropy=iteration == 0)  # (m, T) each
                    loss, s = policy_loss(logp, logp.detach() if old_lp is None else old_lp, ref_lp, advantages[c],
                                          weights[c], hp.eps_low, hp.eps_high, hp.beta)
                with self.phase("backward"):
                    self.manual_backward(loss)
                clipped, counted = clipped + float(s["clipped"]), counted + float(s["tokens"])
                if iteration == 0:
                    s["entropy"] = (entropy * part.completion_mask).sum()
                    s["loss"] = loss.detach()
                    for key, value in s.items():
                        sums[key] = sums.get(key, 0.0) + float(value)
            with self.phase("optimizer"):
                if hp.max_grad_norm:
                    self.clip_gradients(optimizer, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
        tokens = max(sums.pop("tokens"), 1.0)
        return {"loss": sums["loss"], "clip_frac": clipped / max(counted, 1.0), "entropy": sums["entropy"] / tokens,
                **({"kl": sums["kl"] / tokens} if "kl" in sums else {})}

    @contextmanager
    def phase(self, name: str):
        """Add the wall time of the block to ``self.timings[name]`` (synchronising CUDA around it)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # -- logging ---------------------------------------------------------------------------------------------
    def log_step(self, rewards: dict[str, torch.Tensor], tied: torch.Tensor, rollout: Rollout, stats: dict) -> None:
        B = len(tied)
        values = {}
        for name, r in rewards.items():
            values[f"reward/{name}"] = r.mean()
            values[f"reward/{name}_std"] = r.std(unbiased=False)
        values["rl/frac_zero_std_groups"] = tied.float().mean()
        values["rl/skipped_step"] = float(not stats)
        values["completions/mean_length"] = rollout.completion_mask.sum(1).float().mean()
        values["completions/clipped_frac"] = rollout.clipped.float().mean()
        values.update({f"rl/{k}" if k != "loss" else "train/loss": v for k, v in stats.items()})
        values["train/lr"] = self.optimizers().param_groups[0]["lr"]
        values.update({f"time/{k}": v for k, v in self.timings.items()})
        self.log_dict({k: float(v) for k, v in values.items()}, batch_size=B, prog_bar=False)
        self.log("reward", float(rewards["total"].mean()), prog_bar=True, logger=False, batch_size=B)

    def log_rollout_table(self, rollout: Rollout, targets: list, rewards: dict[str, torch.Tensor]) -> None:
        logger = self.logger
        if logger is None or not hasattr(logger, "run_id"):
            return
        rows = min(TABLE_ROWS, len(targets))
        table = {
            "step": [self.global_step] * rows,
            "md5hash": [t.md5hash for t in targets[:rows]], "label": [t.label for t in targets[:rows]],
            "completion": rollout.texts[:rows],
            **{f"reward/{k}": [round(float(v), 4) for v in r[:rows]] for k, r in rewards.items()},
        }
        logger.experiment.log_table(logger.run_id, data=table, artifact_file=f"rollouts/step{self.global_step:06d}.json")

    # -- setup -----------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        # linear warmup from lr / warmup_steps at the first step, then constant (a cosine to min_lr_rate 1); AdamW's
        # default betas
        from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup_lr_rate as warmup_then_constant

        hp = self.hparams
        return adamw_with_schedule(self.trainable_parameters(), hp.lr, hp.weight_decay, (0.9, 0.999),
                                   lambda opt: warmup_then_constant(opt, hp.warmup_steps, 1, min_lr_rate=1.0))
