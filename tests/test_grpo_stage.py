"""GRPOStage end to end on a few synthetic images: reference pass, what trains, what is logged, tied groups."""

import lightning as L
import pytest
import torch

from skinflow.data.datamodule import Fitzpatrick17kDataModule
from skinflow.models.backbone import BackboneSpec, LoRASpec
from skinflow.models.dve import DVESpec
from skinflow.rl.rewards import RewardSpec
from skinflow.stages.grpo import GRPOStage


def datamodule(synth_dir, cache, prompt="diagnosis", **kwargs):
    return Fitzpatrick17kDataModule(csv_path=str(synth_dir / "labels.csv"), cache_dir=str(cache), progress=False,
                                    batch_size=2, eval_batch_size=8, augment=False, prompt=prompt, **kwargs)


def fit(stage, dm, steps=2, logger=False, val_every=None, **options):
    trainer = L.Trainer(max_steps=steps, logger=logger, **options, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=1, val_check_interval=val_every or steps, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, log_every_n_steps=1, enable_model_summary=False)
    trainer.fit(stage, dm)
    return trainer


def trainable(stage):
    return {n: p.detach().clone() for n, p in stage.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def rollout_batch(synth_dir, tmp_path_factory):
    stage = GRPOStage(max_new_tokens=6)
    dm = datamodule(synth_dir, tmp_path_factory.mktemp("c"))
    dm.processor = stage.processor
    dm.setup()
    return next(iter(dm.train_dataloader()))


def policy_logprobs(stage, rollout):
    from skinflow.rl.grpo import token_logprobs

    with torch.no_grad():
        return token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids)


def lora_checkpoint(path, spec, scale=0.2):
    """A previous stage's checkpoint: LoRA adapters and DVE heads moved away from their zero start."""
    torch.manual_seed(1)
    previous = GRPOStage(spec, max_new_tokens=6, group_size=2, beta=0)
    with torch.no_grad():
        for p in previous.trainable_parameters():
            p.add_(scale * torch.randn_like(p))
    checkpoint = {}
    previous.on_save_checkpoint(checkpoint)  # what a stage's checkpoint holds: trainable weights + identity
    torch.save(checkpoint, path)
    return path


def test_reference_is_the_starting_policy_not_the_bare_base(rollout_batch, tmp_path):
    """From a LoRA + DVE checkpoint the reference is the policy the stage starts from (KL 0 at its first step),
    not the base model with adapters off and DVE gains at 1; the policy moves, the reference does not."""
    spec = BackboneSpec(lora=LoRASpec(r=2), dve=DVESpec(enabled=True, num_groups=4))
    stage = GRPOStage(spec, max_new_tokens=6, group_size=2, init_from=str(lora_checkpoint(tmp_path / "prev.ckpt", spec)))
    torch.manual_seed(0)
    rollout = stage.rollout(rollout_batch)
    start = policy_logprobs(stage, rollout)
    with torch.no_grad():
        reference = stage.reference_logprobs(rollout)
        assert torch.allclose(reference, start, atol=1e-6)
        with stage.model.disable_adapter():  # the bare base the old reference was
            bare = policy_logprobs(stage, rollout)
        assert (bare - start).abs().max() > 1e-2
        for p in stage.trainable_parameters():
            p.add_(0.2 * torch.randn_like(p))
    moved = policy_logprobs(stage, rollout)
    assert (moved - start).abs().max() > 1e-2  # adapters and DVE heads matter
    assert torch.allclose(stage.reference_logprobs(rollout), reference, atol=1e-6)  # but not to the reference
    assert torch.allclose(policy_logprobs(stage, rollout), moved)  # the policy's own weights are back after it


def test_kl_is_zero_at_the_first_step_from_a_lora_checkpoint(synth_dir, tmp_path, length_reward):
    spec = BackboneSpec(lora=LoRASpec(r=2, dropout=0.05), dve=DVESpec(enabled=True, num_groups=4))
    L.seed_everything(0)
    stage = GRPOStage(spec, rewards=[RewardSpec(length_reward)], max_new_tokens=8, beta=0.1, lr=1e-2,
                      init_from=str(lora_checkpoint(tmp_path / "prev.ckpt", spec)))
    trainer = fit(stage, datamodule(synth_dir, tmp_path), steps=1)
    assert trainer.callback_metrics["rl/kl"] < 1e-7  # with adapters off as the reference it was ~1e-2 here
    second = fit(stage, datamodule(synth_dir, tmp_path), steps=3)  # lr 1e-2: the policy has moved away
    assert second.callback_metrics["rl/kl"] > 1e-5


def test_a_resumed_run_keeps_the_reference_of_the_uninterrupted_run(synth_dir, tmp_path, length_reward):
    """Full training: the reference is the policy as the stage was built, also when Lightning restores a later
    checkpoint into it (a resumed run used to re-copy its reference from the resumed weights: KL 0 again)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def stage():
        L.seed_everything(0)
        return GRPOStage(rewards=[RewardSpec(length_reward)], max_new_tokens=8, beta=0.1, lr=1e-2)

    first = stage()
    start = {n: p.detach().clone() for n, p in first.named_parameters() if p.requires_grad}
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(first, datamodule(synth_dir, tmp_path))
    resumed = stage()
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False, log_every_n_steps=1)
    trainer.fit(resumed, datamodule(synth_dir, tmp_path), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 3
    assert any(not torch.equal(start[n], p) for n, p in resumed.named_parameters() if p.requires_grad)  # resumed
    assert all(torch.equal(start[n], w) for n, w in resumed._reference_weights.items())  # reference: the start
    assert trainer.callback_metrics["rl/kl"] > 1e-5


def test_each_image_encoded_once_gives_the_logits_and_gradients_of_repeated_images(rollout_batch):
    from skinflow.rl.rollout import repeat_images

    torch.manual_seed(0)
    stage = GRPOStage(BackboneSpec(lora=LoRASpec(r=2), dve=DVESpec(enabled=True, num_groups=4)), max_new_tokens=6, group_size=3)
    with torch.no_grad():
        for p in stage.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))  # LoRA B and DVE heads start at zero: give them gradients to compare
    rollout = stage.rollout(rollout_batch)
    # compared in float64: in float32 the two ways sum in other orders (2 images vs 6 through the vision tower) and
    # LoRA-A gradients differed by ~1e-4 relative on one CPU, a machine-dependent rounding, not a wiring error. In
    # float64 the largest gap is 2.4e-6 of a tensor's largest gradient (the DVE heads); pairing the wrong image is O(1)
    stage.double()
    T = rollout.completion_ids.shape[1]
    pixels, grid = repeat_images(rollout.pixel_values, rollout.image_grid_thw, 3)  # the plain way: G copies
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
    mask = torch.cat([rollout.prompt_mask, rollout.completion_mask.long()], 1)
    weights = torch.randn(ids.shape[0], T, dtype=torch.float64)

    def grads(logits):
        from skinflow.rl.grpo import token_logprobs

        stage.zero_grad()
        (token_logprobs(logits, rollout.completion_ids) * weights).sum().backward()
        return {n: p.grad.clone() for n, p in stage.named_parameters() if p.requires_grad}

    plain = stage.model(**stage.model_inputs(ids, mask, pixels, grid), logits_to_keep=T + 1).logits[:, :-1]
    plain = plain.index_fill(-1, stage.placeholder_ids(plain.device), float("-inf"))  # as the stage scores
    shared = stage.completion_logits(stage.model, rollout)
    assert shared.dtype == plain.dtype == torch.float64
    assert torch.allclose(shared, plain, atol=1e-8)
    g_plain, g_shared = grads(plain), grads(shared)
    assert any(".visual." in n and g.abs().sum() > 0 for n, g in g_plain.items())  # the DVE heads (vision) learn too
    for name in g_plain:
        assert torch.allclose(g_shared[name], g_plain[name], atol=2e-5 * float(g_plain[name].abs().max()), rtol=1e-5), name
    # a micro-batch holding part of an image's group encodes only its own images
    part = rollout.select(torch.tensor([2, 3]))
    assert part.image_index.tolist() == [0, 1]
    assert torch.allclose(stage.completion_logits(stage.model, part), shared[2:4], atol=1e-5)


def test_rollout_is_image_major_and_its_logprobs_match_generate(rollout_batch):
    """Sequences b*G .. b*G+G-1 belong to image b: the training forward scores each sampled token as the sampler
    did (a group-major order would pair completions with the wrong image)."""
    from skinflow.rl.grpo import token_logprobs

    torch.manual_seed(0)
    stage = GRPOStage(max_new_tokens=6, group_size=3, temperature=1.0)
    # the sampler's processed scores (placeholders suppressed) against the training forward on the same tokens
    sampler, trainer, m = stage.sampler_and_scorer_logprobs(rollout_batch, seed=1)
    assert torch.allclose(sampler[m], trainer[m], atol=1e-4)
    # the same check with each completion paired with its neighbour group's image fails
    torch.manual_seed(1)
    rollout = stage.rollout(rollout_batch)
    swapped = rollout.select(torch.arange(len(rollout.texts)))
    swapped.image_index = 1 - swapped.image_index
    with torch.no_grad():
        wrong = token_logprobs(stage.completion_logits(stage.model, swapped), rollout.completion_ids)
    assert not torch.allclose(sampler[m], wrong[m], atol=1e-4)


def test_placeholder_tokens_are_never_sampled_nor_scored(rollout_batch):
    """A completion holding <|image_pad|> would no longer match its image features (the forward refuses it):
    sampling suppresses the placeholders and the training forward scores with the same support."""
    torch.manual_seed(0)
    stage = GRPOStage(max_new_tokens=6, group_size=3)
    image_id = stage.processor.image_token_id
    with torch.no_grad():
        stage.model.lm_head.weight[image_id] += 5.0 * stage.model.lm_head.weight.norm(dim=1).max()  # wants placeholders
        stage.model.lm_head.weight[image_id] *= 50.0
    rollout = stage.rollout(rollout_batch)
    assert not (rollout.completion_ids == image_id).any() and rollout.completion_mask.any()
    logits = stage.completion_logits(stage.model, rollout)
    assert torch.isneginf(logits[..., stage.processor.placeholder_token_ids]).all()
    from skinflow.rl.grpo import token_entropy

    assert torch.isfinite(token_entropy(logits)).all()


@pytest.fixture
def length_reward():
    """A reward a random model's completions differ in (their length), registered for one test."""
    from skinflow.rl.rewards import REWARDS, register

    register("test_length")(lambda completions, targets: torch.tensor([len(c) / 100 for c in completions]))
    yield "test_length"
    REWARDS.pop("test_length")


def test_training_moves_the_policy_not_the_reference_and_logs_rl_keys(synth_dir, tmp_path, length_reward):
    from skinflow.tracking.mlflow import SkinflowMLFlowLogger

    L.seed_everything(0)
    stage = GRPOStage(rewards=[RewardSpec("ranked_diagnosis"), RewardSpec(length_reward, 0.5)], max_new_tokens=12,
                      lr=1e-3, beta=0.1, num_iterations=2, table_every=1)
    before = trainable(stage)
    logger = SkinflowMLFlowLogger(tracking_uri=f"sqlite:///{tmp_path}/m.db", artifact_location=str(tmp_path / "a"))
    trainer = fit(stage, datamodule(synth_dir, tmp_path), steps=4, logger=logger, val_every=2)  # mu=2: 2 batches
    after = trainable(stage)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert set(stage._reference_weights) == set(before)
    assert all(torch.equal(before[n], stage._reference_weights[n]) for n in before)
    metrics = trainer.callback_metrics
    assert metrics["rl/frac_zero_std_groups"] < 1
    for key in ("reward/ranked_diagnosis", "reward/ranked_diagnosis_std", f"reward/{length_reward}", "reward/total", "rl/kl",
                "rl/clip_frac", "rl/entropy", "rl/frac_zero_std_groups", "completions/mean_length",
                "completions/clipped_frac", "val/graded_top1", "val/reward/caption_fields"):
        assert key in metrics, key
    assert 0 < metrics["completions/mean_length"] <= 12 and metrics["rl/entropy"] > 0
    assert metrics["rl/kl"] > 1e-6  # the first batch's two steps moved the policy off the reference
    assert trainer.global_step == 4  # 2 batches x mu = 2 optimizer steps each
    artifacts = [a.path for a in logger.experiment.list_artifacts(logger.run_id, "rollouts")]
    assert artifacts and artifacts[0].endswith(".json")


def test_micro_batches_give_the_same_gradient(synth_dir, tmp_path, length_reward):
    """Under a reward that varies within groups (a tied reward has zero gradient and could not tell): the gradient
    at the optimizer step is the same whether the rollout goes through in one pass or in micro-batches of 3."""
    from lightning.pytorch.callbacks import Callback

    class Gradients(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    results = []
    for micro in (None, 3):
        L.seed_everything(0)
        stage = GRPOStage(rewards=[RewardSpec(length_reward)], max_new_tokens=8, lr=1e-3, beta=0.1,
                          micro_batch_size=micro, drop_tied_groups=False, max_grad_norm=0)
        grads = Gradients()
        trainer = fit(stage, datamodule(synth_dir, tmp_path), steps=1, callbacks=[grads])
        assert trainer.callback_metrics["rl/frac_zero_std_groups"] < 1
        results.append(grads.grads)
    assert sum(float(g.abs().sum()) for g in results[0].values()) > 1e-3  # there is a gradient to compare
    assert results[0].keys() == results[1].keys()
    for name, g in results[0].items():
        assert torch.allclose(results[1][name], g, rtol=1e-4, atol=1e-6 * float(g.abs().max())), name


def test_clipping_is_counted_in_every_pass(synth_dir, tmp_path, length_reward):
    """mu = 2: the second pass's ratio moves off 1 and clips (the first pass's ratio is 1 and never does)."""
    L.seed_everything(0)
    stage = GRPOStage(rewards=[RewardSpec(length_reward)], max_new_tokens=8, lr=5e-2, beta=0.0, num_iterations=2,
                      eps_low=0.01, eps_high=0.01, max_grad_norm=0)
    trainer = fit(stage, datamodule(synth_dir, tmp_path), steps=2)
    clip = float(trainer.callback_metrics["rl/clip_frac"])
    assert 0 < clip <= 0.5  # at most the second pass's half of the tokens


def test_one_step_raises_the_likelihood_of_positive_advantages_and_lowers_it_for_negative(rollout_batch):
    from skinflow.rl.grpo import LOSS_WEIGHTS, policy_loss, token_logprobs

    for sign in (1.0, -1.0):
        torch.manual_seed(0)
        stage = GRPOStage(max_new_tokens=8, group_size=2)
        rollout = stage.rollout(rollout_batch)
        mask = rollout.completion_mask
        before = (policy_logprobs(stage, rollout) * mask).sum()
        logp = token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids)
        advantages = torch.full((len(rollout.texts),), sign)
        loss, _ = policy_loss(logp, logp.detach(), None, advantages, LOSS_WEIGHTS["grpo"](mask, 8), 0.2, 0.2, 0.0)
        loss.backward()
        torch.optim.SGD(stage.trainable_parameters(), lr=1e-2).step()
        after = (policy_logprobs(stage, rollout) * mask).sum()
        assert (after - before) * sign > 0, (sign, float(before), float(after))


def test_all_tied_batches_step_on_kl_alone_or_skip_without_kl(synth_dir, tmp_path):
    for beta in (0.0, 0.1):
        L.seed_everything(0)
        # caption rewards on data without captions: every completion scores 0, every group ties
        stage = GRPOStage(rewards=[RewardSpec("caption_fields")], max_new_tokens=6, lr=1e-2, beta=beta)
        before = trainable(stage)
        trainer = fit(stage, datamodule(synth_dir, tmp_path, with_caption=False), steps=2, max_epochs=1, limit_train_batches=2)
        assert trainer.callback_metrics["rl/frac_zero_std_groups"] == 1.0
        if beta:  # KL-only steps: counted; at the first step policy == reference, so KL and its gradient are 0
            assert trainer.global_step == 2 and trainer.callback_metrics["rl/skipped_step"] == 0.0
            assert trainer.callback_metrics["rl/kl"] < 1e-6
        else:  # skipped: no optimizer step, nothing moves
            assert trainer.global_step == 0 and trainer.callback_metrics["rl/skipped_step"] == 1.0
            assert all(torch.equal(before[n], p) for n, p in trainable(stage).items())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="loss='ppo'"):
        GRPOStage(loss="ppo")
    with pytest.raises(ValueError, match="group_size=1"):
        GRPOStage(group_size=1)
    with pytest.raises(ValueError, match="num_iterations=0"):  # was KeyError: 'tokens' in the first step
        GRPOStage(num_iterations=0)
    with pytest.raises(ValueError, match="micro_batch_size=0"):
        GRPOStage(micro_batch_size=0)


@pytest.mark.parametrize("warmup", [0, 4])
def test_learning_rate_warms_up_from_its_first_step_then_stays(warmup):
    """transformers' schedule as the RL stages use it: lr * (s + 1) / warmup for s < warmup (no step at lr 0), then
    lr at every later step (no decay: a cosine to ``min_lr_rate`` 1)."""
    stage = GRPOStage(max_new_tokens=6, lr=1e-3, warmup_steps=warmup)
    config = stage.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [1e-3 * min(1.0, (s + 1) / warmup) if warmup else 1e-3 for s in range(12)]
    assert seen == pytest.approx(expected, rel=1e-12)
