"""Log-probabilities from hidden states in chunks (``skinflow.rl.logprobs``): the values, entropies and gradients of
the full-logits computation, on odd sizes and on the stand-in checkout at Qwen2.5-VL's real vocabulary, and no
vocabulary-sized tensor larger than one chunk, in the forward or the backward."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from skinflow.models.backbone import BackboneSpec, LoRASpec
from skinflow.models.dve import DVESpec
from skinflow.rl.grpo import token_entropy, token_logprobs
from skinflow.rl.logprobs import chunked_token_logprobs, rows_per_chunk

N, T, H, V = 3, 7, 5, 11


def full_reference(hidden, weight, tokens, temperature, suppressed):
    logits = (hidden @ weight.T).index_fill(-1, suppressed, float("-inf"))
    return token_logprobs(logits, tokens, temperature), token_entropy(logits, temperature)


@pytest.mark.parametrize("chunk_rows", [1, 2, 5, 13, 1000])
def test_chunked_values_entropies_and_gradients_equal_the_full_logits(chunk_rows):
    torch.manual_seed(chunk_rows)
    hidden, weight = torch.randn(N, T, H, requires_grad=True), torch.randn(V, H, requires_grad=True)
    suppressed = torch.tensor([3, 7])
    tokens = torch.randint(0, V, (N, T)).masked_fill(torch.isin(torch.randint(0, V, (N, T)), suppressed), 0)
    tokens = torch.where(torch.isin(tokens, suppressed), 1, tokens)
    mask = torch.arange(T)[None] < torch.tensor([7, 4, 1])[:, None]  # right-padded after each completion's end
    upstream = torch.randn(N, T)
    ref_logp, ref_entropy = full_reference(hidden, weight, tokens, 0.7, suppressed)
    ref_grads = torch.autograd.grad((ref_logp * upstream * mask).sum(), (hidden, weight))
    logp, entropy = chunked_token_logprobs(hidden, weight, tokens, mask, 0.7, suppressed, chunk_rows, with_entropy=True)
    grads = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    assert torch.allclose(logp[mask], ref_logp[mask], atol=1e-6)
    assert torch.allclose(entropy[mask], ref_entropy[mask], atol=1e-5)
    assert not entropy.requires_grad
    assert logp[~mask].abs().sum() == 0 and entropy[~mask].abs().sum() == 0  # padding: no value
    assert grads[0][~mask].abs().sum() == 0  # ... and no gradient
    for ours, theirs in zip(grads, ref_grads):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_temperature_and_suppression_change_the_values():
    torch.manual_seed(0)
    hidden, weight, tokens = torch.randn(2, 4, H), torch.randn(V, H), torch.randint(0, 3, (2, 4))
    at_1 = chunked_token_logprobs(hidden, weight, tokens, temperature=1.0, chunk_rows=3)[0]
    at_07 = chunked_token_logprobs(hidden, weight, tokens, temperature=0.7, chunk_rows=3)[0]
    suppressed = chunked_token_logprobs(hidden, weight, tokens, suppressed=torch.tensor([9, 10]), chunk_rows=3)[0]
    assert (at_1 - at_07).abs().max() > 1e-2 and (suppressed - at_1).abs().min() > 1e-6  # less mass elsewhere: higher


def test_rows_per_chunk_fits_the_budget():
    for vocab in (11, 300, 151936, 152064):
        rows = rows_per_chunk(vocab, 64)
        assert rows * vocab * 4 <= 64 * 2**20 < (rows + 1) * vocab * 4


class LargestVocabTensor(TorchDispatchMode):
    """The most elements of any new tensor (not a view) whose last dimension is the vocabulary, forward and backward."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a view of the LM head's weight (V, H) transposed is no new memory
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == self.vocab:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.fixture(scope="module")
def standin_stage(qwen_standin):
    """Stage II on the stand-in checkout (V = 151,936) with LoRA and the DVE, adapters and heads moved off zero,
    temperature 1.3, and a sampled rollout of three left-padded prompts of different lengths x G = 3."""
    from skinflow.models.standin import mixed_prompt_batch
    from skinflow.stages.grpo import GRPOStage

    torch.manual_seed(0)
    spec = BackboneSpec(preset="qwen2.5-vl-3b", pretrained_path=str(qwen_standin), lora=LoRASpec(r=4),
                        dve=DVESpec(enabled=True, num_groups=8))
    stage = GRPOStage(spec, group_size=3, max_new_tokens=10, temperature=1.3, logprob_chunk_mib=3.0)
    with torch.no_grad():
        for p in stage.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
        stage.model.get_base_model().model.language_model.norm.weight.mul_(20.0)  # a peaked distribution: EOS happens
    batch = mixed_prompt_batch(stage.processor)
    assert len(set(batch["prompt_mask"].sum(1).tolist())) == 3
    rollout = stage.rollout(batch)
    # random weights rarely draw EOS: end the completions at mixed lengths, padded after, as sampled ones would be
    T = rollout.completion_ids.shape[1]
    ends = torch.tensor([T, 3, 7, 1, T, 5, 2, 9, 6])[: len(rollout.texts)]
    rollout.completion_mask = torch.arange(T)[None] < ends[:, None]
    rollout.completion_ids = rollout.completion_ids.masked_fill(~rollout.completion_mask, stage.processor.tokenizer.pad_token_id)
    stage.train()
    return stage, rollout


def test_standin_chunked_scoring_equals_full_logits_with_lora_dve_and_temperature(standin_stage):
    stage, rollout = standin_stage
    mask = rollout.completion_mask
    assert rows_per_chunk(151936, stage.hparams.logprob_chunk_mib) == 5  # chunks cut across sequences
    assert mask.sum() % 5 and mask.sum() > 5
    weights = torch.randn(mask.shape)

    def scored(chunk_mib):
        stage.hparams.logprob_chunk_mib = chunk_mib
        stage.zero_grad()
        logp, entropy = stage.completion_logprobs(stage.model, rollout, with_entropy=True)
        (logp * weights * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}
        with torch.no_grad():
            reference = stage.reference_logprobs(rollout)
        return logp.detach(), entropy, grads, reference

    full, full_entropy, full_grads, full_ref = scored(0)
    chunked, entropy, grads, ref = scored(3.0)
    assert torch.allclose(chunked[mask], full[mask], atol=1e-5)
    assert chunked[~mask].abs().sum() == 0 and (~mask).sum() > 0  # the padding after each end is not scored
    assert torch.allclose(entropy[mask], full_entropy[mask], atol=1e-4)
    assert torch.allclose(ref[mask], full_ref[mask], atol=1e-5)
    assert (full[mask] - token_logprobs(stage.completion_logits(stage.model, rollout), rollout.completion_ids)[mask]
            ).abs().max() > 1e-2  # the temperature matters here: scoring at 1 would be caught
    assert any(".visual." in n for n in grads) and any("lora_" in n for n in grads)
    assert grads.keys() == full_grads.keys()
    for name, g in full_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-5 * float(g.abs().max()) + 1e-12), name


def test_no_vocabulary_sized_tensor_beyond_one_chunk_in_forward_or_backward(standin_stage):
    stage, rollout = standin_stage
    vocab = stage.model.get_base_model().lm_head.out_features
    n_tokens = int(rollout.completion_mask.numel())

    def largest_and_kept(chunk_mib):
        """(largest vocabulary-sized tensor made, vocabulary-sized elements kept for the backward)"""
        stage.hparams.logprob_chunk_mib = chunk_mib
        kept = []

        def pack(t):
            if t.dim() >= 1 and t.shape[-1] == vocab:
                kept.append(t.numel())
            return t

        with LargestVocabTensor(vocab) as seen, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp, _ = stage.completion_logprobs(stage.model, rollout, with_entropy=True)
        (logp * rollout.completion_mask).sum().backward()
        return seen.largest, sum(kept)

    assert largest_and_kept(3.0) == (5 * vocab, 0)  # one chunk at a time; nothing of size V kept for the backward
    largest, kept = largest_and_kept(0)
    assert largest >= n_tokens * vocab and kept >= n_tokens * vocab  # the full-logits path: (n, T, V), kept


def test_a_bias_the_defaults_and_an_empty_mask():
    """An LM head with a bias scores with it; by default the temperature is 1 and no entropy is computed (zeros);
    a mask that keeps no position gives (n, T) zeros for both."""
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(N, T, H), torch.randn(V, H), 3 * torch.randn(V)
    tokens = torch.randint(0, V, (N, T))
    logp, entropy = chunked_token_logprobs(hidden, weight, tokens, chunk_rows=4, bias=bias)
    assert torch.allclose(logp, token_logprobs(hidden @ weight.T + bias, tokens), atol=1e-5)
    assert not torch.allclose(logp, token_logprobs(hidden @ weight.T, tokens), atol=1e-2)
    assert torch.equal(entropy, torch.zeros(N, T))
    none = torch.zeros(N, T, dtype=torch.bool)
    for out in chunked_token_logprobs(hidden, weight, tokens, none, with_entropy=True):
        assert out.shape == (N, T) and not out.any()
