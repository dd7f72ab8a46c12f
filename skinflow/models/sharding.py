"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the Qwen2.5-VL backbone: how it is cut into units, how the
stage's own computations run as forwards of the sharded root, and how the GRPO reference stays sharded.

Units: each language decoder layer and each vision block (DVE's FDLinear layers live inside the blocks) is one
``fully_shard`` unit, then the root (the PEFT wrapper, or the bare model under full training) takes what is left:
embeddings, the final norm, the LM head, the vision patch embedding and merger. Frozen and trainable parameters
share units (LoRA's adapters sit beside their frozen base weights); FSDP2 reduces gradients only for the trainable.

FSDP2 all-gathers a unit's parameters in that unit's ``forward``. The stages call more than ``forward`` on the
root: ``generate``, the inner decoder for hidden states, the LM head's weight for chunked log-probabilities
(``skinflow.rl.logprobs``) and the vision tower's ``get_image_features``. So ``shard_backbone`` registers
``generate`` and one generic method, ``skinflow_forward(fn, *args)``, as forward methods of the root
(``register_fsdp_forward_method``): inside them the root's parameters are whole, and the units below gather their
own as they run. ``root_forward(model, fn, *args)`` calls ``fn`` that way on a sharded model and directly otherwise.

Generation on several ranks must step in lock-step (every decode step all-gathers): ``fully_shard`` marks each
module it manages ``_is_fsdp_managed_module``, which transformers' ``generate`` reads to turn on ``synced_gpus``
(a rank whose completions have all ended keeps stepping until every rank's have); tests/test_sharding.py checks
ranks that finish at different steps.

Plain PyTorch / transformers code: no Lightning import here (``skinflow.stages.fsdp`` is the Lightning strategy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from skinflow.models.unwrap import bare_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ShardingSpec:
    """How ``fully_shard`` runs: the dtype units compute in (parameters are all-gathered in it), the dtype gradients
    are reduced in (``None``: the parameters' own dtype, for both), and whether a unit frees its gathered
    parameters after its forward (``False``: faster backward, more memory, like ZeRO-2)."""

    param_dtype: str | None = None
    reduce_dtype: str | None = None
    reshard_after_forward: bool = True

    def mixed_precision(self):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        from skinflow.errors import ConfigError

        dtypes = {}
        for key in ("param_dtype", "reduce_dtype"):
            value = getattr(self, key)
            if value is not None and value not in DTYPES:
                raise ConfigError(f"{key}={value!r} is not one of {sorted(DTYPES)} (or null: the parameters' own)")
            dtypes[key] = None if value is None else DTYPES[value]
        return MixedPrecisionPolicy(**dtypes)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become their own ``fully_shard`` units, innermost first: each vision block, then each
    language decoder layer of the (PEFT-wrapped or bare) Qwen2.5-VL model."""
    core = bare_model(model).model
    return [*core.visual.blocks, *core.language_model.layers]


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_backbone(model: nn.Module, mesh, spec: ShardingSpec | None = None) -> nn.Module:
    """Shard ``model`` in place over ``mesh`` (a 1-D data-parallel ``DeviceMesh``): the units of ``shard_units``,
    then the root; registers ``generate`` and ``skinflow_forward`` as forward methods of the root. Returns it."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    spec = spec or ShardingSpec()
    policy = spec.mixed_precision()
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=spec.reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=spec.reshard_after_forward)
    model.skinflow_forward = _call  # an instance attribute: the bound wrapper below replaces it
    register_fsdp_forward_method(model, "skinflow_forward")
    register_fsdp_forward_method(model, "generate")
    return model


def _call(fn: Callable, *args, **kwargs):
    """``fn``'s result with any tensor view copied: FSDP2 hooks the root's outputs for the backward, and warns that an
    in-place op on a view would drop that hook (the outputs here are (n, T) log-probabilities: copies are cheap)."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) and t._base is not None else t, fn(*args, **kwargs))


def root_forward(model: nn.Module, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``, as a forward of ``model``'s FSDP2 root when it is sharded (its parameters gathered
    for the call, its gradients reduced after the backward), directly otherwise."""
    if is_sharded(model):
        return model.skinflow_forward(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def local_view(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a ``DTensor`` (the storage FSDP2 gathers from), or ``tensor`` itself."""
    from torch.distributed.tensor import DTensor

    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor
