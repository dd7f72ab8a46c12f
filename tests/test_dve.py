import pytest
import torch

from skinflow.models.backbone import BackboneSpec, LoRASpec, build_backbone
from skinflow.models.dve import DVESpec, dve_parameter_count, vision_tower
from skinflow.models.fdlinear import FDLinear
from tests.test_backbone import batch_for


def test_dve_replaces_full_attention_blocks_and_keeps_logits_at_init(tiny):
    base, processor = tiny
    dve, _ = build_backbone(BackboneSpec(dve=DVESpec(enabled=True, num_groups=8)))
    visual = vision_tower(dve)
    replaced = [i for i, block in enumerate(visual.blocks) if isinstance(block.mlp.gate_proj, FDLinear)]
    assert replaced == list(visual.config.fullatt_block_indexes) == [1, 3]
    assert all(isinstance(getattr(visual.blocks[1].mlp, n), FDLinear) for n in ("gate_proj", "up_proj", "down_proj"))
    batch = batch_for(processor, n=3)
    with torch.no_grad():
        assert torch.allclose(base(**batch).logits, dve(**batch).logits, atol=1e-4)
    out = dve.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4


def test_images_get_their_own_boundaries_inside_the_tower():
    model, processor = build_backbone(BackboneSpec(dve=DVESpec(enabled=True, blocks=[0], linears=["up_proj"], num_groups=4)))
    batch = batch_for(processor, n=3)
    model(**batch)
    layer = vision_tower(model).blocks[0].mlp.up_proj
    assert layer.cu_seqlens.tolist() == [0, 64, 128, 192]


def test_an_image_is_encoded_the_same_alone_or_with_others():
    model, processor = build_backbone(BackboneSpec(dve=DVESpec(enabled=True, num_groups=4)))
    visual = vision_tower(model)
    with torch.no_grad():
        for layer in visual.modules():
            if isinstance(layer, FDLinear):
                layer.to_groups.weight.normal_(0, 1.0)
                layer.to_out.weight.normal_(0, 1.0)
    batch = batch_for(processor, n=3)
    together = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    alone = visual(batch["pixel_values"][64:128], grid_thw=batch["image_grid_thw"][1:2]).pooler_output
    assert torch.allclose(together[16:32], alone, atol=1e-5)


def test_dve_with_lora_trains_heads_and_adapters_only():
    model, _ = build_backbone(BackboneSpec(lora=LoRASpec(r=2), dve=DVESpec(enabled=True, num_groups=4)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert any(n.endswith("to_groups.weight") for n in trainable)
    assert not any(n.endswith("spectrum") for n in trainable)
    assert all("lora_" in n or ".mlp." in n for n in trainable)


def test_dve_state_survives_a_checkpoint(tmp_path):
    from skinflow.stages.warmup import WarmupStage

    spec = BackboneSpec(dve=DVESpec(enabled=True, num_groups=4))
    stage = WarmupStage(backbone=spec)
    with torch.no_grad():
        for layer in stage.modules():
            if isinstance(layer, FDLinear):
                layer.to_in.weight.normal_()
    checkpoint = {}
    stage.on_save_checkpoint(checkpoint)
    assert any("to_in" in k for k in checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "dve.ckpt")
    restored = WarmupStage(backbone=spec, init_from=str(tmp_path / "dve.ckpt"))
    batch = batch_for(restored.processor)
    with torch.no_grad():
        assert torch.equal(stage.model(**batch).logits, restored.model(**batch).logits)
    from skinflow.stages.base import CheckpointMismatch

    with pytest.raises(CheckpointMismatch):
        WarmupStage(init_from=str(tmp_path / "dve.ckpt"))  # same tiny model without DVE


def test_7b_default_overhead_is_under_two_percent():
    from skinflow.models.backbone import preset_config

    vision = preset_config(BackboneSpec(preset="qwen2.5-vl-7b")).vision_config
    spec = DVESpec(enabled=True)
    added = dve_parameter_count(spec, vision)
    with torch.device("meta"):
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(vision)
    total = sum(p.numel() for p in tower.parameters())
    assert 0 < added / total < 0.02


def test_parameter_count_from_shapes_matches_the_tiny_model(tiny):
    base = sum(p.numel() for p in vision_tower(tiny[0]).parameters())
    spec = DVESpec(enabled=True, num_groups=8)
    model, _ = build_backbone(BackboneSpec(dve=spec))
    assert sum(p.numel() for p in vision_tower(model).parameters()) - base == dve_parameter_count(spec, vision_tower(model).config)


def test_bad_dve_settings_fail_clearly():
    with pytest.raises(ValueError, match="outside the vision tower"):
        build_backbone(BackboneSpec(dve=DVESpec(enabled=True, blocks=[99])))
    with pytest.raises(ValueError, match="not vision MLP linears"):
        build_backbone(BackboneSpec(dve=DVESpec(enabled=True, linears=["qkv"])))
