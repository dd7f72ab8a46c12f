"""GRPO maths against plain loops and token-level formulas written out here (B=3, G=5, T=7)."""

import math

import pytest
import torch

from skinflow.rl.grpo import (
    LOSS_WEIGHTS, group_advantages, k3_kl, policy_loss, tied_groups, token_entropy, token_logprobs,
)
from skinflow.rl.rollout import completion_mask, repeat_images

B, G, T, V = 3, 5, 7, 11


def rollout_tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, G, generator=g)
    logp = -torch.rand(B, G, T, generator=g) * 3
    old = logp + 0.3 * torch.randn(B, G, T, generator=g)
    ref = logp + 0.5 * torch.randn(B, G, T, generator=g)
    lengths = torch.randint(1, T + 1, (B, G), generator=g)
    mask = torch.arange(T)[None, None, :] < lengths[..., None]
    return rewards, logp, old, ref, mask


@pytest.mark.parametrize("scale", ["std", "none"])
def test_advantages_equal_a_plain_loop(scale):
    rewards = rollout_tensors()[0]
    ours = group_advantages(rewards, scale)
    for b in range(B):
        values = rewards[b].tolist()
        mean = sum(values) / G
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / G)
        for i in range(G):
            expected = (values[i] - mean) / (std + 1e-4) if scale == "std" else values[i] - mean
            assert ours[b, i].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_tied_groups_get_zero_advantage_and_are_flagged():
    rewards = rollout_tensors()[0]
    rewards[1] = 0.7
    for scale in ("std", "none"):
        assert torch.equal(group_advantages(rewards, scale)[1], torch.zeros(G))
    assert tied_groups(rewards).tolist() == [False, True, False]


def reference_loss(variant, logp, old, ref, adv, mask, eps_low, eps_high, beta, max_tokens):
    """Token by token, as the papers write it."""
    def token_loss(b, i, t):
        ratio = math.exp(logp[b, i, t] - old[b, i, t])
        a = adv[b, i].item()
        surrogate = -min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)
        d = ref[b, i, t] - logp[b, i, t]
        return float(surrogate + beta * (math.exp(d) - d - 1))

    tokens = [(b, i, t) for b in range(B) for i in range(G) for t in range(T) if mask[b, i, t]]
    if variant == "dapo":
        return sum(token_loss(*x) for x in tokens) / len(tokens)
    if variant == "dr_grpo":
        return sum(token_loss(*x) for x in tokens) / (B * G * max_tokens)
    total = 0.0
    for b in range(B):
        for i in range(G):
            own = [token_loss(b, i, t) for t in range(T) if mask[b, i, t]]
            total += sum(own) / len(own)
    return total / (B * G)


@pytest.mark.parametrize("variant", sorted(LOSS_WEIGHTS))
def test_each_loss_variant_equals_its_token_level_formula(variant):
    rewards, logp, old, ref, mask = rollout_tensors(1)
    adv = group_advantages(rewards)
    max_tokens = 9
    ours, _ = policy_loss(logp, old, ref, adv, LOSS_WEIGHTS[variant](mask, max_tokens), 0.2, 0.28, 0.05)
    expected = reference_loss(variant, logp.double(), old.double(), ref.double(), adv, mask, 0.2, 0.28, 0.05, max_tokens)
    assert ours.item() == pytest.approx(expected, rel=1e-4)


def test_with_one_pass_and_no_kl_clipping_changes_nothing():
    rewards, logp, _, _, mask = rollout_tensors(2)
    adv = group_advantages(rewards)
    weights = LOSS_WEIGHTS["grpo"](mask, T)
    results = []
    for eps in (0.2, 1e9):  # clipped vs effectively unclipped
        x = logp.clone().requires_grad_(True)
        loss, stats = policy_loss(x, x.detach(), None, adv, weights, eps, eps, 0.0)
        loss.backward()
        results.append((loss.detach(), x.grad.clone(), stats["clipped"]))
    assert torch.allclose(results[0][0], results[1][0]) and torch.allclose(results[0][1], results[1][1])
    assert results[0][2] == 0
    # and with a stale policy the clipped loss does differ
    x = logp.clone().requires_grad_(True)
    clipped, stats = policy_loss(x, x.detach() - 0.5, None, adv, weights, 0.2, 0.2, 0.0)
    unclipped, _ = policy_loss(x, x.detach() - 0.5, None, adv, weights, 1e9, 1e9, 0.0)
    assert not torch.allclose(clipped, unclipped) and stats["clipped"] > 0


@pytest.mark.parametrize("variant", sorted(LOSS_WEIGHTS))
def test_micro_batches_accumulate_to_the_full_gradient(variant):
    rewards, logp, old, ref, mask = rollout_tensors(3)
    adv = group_advantages(rewards).reshape(-1)  # (N,)
    flat = lambda x: x.reshape(B * G, T)  # noqa: E731  (B, G, T) -> (N, T)
    weights = LOSS_WEIGHTS[variant](flat(mask), T)
    full = flat(logp).clone().requires_grad_(True)
    policy_loss(full, flat(old), flat(ref), adv, weights, 0.2, 0.2, 0.1)[0].backward()
    split = flat(logp).clone().requires_grad_(True)
    for rows in torch.arange(B * G).split(4):
        policy_loss(split[rows], flat(old)[rows], flat(ref)[rows], adv[rows], weights[rows], 0.2, 0.2, 0.1)[0].backward()
    assert torch.allclose(full.grad, split.grad, atol=1e-7)


def test_k3_is_the_unbiased_kl_estimator_of_pi_against_the_reference():
    """k3 = r - log r - 1 with r = ref / pi (Schulman's estimator of KL(pi || ref) from samples of pi): its value at
    known ratios, zero at equality, and its mean over samples of pi equals the exact KL (the arguments swapped, it
    is off by more than 0.1 here). The old ">= 0" check held for the swapped and sign-flipped forms too."""
    import math

    logp, ref = torch.tensor([0.0, -1.0, math.log(0.5)]), torch.tensor([math.log(2.0), -1.0, 0.0])
    expected = torch.tensor([2 - math.log(2) - 1, 0.0, 2 - math.log(2) - 1])
    assert torch.allclose(k3_kl(logp, ref), expected, atol=1e-6)
    assert torch.equal(k3_kl(logp, logp), torch.zeros(3))
    torch.manual_seed(0)
    pi, q = torch.tensor([0.9, 0.05, 0.05]), torch.tensor([0.3, 0.3, 0.4])  # policy, reference over 3 tokens
    draws = torch.multinomial(pi, 200_000, replacement=True)
    exact = float((pi * (pi / q).log()).sum())  # KL(pi || ref) = 0.795
    assert abs(float(k3_kl(pi.log()[draws], q.log()[draws]).mean()) - exact) < 0.01
    assert abs(float(k3_kl(q.log()[draws], pi.log()[draws]).mean()) - exact) > 0.1


def test_token_logprobs_and_entropy_match_log_softmax():
    logits, tokens = torch.randn(2, 4, V), torch.randint(0, V, (2, 4))
    logp = torch.log_softmax(logits / 0.7, -1)
    assert torch.allclose(token_logprobs(logits, tokens, 0.7), logp.gather(-1, tokens[..., None]).squeeze(-1), atol=1e-6)
    assert torch.allclose(token_entropy(logits, 0.7), -(logp.exp() * logp).sum(-1), atol=1e-6)


def test_completion_mask_stops_after_the_first_eos():
    tokens = torch.tensor([[4, 9, 2, 2, 5], [2, 3, 3, 3, 3], [4, 4, 4, 4, 4]])
    mask, clipped = completion_mask(tokens, eos_ids=2)
    assert mask.int().tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert clipped.tolist() == [False, False, True]


def test_repeat_images_groups_patches_image_major():
    grid = torch.tensor([[1, 2, 2], [1, 1, 2], [1, 2, 4]])
    pixels = torch.arange(int(grid.prod(-1).sum()))[:, None].float()
    repeated, grid_g = repeat_images(pixels, grid, 3)
    assert grid_g.tolist() == [row for row in grid.tolist() for _ in range(3)]
    chunks = repeated.split(grid_g.prod(-1).tolist())
    originals = pixels.split(grid.prod(-1).tolist())
    for n, chunk in enumerate(chunks):
        assert torch.equal(chunk, originals[n // 3])


def test_select_keeps_every_field_of_the_chosen_rows():
    """Filtering a rollout (tied groups dropped) keeps each kept row's clipped flag and text with it: the logged
    clip fraction and the rewards read them after the filter."""
    from skinflow.rl.rollout import Rollout

    n = 4
    rollout = Rollout(
        torch.arange(n * 2).view(n, 2), torch.ones(n, 2, dtype=torch.bool), torch.zeros(3, 1), torch.tensor([[1, 1, 3]]),
        torch.zeros(n, dtype=torch.long), torch.arange(n * 3).view(n, 3), torch.ones(n, 3, dtype=torch.bool),
        torch.tensor([True, False, False, True]), ["a", "b", "c", "d"],
    )
    kept = rollout.select(torch.tensor([3, 1]))
    assert kept.clipped.tolist() == [True, False]
    assert kept.texts == ["d", "b"]
    assert kept.completion_ids.tolist() == [[9, 10, 11], [3, 4, 5]]
    assert kept.prompt_ids.tolist() == [[6, 7], [2, 3]]
    assert kept.pixel_values is rollout.pixel_values


def test_shared_image_features_refuses_an_encoder_that_returns_too_few_features():
    """One feature tensor per distinct image, or an error: a short encoder output must not silently pair the
    wrong image with a sequence."""
    from skinflow.rl.rollout import shared_image_features

    grid = torch.tensor([[1, 1, 1], [1, 1, 2]])
    pixels = torch.arange(3.0)[:, None]
    short = lambda p, g: [p[:1]]  # noqa: E731  one tensor for two images
    with pytest.raises(ValueError):
        shared_image_features(short, pixels, grid, torch.tensor([0, 1]))


def test_advantages_of_pairs_single_completions_and_a_bad_scale():
    """G = 2 divides by the pair's std (0.5 for rewards 1 and 0); G = 1 has no spread, advantage 0 under either
    scale; an unknown scale is refused by name."""
    from skinflow.rl.grpo import group_advantages

    pair = group_advantages(torch.tensor([[1.0, 0.0]]), "std")
    assert torch.allclose(pair, torch.tensor([[0.5 / (0.5 + 1e-4), -0.5 / (0.5 + 1e-4)]]))
    for scale in ("std", "none"):
        assert group_advantages(torch.tensor([[3.0], [7.0]]), scale).tolist() == [[0.0], [0.0]]
    with pytest.raises(ValueError, match="advantage scale 'bogus' is not 'std' or 'none'"):
        group_advantages(torch.tensor([[1.0, 0.0]]), "bogus")


def test_a_group_ties_when_its_spread_is_at_most_the_tolerance():
    from skinflow.rl.grpo import tied_groups

    rewards = torch.tensor([[0.0, 0.5], [0.0, 0.75], [1.0, 1.0]])
    assert tied_groups(rewards, tol=0.5).tolist() == [True, False, True]
    # by default only float noise ties: any real spread of rewards is a learning signal
    assert tied_groups(torch.tensor([[0.0, 0.5], [0.3, 0.3 + 1e-7], [0.0, 1e-3]])).tolist() == [False, True, False]


def test_temperature_defaults_to_1():
    logits, tokens = torch.randn(2, 4, V), torch.randint(0, V, (2, 4))
    logp = torch.log_softmax(logits, -1)
    assert torch.allclose(token_logprobs(logits, tokens), logp.gather(-1, tokens[..., None])[..., 0], atol=1e-6)
    assert torch.allclose(token_entropy(logits), -(logp.exp() * logp).sum(-1), atol=1e-6)


@pytest.mark.parametrize("variant", ["grpo", "dr_grpo", "dapo"])
def test_loss_weights_count_only_sequences_and_tokens_that_exist(variant):
    """An empty completion (no token before its end) carries no weight and does not count as a sequence; a single
    one-token completion gets the whole weight 1."""
    from skinflow.rl.grpo import LOSS_WEIGHTS

    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    weights = LOSS_WEIGHTS[variant](mask, 3)
    expected = {"grpo": [[1 / 4, 1 / 4, 0], [0, 0, 0], [1 / 2, 0, 0]],  # sequence means over the 2 non-empty
                "dr_grpo": [[1 / 6, 1 / 6, 0], [0, 0, 0], [1 / 6, 0, 0]],  # / (2 sequences x 3 max tokens)
                "dapo": [[1 / 3, 1 / 3, 0], [0, 0, 0], [1 / 3, 0, 0]]}[variant]  # / 3 tokens
    assert torch.allclose(weights, torch.tensor(expected))
    single = LOSS_WEIGHTS[variant](torch.tensor([[True, False]]), 1 if variant != "dr_grpo" else 1)
    assert single.sum().item() == pytest.approx(1.0)


def test_selecting_rows_of_a_rollout_keeps_every_per_sequence_field_and_the_images():
    from skinflow.rl.rollout import Rollout

    n = 4
    rollout = Rollout(torch.arange(n * 2).view(n, 2), torch.ones(n, 2, dtype=torch.long), torch.randn(6, 3),
                      torch.tensor([[1, 2, 1], [1, 2, 2]]), torch.tensor([0, 0, 1, 1]), torch.arange(n * 3).view(n, 3),
                      torch.tensor([[True, False, False]] * n), torch.tensor([False, True, False, True]), ["a", "b", "c", "d"])
    part = rollout.select(torch.tensor([3, 1]))
    assert part.texts == ["d", "b"] and part.clipped.tolist() == [True, True]
    assert part.completion_ids.tolist() == [[9, 10, 11], [3, 4, 5]] and part.image_index.tolist() == [1, 0]
    assert part.sequence_grid_thw.tolist() == [[1, 2, 2], [1, 2, 1]] and part.pixel_values is rollout.pixel_values


def test_kl_statistic_sums_counted_tokens_only_and_is_absent_at_beta_0():
    """The logged KL is the sum of k3 over tokens with weight > 0 (padding adds nothing); with beta 0 no KL is
    computed or logged even when reference log-probabilities are given."""
    torch.manual_seed(0)
    logp, old, ref = (torch.randn(1, 2, 4) for _ in range(3))
    weights = torch.tensor([[[0.25, 0.25, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]]])  # padding after each completion's end
    adv = torch.tensor([[1.0, -1.0]])
    _, stats = policy_loss(logp, old, ref, adv, weights, 0.2, 0.2, 0.1)
    assert torch.allclose(stats["kl"], k3_kl(logp, ref)[weights > 0].sum())
    assert int(stats["tokens"]) == 3
    loss0, stats0 = policy_loss(logp, old, ref, adv, weights, 0.2, 0.2, 0.0)
    assert "kl" not in stats0
    assert torch.equal(loss0, policy_loss(logp, old, None, adv, weights, 0.2, 0.2, 0.0)[0])


def test_per_token_advantages_meet_their_own_tokens():
    """Advantages given per token (B, G, T) multiply their own token's ratio, elementwise; per-sequence ones
    (B, G) are broadcast over T: the two agree when every token carries its sequence's advantage."""
    from skinflow.rl.grpo import clipped_surrogate

    torch.manual_seed(1)
    logp, old = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    per_token = torch.randn(2, 3, 5)
    loss, clipped = clipped_surrogate(logp, old, per_token, 0.2, 0.2)
    ratio = torch.exp(logp - old)
    expected = -torch.minimum(ratio * per_token, ratio.clamp(0.8, 1.2) * per_token)
    assert loss.shape == clipped.shape == (2, 3, 5)
    assert torch.allclose(loss, expected)
    per_sequence = torch.randn(2, 3)
    assert torch.allclose(clipped_surrogate(logp, old, per_sequence, 0.2, 0.2)[0],
                          clipped_surrogate(logp, old, per_sequence[..., None].expand(2, 3, 5), 0.2, 0.2)[0])
