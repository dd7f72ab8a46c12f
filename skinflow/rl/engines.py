"""Rollout engines: the one seam through which a GRPO stage obtains its sampled completions.

A stage calls ``engine.sample(model, prompts, sampling)`` and gets raw token ids back; it cuts them at the first
stop id, pads after it and decodes them itself (``skinflow.rl.rollout``), then scores them with its own forward.
An engine must therefore return, for B prompts (left-padded ids, mask, the images' patch rows and grids):

- ``tokens`` (B*G, T) long, T <= ``max_new_tokens``: the G completions of prompt b in rows b*G .. b*G + G - 1
  (image-major); the prompt itself not included; anything after a row's first id in ``eos_ids`` is ignored;
- drawn from exactly the distribution the scorer computes: softmax(logits / temperature) over the whole vocabulary
  with the ``suppressed`` ids at -inf, top-p as given, no top-k, no repetition penalty, nothing from the checkpoint's
  generation config (``skinflow.models.generation``); greedy when ``do_sample`` is False;
- ``scores`` (B*G, T, V), the processed logits each token was drawn from, only when asked (the fidelity check).

Engines here: ``hf`` (transformers ``generate`` with a dynamic KV cache; the default) and ``compiled`` (the same
``generate`` with a fixed-size static KV cache and a ``torch.compile``d one-token decode step; the prefill, the
vision tower, the DVE and the 3-D positions run eagerly as in ``hf``). ``docs/stages.md`` ("Rollout engines") says
what an external engine (vLLM, SGLang) would add: weight synchronisation and image embeddings.

``rollout_engine`` in a stage's config is a name registered here (``register_engine``) or ``"module:Class"``,
imported on use, so an engine can live outside the kit. Plain PyTorch / transformers code: no Lightning import.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from skinflow.errors import ConfigError
from skinflow.rl.rollout import repeat_images


@dataclass
class Sampling:
    """What the stage asks an engine for (see the module docstring for the contract)."""

    group_size: int  # G completions per prompt
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    suppressed: tuple[int, ...] = ()  # never drawn (the image/video placeholders)

    def token_kwargs(self) -> dict:
        """The ``generate`` arguments every call passes, sampled or greedy: length, stop and pad ids, suppressed ids."""
        return {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.pad_id, "eos_token_id": list(self.eos_ids),
                "suppress_tokens": list(self.suppressed)}

    def generate_kwargs(self) -> dict:
        """transformers ``generate`` arguments for this distribution (top-k 0: no top-k)."""
        kwargs = {"do_sample": self.do_sample, **self.token_kwargs()}
        if self.do_sample:  # greedy refuses num_return_sequences: ``Prompts.repeated`` expands the prompts instead
            kwargs.update(num_return_sequences=self.group_size, temperature=self.temperature, top_p=self.top_p, top_k=0)
        return kwargs


@dataclass
class Prompts:
    """B left-padded prompts with their images, as the collator gives them."""

    ids: torch.Tensor  # (B, Lp)
    mask: torch.Tensor  # (B, Lp)
    pixel_values: torch.Tensor  # (sum_b patches_b, D)
    image_grid_thw: torch.Tensor  # (B, 3)
    image_token_id: int

    def repeated(self, group: int) -> "Prompts":
        """Each prompt and its image ``group`` times, image-major (what ``num_return_sequences`` does inside
        ``generate``)."""
        pixels, grid = repeat_images(self.pixel_values, self.image_grid_thw, group)
        return Prompts(self.ids.repeat_interleave(group, 0), self.mask.repeat_interleave(group, 0), pixels, grid,
                       self.image_token_id)

    def model_inputs(self) -> dict:
        """Keyword arguments of Qwen2.5-VL's ``generate`` (``mm_token_type_ids``: 3-D rotary positions from the grid)."""
        return {"input_ids": self.ids, "attention_mask": self.mask, "pixel_values": self.pixel_values,
                "image_grid_thw": self.image_grid_thw, "mm_token_type_ids": (self.ids == self.image_token_id).int()}


@dataclass
class EngineOutput:
    tokens: torch.Tensor  # (B*G, T) raw sampled ids, image-major
    scores: torch.Tensor | None = None  # (B*G, T, V) processed logits, when asked


class HFEngine:
    """transformers ``generate``: eager, dynamic KV cache. ``num_return_sequences=G`` encodes each image once."""

    def sample(self, model: torch.nn.Module, prompts: Prompts, sampling: Sampling, return_scores: bool = False) -> EngineOutput:
        return self._generate(model, prompts, sampling, return_scores)

    @staticmethod
    def _generate(model, prompts: Prompts, sampling: Sampling, return_scores: bool, **extra) -> EngineOutput:
        if not sampling.do_sample and sampling.group_size > 1:
            prompts = prompts.repeated(sampling.group_size)
        out = model.generate(**prompts.model_inputs(), **sampling.generate_kwargs(), **extra,
                             output_scores=return_scores, return_dict_in_generate=True)
        tokens = out.sequences[:, prompts.ids.shape[1]:]
        return EngineOutput(tokens, torch.stack(out.scores, 1) if return_scores else None)


def pad_to_bucket(prompts: Prompts, bucket: int, pad_id: int) -> Prompts:
    """Left-pad the prompts to the next multiple of ``bucket`` tokens, so that prompts of any length within a bucket
    give the static cache, and the compiled decode step, one shape.

    >>> p = pad_to_bucket(Prompts(torch.tensor([[7, 8, 9]]), torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 2),
    ...                           torch.ones(1, 3, dtype=torch.long), 5), bucket=4, pad_id=0)
    >>> p.ids.tolist(), p.mask.tolist()
    ([[0, 7, 8, 9]], [[0, 1, 1, 1]])
    """
    length = prompts.ids.shape[1]
    extra = math.ceil(length / bucket) * bucket - length
    if not extra:
        return prompts
    ids = torch.nn.functional.pad(prompts.ids, (extra, 0), value=pad_id)
    mask = torch.nn.functional.pad(prompts.mask, (extra, 0), value=0)
    return Prompts(ids, mask, prompts.pixel_values, prompts.image_grid_thw, prompts.image_token_id)


class CompiledEngine(HFEngine):
    """``generate`` with a static KV cache of fixed size and a compiled one-token decode step.

    The prompt is left-padded to a multiple of ``bucket`` tokens; the cache then holds bucketed prompt + max_new_tokens,
    and the decode step sees one shape per (sequences, bucket) pair. It compiles on the first rollout of each pair
    and again only when one of them changes (a smaller last batch, a prompt past the bucket); ``dynamic=False`` keeps
    it from switching to dynamic-shape kernels, and past torch's recompile limit (8 shapes) dynamo falls back to
    eager. ``mode``: ``reduce-overhead`` (CUDA graphs) on CUDA, ``default`` elsewhere when None. Sampling runs outside
    the compiled step, through the same logits processors as ``hf``.
    """

    def __init__(self, bucket: int = 64, mode: str | None = None):
        if bucket < 1:
            raise ConfigError(f"compiled rollout engine: bucket={bucket} must be at least 1")
        self.bucket, self.mode = bucket, mode

    def sample(self, model: torch.nn.Module, prompts: Prompts, sampling: Sampling, return_scores: bool = False) -> EngineOutput:
        from transformers import CompileConfig

        device = prompts.ids.device
        config = CompileConfig(fullgraph=False, dynamic=False,
                               mode=self.mode or ("reduce-overhead" if device.type == "cuda" else "default"))
        config._compile_all_devices = True  # transformers compiles only on accelerators unless told
        padded = pad_to_bucket(prompts, self.bucket, sampling.pad_id)
        return self._generate(model, padded, sampling, return_scores, cache_implementation="static", compile_config=config)


ENGINES: dict[str, Callable[..., object]] = {"hf": HFEngine, "compiled": CompiledEngine}


def register_engine(name: str, factory: Callable[..., object]) -> None:
    """Make ``rollout_engine: <name>`` build ``factory(**rollout_options)`` (an object with ``sample``)."""
    ENGINES[name] = factory


def build_engine(name: str, options: dict | None = None):
    """The engine a stage's ``rollout_engine`` names, a registered name or ``"module:Class"``, built with the stage's
    ``rollout_options``; one clear error naming the setting otherwise."""
    options = dict(options or {})
    if name in ENGINES:
        factory = ENGINES[name]
    elif ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"rollout_engine={name!r} could not be imported ({type(err).__name__}: {err})") from err
    else:
        raise ConfigError(f"rollout_engine={name!r} is not one of {sorted(ENGINES)} nor a 'module:Class' path")
    try:
        engine = factory(**options)
    except TypeError as err:
        raise ConfigError(f"rollout_options={options} do not fit rollout_engine={name!r}: {err}") from err
    if not callable(getattr(engine, "sample", None)):
        raise ConfigError(f"rollout_engine={name!r} has no sample(model, prompts, sampling, return_scores) method")
    return engine
