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


def test_reference_with_adapters_disabled_equals_the_base_model(rollout_batch):
    torch.manual_seed(0)
    stage = GRPOStage(BackboneSpec(lora=LoRASpec(r=2), dve=DVESpec(enabled=True, num_groups=4)), max_new_tokens=6, group_size=2)
    rollout = stage.rollout(rollout_batch)
    with torch.no_grad():
        base = stage.reference_logprobs(rollout)
        # LoRA B starts at zero and DVE heads at zero: the fresh policy is the base model
        policy = stage.completion_logits(stage.model, rollout)
        from skinflow.rl.grpo import token_logprobs
        assert torch.allclose(token_logprobs(policy, rollout.completion_ids), base, atol=1e-5)
        for name, p in stage.model.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
        moved = token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids)
        assert not torch.allclose(moved, base, atol=1e-3)  # adapters and DVE now matter
        assert torch.allclose(stage.reference_logprobs(rollout), base, atol=1e-5)  # but not to the reference
        again = token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids)
        assert torch.allclose(again, moved)  # adapters and DVE are back on after the reference pass


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
    stage.model.eval()
    torch.manual_seed(1)
    rollout = stage.rollout(rollout_batch)
    torch.manual_seed(1)
    out = stage.model.generate(
        **stage.model_inputs(rollout_batch["prompt_ids"], rollout_batch["prompt_mask"], rollout_batch["pixel_values"],
                             rollout_batch["image_grid_thw"]),
        do_sample=True, num_return_sequences=3, top_k=0, temperature=1.0, output_scores=True,
        return_dict_in_generate=True, **stage.generation_kwargs())
    T = rollout.completion_ids.shape[1]
    assert torch.equal(out.sequences[:, -T:].masked_fill(~rollout.completion_mask, 0),
                       rollout.completion_ids.masked_fill(~rollout.completion_mask, 0))
    # the sampler's processed scores (placeholders suppressed), the distribution it drew from
    sampler = token_logprobs(torch.stack(out.scores, 1)[:, :T], rollout.completion_ids)
    with torch.no_grad():
        trainer = token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids)
    m = rollout.completion_mask
    assert torch.allclose(sampler[m], trainer[m], atol=1e-4)
    # the same check with each completion paired with its neighbour group's image fails
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
    reference = dict(stage._reference[0].named_parameters())
    assert all(torch.equal(before[n], reference[n.removeprefix("model.")]) for n in before)
    metrics = trainer.callback_metrics
    assert metrics["rl/frac_zero_std_groups"] < 1
    for key in ("reward/ranked_diagnosis", "reward/ranked_diagnosis_std", f"reward/{length_reward}", "reward/total", "rl/kl",
                "rl/clip_frac", "rl/entropy", "rl/frac_zero_std_groups", "completions/mean_length",
                "completions/clipped_frac", "val/graded_top1", "val/reward/caption_fields"):
        assert key in metrics, key
    assert 0 < metrics["completions/mean_length"] <= 12 and metrics["rl/kl"] >= 0 and metrics["rl/entropy"] > 0
    assert trainer.global_step == 4  # 2 batches x mu = 2 optimizer steps each
    artifacts = [a.path for a in logger.experiment.list_artifacts(logger.run_id, "rollouts")]
    assert artifacts and artifacts[0].endswith(".json")


def test_micro_batches_give_the_same_update(synth_dir, tmp_path):
    results = []
    for micro in (None, 3):
        L.seed_everything(0)
        stage = GRPOStage(rewards=[RewardSpec("format")], max_new_tokens=8, lr=1e-3, beta=0.1, micro_batch_size=micro,
                          drop_tied_groups=False, max_grad_norm=0)
        fit(stage, datamodule(synth_dir, tmp_path), steps=1)
        results.append(trainable(stage))
    for name in results[0]:
        assert torch.allclose(results[0][name], results[1][name], atol=1e-6), name


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
