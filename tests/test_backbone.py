import pytest
import torch

from skinflow.models.backbone import BackboneSpec, LoRASpec, build_backbone, build_model, count_parameters
from skinflow.models.dve import DVESpec


def batch_for(processor, n=2, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(n)]
    vision = processor.images(images)
    prompt = processor.chat_prompt("Describe the lesion.")
    tok = processor.tokenizer
    ids = [tok(processor.expand_image_tokens(prompt, g), add_special_tokens=False)["input_ids"] for g in vision["image_grid_thw"]]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), len(ids[0]), dtype=torch.long), **vision}


def test_tiny_builds_forwards_and_generates(tiny):
    model, processor = tiny
    assert count_parameters(model) < 3_000_000
    batch = batch_for(processor)
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, len(processor.tokenizer))
    gen = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert gen.shape == (2, batch["input_ids"].shape[1] + 5)


def test_tiny_rotary_positions_resolve_the_image_grid(tiny):
    """Both image axes of the tiny preset's 3-D positions turn by a usable angle across its smallest image grid
    (112 px: 4 merged tokens a side); at theta 10,000 the width axis turned 0.01 rad and the warmup lost 0.15 top-1."""
    from skinflow.models.backbone import mrope_axis_span

    span = mrope_axis_span(tiny[0].config, side=4)
    assert min(span.values()) > 0.3, span


def test_tiny_patch_size_sets_the_tower_and_the_processor_grid_alike():
    """``tiny.patch_size`` 7 cuts a 112-px image into 16 x 16 patches (8 x 8 merged tokens in the prompt), in the
    tower and in the processor that the stage and the DataModule share, and the model runs on what it gets."""
    from skinflow.models.backbone import TinySize

    model, processor = build_backbone(BackboneSpec(tiny=TinySize(patch_size=7)))
    assert model.config.vision_config.patch_size == 7
    batch = batch_for(processor, n=1)
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert batch["pixel_values"].shape == (256, 3 * 2 * 7 * 7)
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 64
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape
    _, default = build_backbone(BackboneSpec())
    assert batch_for(default, n=1)["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_same_seed_same_weights():
    a, _ = build_backbone(BackboneSpec(seed=1))
    b, _ = build_backbone(BackboneSpec(seed=1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_lora_adapters_move_and_base_stays_frozen():
    model, processor = build_backbone(BackboneSpec(lora=LoRASpec(r=4)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = batch_for(processor)
    for _ in range(2):
        loss = model(**batch, labels=batch["input_ids"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, param in model.named_parameters():
        moved = not torch.equal(before[name], param)
        assert moved == (name in trainable and "lora_B" in name) or (name in trainable and "lora_A" in name), name


def test_freeze_vision():
    model, _ = build_backbone(BackboneSpec(freeze_vision=True))
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())


def test_7b_builds_on_meta_without_download():
    model = build_model(BackboneSpec(preset="qwen2.5-vl-7b", pretrained_path="Qwen/Qwen2.5-VL-7B-Instruct"), device="meta")
    assert 8.2e9 < count_parameters(model) < 8.4e9
    assert model.config.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
    assert next(model.parameters()).device.type == "meta"


def test_random_init_builds_under_the_ambient_device_with_lora_and_dve():
    """``benchmarks/gpu_scale.py`` builds the 7B shape inside ``with torch.device("cuda")``; meta stands in here."""
    spec = BackboneSpec(lora=LoRASpec(r=4), dve=DVESpec(enabled=True))
    with torch.device("meta"):
        model, _ = build_backbone(spec)
    devices = {p.device.type for p in model.parameters()}
    assert devices == {"meta"}
    assert any("lora_A" in n for n, p in model.named_parameters() if p.requires_grad)


def test_non_tiny_preset_refuses_random_weights_unless_asked():
    with pytest.raises(ValueError, match="random_init"):
        build_model(BackboneSpec(preset="qwen2.5-vl-3b"))


def test_local_folder_round_trip(tmp_path, tiny):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.tokenizer.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)
    loaded, loaded_processor = build_backbone(BackboneSpec(pretrained_path=str(tmp_path)))
    batch = batch_for(processor)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, loaded(**batch).logits, atol=1e-6)
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_missing_hub_id_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="no-such-org/no-such-model"):
        build_model(BackboneSpec(preset="qwen2.5-vl-7b", pretrained_path="no-such-org/no-such-model"))


def test_tiny_tokenizer_is_rebuilt_identically(tmp_path):
    from skinflow.models.tiny_tokenizer import ASSET_DIR, build

    build(tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == (ASSET_DIR / "tokenizer.json").read_text()


def test_tokenizer_round_trips_any_text(tiny):
    tok = tiny[1].tokenizer
    text = "<caption>\ncolour: ünusual teal\n</caption>\n<answer>\n1. psoriasis\n</answer> 🙂"
    assert tok.decode(tok(text)["input_ids"]) == text
