"""What a researcher relies on in a GRPO step, checked through ``training_step`` on the tiny model in seconds
(issue 27): the temperature in every scoring pass, which rows the tied-group filter keeps, padding after a
completion's end kept out of the loss and the logged statistics, and the sign rule for counting a token as
clipped. The maths functions have their own tests (tests/test_grpo_math.py); these catch the stage wiring them
wrongly."""

import lightning as L
import pytest
import torch

from skinflow.models.backbone import BackboneSpec, LoRASpec
from skinflow.rl.grpo import clipped_surrogate, token_entropy, token_logprobs
from skinflow.rl.rewards import REWARDS, RewardSpec, register
from skinflow.stages.grpo import GRPOStage
from tests.test_grpo_stage import datamodule, fit


@pytest.fixture
def reward():
    """A reward set per test: ``reward.fn(completions, targets) -> (N,)``."""

    class Holder:
        fn = staticmethod(lambda completions, targets: torch.tensor([len(c) / 100 for c in completions]))

    register("test_behaviour")(lambda completions, targets: Holder.fn(completions, targets))
    yield Holder
    REWARDS.pop("test_behaviour")


def lora_stage(**kwargs) -> GRPOStage:
    torch.manual_seed(0)
    stage = GRPOStage(BackboneSpec(lora=LoRASpec(r=2)), rewards=[RewardSpec("test_behaviour")], max_new_tokens=6,
                      group_size=2, table_every=0, **kwargs)
    with torch.no_grad():  # LoRA B starts at zero: move it so the adapters change the distribution
        for p in stage.trainable_parameters():
            p.add_(0.2 * torch.randn_like(p))
    from skinflow.models.reference import snapshot_trainable

    stage._reference_weights = snapshot_trainable(stage) if stage.hparams.beta else {}
    return stage


def test_every_scoring_pass_scores_at_the_sampling_temperature(synth_dir, tmp_path, reward):
    """At T = 0.5 and mu = 2 with a tiny learning rate, the first step's reference equals the policy (KL 0) and the
    old-policy pass equals the policy (no token clipped at eps 1e-3): a pass that scored at T = 1 differs by ~1e-1."""
    L.seed_everything(0)
    stage = lora_stage(temperature=0.5, num_iterations=2, beta=0.5, lr=1e-12, eps_low=1e-3, eps_high=1e-3)
    trainer = fit(stage, datamodule(synth_dir, tmp_path), steps=2)
    assert trainer.callback_metrics["rl/kl"] < 1e-9
    assert trainer.callback_metrics["rl/clip_frac"] == 0
    # and the temperature does matter here: the policy's log-probabilities at T = 1 are far from those at 0.5
    batch = next(iter(trainer.datamodule.train_dataloader()))
    rollout = stage.rollout(batch)
    at_05 = stage.completion_logprobs(stage.model, rollout)[0]
    logits = stage.completion_logits(stage.model, rollout)
    mask = rollout.completion_mask
    assert torch.allclose(at_05[mask], token_logprobs(logits, rollout.completion_ids, 0.5)[mask], atol=1e-5)
    assert (at_05[mask] - token_logprobs(logits, rollout.completion_ids, 1.0)[mask]).abs().max() > 1e-1


def test_the_tied_group_filter_keeps_exactly_the_groups_with_signal(synth_dir, tmp_path, reward, monkeypatch):
    """Image 0's completions all score 1 (tied), image 1's score 0 and 1: only image 1's rows (2, 3) are optimised,
    with their advantages (-0.5, +0.5 mean-only); with the filter off all four rows are."""
    reward.fn = staticmethod(lambda completions, targets: torch.tensor([1.0, 1.0, 0.0, 1.0]))
    seen = []
    original = GRPOStage.optimise

    def spy(self, rollout, advantages):
        seen.append((rollout.completion_ids.shape[0], advantages.clone()))
        return original(self, rollout, advantages)

    monkeypatch.setattr(GRPOStage, "optimise", spy)
    for drop, rows, advantages in ((True, 2, [-0.5, 0.5]), (False, 4, [0.0, 0.0, -0.5, 0.5])):
        seen.clear()
        L.seed_everything(0)
        stage = lora_stage(advantage_scale="none", beta=0.0, drop_tied_groups=drop)
        trainer = fit(stage, datamodule(synth_dir, tmp_path), steps=1)
        assert seen[0][0] == rows and seen[0][1].tolist() == advantages
        assert trainer.callback_metrics["rl/frac_zero_std_groups"] == 0.5


def test_padding_after_a_completions_end_is_out_of_the_loss_and_the_statistics(synth_dir, tmp_path, reward):
    """Full-logits scoring (where padded positions have real entropies): the logged entropy and mean length are
    the masked means, computed here from the same rollout; the loss and its gradient do not change when the
    padding ids after each end are replaced."""
    L.seed_everything(0)
    stage = lora_stage(logprob_chunk_mib=0, beta=0.0)
    stage.model.generation_config.eos_token_id = list(range(0, stage.processor.tokenizer.vocab_size, 3))  # early ends
    dm = datamodule(synth_dir, tmp_path)
    trainer = fit(stage, dm, steps=1)  # builds the optimizer; the checks below use the trained stage
    batch = next(iter(trainer.datamodule.train_dataloader()))
    torch.manual_seed(1)
    rollout = stage.rollout(batch)
    mask = rollout.completion_mask
    assert (~mask).any() and mask.any(dim=1).all()  # some completions ended early
    logits = stage.completion_logits(stage.model, rollout)
    entropy = token_entropy(logits, 1.0)
    assert (entropy[~mask] > 0).all()  # padding has real entropy in the full path: counting it would show
    stage.timings = {}
    stats = stage.optimise(rollout, torch.linspace(-1, 1, mask.shape[0]))
    assert stats["entropy"] == pytest.approx(float(entropy.detach()[mask].mean()), rel=1e-4)
    # loss and gradient are blind to the padding ids
    from skinflow.rl.grpo import LOSS_WEIGHTS, policy_loss

    def loss_and_grad(ids):
        stage.zero_grad()
        part = rollout.select(torch.arange(mask.shape[0]))
        part.completion_ids = ids
        logp, _ = stage.completion_logprobs(stage.model, part)
        loss, _ = policy_loss(logp, logp.detach(), None, torch.linspace(-1, 1, mask.shape[0]),
                              LOSS_WEIGHTS["grpo"](mask, 6), 0.2, 0.2, 0.0)
        loss.backward()
        return float(loss), [p.grad.clone() for p in stage.trainable_parameters()]

    other = rollout.completion_ids.masked_fill(~mask, 7)
    (a, ga), (b, gb) = loss_and_grad(rollout.completion_ids), loss_and_grad(other)
    assert a == pytest.approx(b, abs=1e-7) and all(torch.allclose(x, y, atol=1e-7) for x, y in zip(ga, gb))


@pytest.mark.parametrize("advantage, ratio, clipped", [(1.0, 1.5, True), (1.0, 0.5, False), (-1.0, 0.5, True),
                                                       (-1.0, 1.5, False), (1.0, 1.1, False), (-1.0, 0.9, False)])
def test_a_token_counts_as_clipped_only_where_the_clip_binds(advantage, ratio, clipped):
    """PPO clips a ratio above 1 + eps for a positive advantage and below 1 - eps for a negative one; outside the
    range on the other side (or inside it) the unclipped term is the minimum and nothing is clipped."""
    import math

    logp, old = torch.tensor([[[math.log(ratio)]]]), torch.zeros(1, 1, 1)
    loss, was_clipped = clipped_surrogate(logp, old, torch.tensor([[advantage]]), 0.2, 0.2)
    assert bool(was_clipped) is clipped
    bound = min(max(ratio, 0.8), 1.2)
    assert float(loss) == pytest.approx(-min(ratio * advantage, bound * advantage))
