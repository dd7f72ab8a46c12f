"""Rollout engines (``skinflow.rl.engines``): the compiled engine (static KV cache, a compiled decode step, prompts
padded to buckets) samples what ``hf`` samples, its sampler and scorer agree on the stand-in checkout with LoRA
and the DVE, and it compiles once per (sequences, bucket); the seam takes engines from outside the kit."""

from dataclasses import replace

import pytest
import torch

from skinflow.errors import ConfigError
from skinflow.models.backbone import BackboneSpec, LoRASpec
from skinflow.models.dve import DVESpec
from skinflow.rl.engines import ENGINES, CompiledEngine, EngineOutput, HFEngine, Prompts, build_engine


def dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def compiled_stage(qwen_standin):
    """Stage II on the stand-in checkout (V = 151,936, its generation config neutralised), LoRA with dropout
    configured, DVE, adapters and heads moved off zero, a peaked distribution, the compiled engine (bucket 64)."""
    from skinflow.models.standin import mixed_prompt_batch
    from skinflow.stages.grpo import GRPOStage

    torch._dynamo.reset()
    torch.manual_seed(0)
    spec = BackboneSpec(preset="qwen2.5-vl-3b", pretrained_path=str(qwen_standin), lora=LoRASpec(r=4, dropout=0.05),
                        dve=DVESpec(enabled=True, num_groups=8))
    stage = GRPOStage(spec, group_size=2, max_new_tokens=8, temperature=1.3, rollout_engine="compiled",
                      rollout_options={"bucket": 64})
    with torch.no_grad():
        for p in stage.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
        stage.model.get_base_model().model.language_model.norm.weight.mul_(30.0)
    stage.train()
    return stage, mixed_prompt_batch(stage.processor)


def prompts(stage, batch) -> Prompts:
    return Prompts(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"], batch["image_grid_thw"],
                   stage.processor.image_token_id)


def test_compiled_greedy_tokens_equal_hf_and_sampler_equals_scorer(compiled_stage):
    stage, batch = compiled_stage
    assert isinstance(stage.engine, CompiledEngine) and batch["prompt_ids"].shape[1] % 64  # padding really added
    stage.eval()
    greedy = replace(stage.sampling(), do_sample=False)
    with torch.no_grad():
        compiled = stage.engine.sample(stage.model, prompts(stage, batch), greedy).tokens
        eager = HFEngine().sample(stage.model, prompts(stage, batch), greedy).tokens
    stage.train()
    assert dynamo_graphs() >= 1  # the decode step really was compiled
    assert compiled.shape == eager.shape == (6, 8) and torch.equal(compiled, eager)
    sampler, scorer, mask = stage.sampler_and_scorer_logprobs(batch)
    assert mask.sum() > 10
    assert (sampler[mask] - scorer[mask]).abs().max() < 1e-4
    real_sampling = stage.sampling
    stage.sampling = lambda: replace(real_sampling(), temperature=1.0)  # an engine drawing at another temperature
    try:
        sampler, scorer, mask = stage.sampler_and_scorer_logprobs(batch)
    finally:
        stage.sampling = real_sampling
    assert (sampler[mask] - scorer[mask]).abs().max() > 0.05  # ... is caught by the same check


def test_compiled_engine_compiles_once_per_bucket(compiled_stage):
    stage, batch = compiled_stage
    stage.rollout(batch)  # compiled for (6 sequences, this bucket)
    before = dynamo_graphs()
    pad = stage.processor.tokenizer.pad_token_id

    def left_padded(extra):
        return {**batch, "prompt_ids": torch.nn.functional.pad(batch["prompt_ids"], (extra, 0), value=pad),
                "prompt_mask": torch.nn.functional.pad(batch["prompt_mask"], (extra, 0))}

    length = batch["prompt_ids"].shape[1]
    room = -length % 64  # pad columns the bucket still has
    assert room > 1
    stage.rollout(left_padded(room - 1))  # a longer prompt in the same bucket: no new graph
    assert dynamo_graphs() == before
    stage.rollout(left_padded(room + 1))  # the next bucket: one more graph
    assert dynamo_graphs() > before


class Recorder:
    """An engine from outside the kit: records what it was asked and returns fixed tokens."""

    def __init__(self, token: int = 5):
        self.token, self.calls = token, []

    def sample(self, model, prompts, sampling, return_scores=False):
        self.calls.append(sampling)
        n = prompts.ids.shape[0] * sampling.group_size
        return EngineOutput(torch.full((n, 3), self.token, dtype=torch.long))


def test_an_engine_from_outside_the_kit_plugs_in_by_path_or_name(rollout_batch_tiny):
    from skinflow.stages.grpo import GRPOStage

    stage = GRPOStage(rollout_engine="tests.test_engines:Recorder", rollout_options={"token": 7}, group_size=3,
                      temperature=0.7, max_new_tokens=4)
    rollout = stage.rollout(rollout_batch_tiny)
    B = rollout_batch_tiny["prompt_ids"].shape[0]
    assert rollout.completion_ids.shape == (B * 3, 3) and (rollout.completion_ids == 7).all()
    asked = stage.engine.calls[0]
    assert (asked.group_size, asked.temperature, asked.max_new_tokens) == (3, 0.7, 4)
    assert set(asked.suppressed) == set(stage.processor.placeholder_token_ids) and asked.eos_ids
    ENGINES["recorder"] = Recorder
    try:
        assert isinstance(build_engine("recorder"), Recorder)
    finally:
        del ENGINES["recorder"]


@pytest.mark.parametrize("name, options, message", [
    ("vllm", None, "is not one of"), ("no_such_module:Engine", None, "could not be imported"),
    ("compiled", {"bucket": 0}, "bucket=0"), ("compiled", {"buckets": 8}, "do not fit"),
])
def test_bad_engine_settings_are_one_clear_error(name, options, message):
    with pytest.raises(ConfigError, match=message):
        build_engine(name, options)


@pytest.fixture(scope="module")
def rollout_batch_tiny():
    from skinflow.models.standin import mixed_prompt_batch
    from skinflow.models.backbone import build_backbone

    return mixed_prompt_batch(build_backbone(BackboneSpec())[1])
