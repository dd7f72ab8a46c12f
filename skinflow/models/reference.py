"""The GRPO reference policy as a frozen snapshot of the trainable weights, and RL without dropout.

The reference of a stage is its starting policy: the base model plus whatever the previous stage trained
(LoRA adapters, DVE heads) or, under full training, all the weights as the stage starts. ``snapshot_trainable``
copies the trainable parameters once, when the stage is built and ``init_from`` has been loaded, before Lightning
restores a checkpoint being resumed, so a resumed run keeps the reference of the uninterrupted run. The
snapshot is not part of the checkpoint (a 7B LoRA checkpoint stays adapter-sized); a resume rebuilds it from
the same ``init_from``. ``swapped_parameters`` lends the snapshot's tensors to the live parameters for one
no-grad forward (pointer swaps, no copies), so one model computes both policies. Under FSDP2 the snapshot is
retaken after sharding (``GRPOStage.after_sharding``): each rank holds its shard of the reference, and the swap
copies it into the shard FSDP2 gathers from (and back), since FSDP2 ignores a pointer swap.

``disable_dropout``: GRPO scores completions in train mode (gradient checkpointing needs it) while it samples
them in eval mode, so dropout would make the scored distribution differ from the sampled one (LoRA dropout 0.05
moved trained-adapter log-probabilities by up to 2.48 nats). The RL stages therefore run without dropout, as TRL's
``disable_dropout`` does; the supervised warmup keeps its configured dropout.

Plain ``nn.Module`` code: no Lightning import here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def snapshot_trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of ``module``'s trainable parameters, by name."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


@contextmanager
def swapped_parameters(module: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Inside the block, the parameters named in ``weights`` hold those tensors (moved to the parameter's device
    and dtype once, in place in ``weights``); outside it, their own. Use under ``torch.no_grad()``."""
    params = dict(module.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise KeyError(f"reference weights name parameters the model lacks, e.g. {unknown[:3]} (was the model wrapped "
                       "or sharded after the snapshot was taken?)")
    own, copied = {}, {}
    try:
        for name, tensor in weights.items():
            param = params[name]
            if isinstance(param, DTensor):  # FSDP2 gathers from the shard's own storage: copy into it, in place
                shard = param._local_tensor
                copied[name] = shard.clone()
                shard.copy_(tensor._local_tensor if isinstance(tensor, DTensor) else tensor)
                continue
            if tensor.device != param.device or tensor.dtype != param.dtype:
                weights[name] = tensor = tensor.to(param.device, param.dtype)
            own[name], param.data = param.data, tensor
        yield module
    finally:
        for name, data in own.items():
            params[name].data = data
        for name, data in copied.items():
            params[name]._local_tensor.copy_(data)


def disable_dropout(module: nn.Module) -> int:
    """Set every dropout probability in ``module`` to 0 (``nn.Dropout`` layers, LoRA's included, and attention
    dropout rates held as attributes); returns how many were non-zero."""
    changed = 0
    for layer in module.modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd):
            changed += layer.p > 0
            layer.p = 0.0
        rate = getattr(layer, "attention_dropout", None)
        if isinstance(rate, float):
            changed += rate > 0
            layer.attention_dropout = 0.0
    return changed
