"""One sampling distribution for sampler and scorer, whatever the checkpoint's ``generation_config.json`` says.

``generate`` merges the model's ``generation_config`` into every call: any field the call leaves unset is taken
from it. The public Qwen2.5-VL-Instruct files set ``repetition_penalty: 1.05`` (and near-greedy
``temperature 0.1, top_p 0.001, top_k 1``), so a sampler that overrides only temperature and top-p still draws
from a repetition-penalised distribution the GRPO scorer never computes (the PPO ratio, KL and entropy are then
wrong by about a nat per token). Rather than re-implement every logits processor in the scorer, the kit
neutralises them: ``neutral_generation_config`` keeps only the checkpoint's token ids (BOS, the EOS list, PAD),
so ``generate`` applies nothing but what the kit passes (temperature, top-p, top-k 0 and the suppressed
placeholders, exactly what ``GRPOStage.completion_logits`` scores with). Greedy evaluation is then the policy's
own argmax too. The checkpoint's file is kept as ``model.checkpoint_generation_config`` (``export`` writes it back
out unchanged).

Plain ``nn.Module`` code: no Lightning import here.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig


def as_id_list(ids) -> list[int]:
    """``None``, an int or a list of ints -> list."""
    if ids is None:
        return []
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


def stop_token_ids(checkpoint_config: GenerationConfig | None, tokenizer) -> list[int]:
    """The ids generation stops on: the tokenizer's EOS first, then every EOS id the checkpoint's generation config
    names (Qwen2.5-VL-Instruct: ``<|im_end|>`` 151645 and ``<|endoftext|>`` 151643).

    >>> from types import SimpleNamespace
    >>> stop_token_ids(GenerationConfig(eos_token_id=[5, 3]), SimpleNamespace(eos_token_id=3))
    [3, 5]
    """
    ids = as_id_list(tokenizer.eos_token_id)
    if checkpoint_config is not None:
        ids += [i for i in as_id_list(checkpoint_config.eos_token_id) if i not in ids]
    return ids


def neutral_generation_config(model: torch.nn.Module, tokenizer) -> None:
    """Replace ``model.generation_config`` by one that holds only token ids (its ``eos_token_id`` the stop ids);
    keep the checkpoint's as ``model.checkpoint_generation_config``."""
    checkpoint = getattr(model, "generation_config", None)
    model.checkpoint_generation_config = checkpoint
    model.generation_config = GenerationConfig(
        bos_token_id=getattr(checkpoint, "bos_token_id", None), eos_token_id=stop_token_ids(checkpoint, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
