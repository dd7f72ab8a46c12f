import pytest
import torch

from skinflow.data.datamodule import Fitzpatrick17kDataModule
from skinflow.data.ontology import ONTOLOGY
from skinflow.models.backbone import BackboneSpec, LoRASpec, TinySize
from skinflow.stages.base import CheckpointMismatch, weighted_token_loss
from skinflow.stages.warmup import WarmupStage


@pytest.fixture(scope="module")
def batch(synth_dir, tiny, tmp_path_factory):
    dm = Fitzpatrick17kDataModule(csv_path=str(synth_dir / "labels.csv"), cache_dir=str(tmp_path_factory.mktemp("c")),
                                  progress=False, batch_size=3, augment=False)
    dm.processor = tiny[1]
    dm.setup()
    return next(iter(dm.val_dataloader()))


def test_content_mask_marks_values_not_format(batch, tiny):
    tok = tiny[1].tokenizer
    row_ids, row_mask = batch["input_ids"][0], batch["content_mask"][0]
    content = tok.decode(row_ids[row_mask])
    fmt = tok.decode(row_ids[(batch["labels"][0] != -100) & ~row_mask])
    target = batch["targets"][0]
    assert target.caption["colour"] in content and target.label in content
    assert "colour" not in content and "<answer>" not in content
    assert "colour:" in fmt and "<answer>" in fmt and target.label not in fmt


def test_weighted_loss_with_unit_weight_equals_the_model_loss(batch, tiny):
    model = tiny[0]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    with torch.no_grad():
        out = model(**inputs, labels=batch["labels"])
        ours = weighted_token_loss(out.logits, batch["labels"], batch["content_mask"], 1.0)
        heavier = weighted_token_loss(out.logits, batch["labels"], batch["content_mask"], 10.0)
    assert torch.allclose(ours, out.loss, atol=1e-5)
    assert not torch.allclose(heavier, ours)


def test_teacher_forced_loss_on_the_target_window_equals_the_full_logits_loss(batch):
    """The stage runs the LM head on the trailing target window only; the loss is that of the full logits."""
    torch.manual_seed(0)
    stage = WarmupStage()  # full training: the LM head's weight gets a gradient too
    inputs = stage.model_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])

    def loss_and_grads(loss_fn):
        stage.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}

    full, g_full = loss_and_grads(lambda: weighted_token_loss(stage.model(**inputs).logits, batch["labels"],
                                                              batch["content_mask"], 10.0))
    windowed, g_windowed = loss_and_grads(lambda: stage.teacher_forced_loss(batch, 10.0))
    lengths = (batch["labels"] != -100).sum(1)
    assert lengths.min() < lengths.max()  # targets of different lengths: the window is the longest one's
    assert torch.allclose(windowed, full, atol=1e-6)
    assert g_full.keys() == g_windowed.keys() and any("lm_head" in n or "embed_tokens" in n for n in g_full)
    for name, g in g_full.items():
        assert torch.allclose(g_windowed[name], g, atol=1e-5 * float(g.abs().max()) + 1e-9), name


def test_weighted_loss_matches_a_plain_loop():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    content = torch.rand(2, 5) > 0.5
    total = weight_sum = 0.0
    for b in range(2):
        for t in range(1, 5):
            if labels[b, t] == -100:
                continue
            w = 3.0 if content[b, t] else 1.0
            total += w * -torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]].item()
            weight_sum += w
    assert weighted_token_loss(logits, labels, content, 3.0).item() == pytest.approx(total / weight_sum, rel=1e-5)


def test_checkpoint_holds_only_trainable_weights_and_identity():
    stage = WarmupStage(backbone=BackboneSpec(lora=LoRASpec(r=2)))
    checkpoint = {}
    stage.on_save_checkpoint(checkpoint)
    trainable = {n: p for n, p in stage.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == set(trainable)
    stored = sum(t.numel() * t.element_size() for t in checkpoint["state_dict"].values())
    assert stored < 2 * sum(p.numel() * p.element_size() for p in trainable.values())
    assert checkpoint["backbone_identity"]["preset"] == "tiny"


def test_init_from_restores_trainable_weights(tmp_path):
    source = WarmupStage(backbone=BackboneSpec(lora=LoRASpec(r=2)))
    with torch.no_grad():
        for name, p in source.named_parameters():
            if p.requires_grad:
                p.add_(0.5)
    checkpoint = {}
    source.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "a.ckpt")
    fresh = WarmupStage(backbone=BackboneSpec(lora=LoRASpec(r=2)), init_from=str(tmp_path / "a.ckpt"))
    for (name, p), q in zip(source.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name


def test_mismatched_backbone_is_refused_naming_both(tmp_path):
    source = WarmupStage(backbone=BackboneSpec(tiny=TinySize(text_layers=1)))
    checkpoint = {}
    source.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "b.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"b\.ckpt.*preset='tiny'.*config=\w+.*this stage's backbone is preset='tiny'"):
        WarmupStage(init_from=str(tmp_path / "b.ckpt"))


def test_an_unreadable_init_from_fails_naming_the_file(tmp_path):
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(CheckpointMismatch, match=r"damaged\.ckpt could not be read"):
        WarmupStage(init_from=str(damaged))
    with pytest.raises(CheckpointMismatch, match=r"nowhere\.ckpt not found"):
        WarmupStage(init_from=str(tmp_path / "nowhere.ckpt"))
    torch.save({"weights": 1}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"other\.ckpt is not a skinflow stage checkpoint"):
        WarmupStage(init_from=str(tmp_path / "other.ckpt"))


def test_synth_refuses_an_empty_set(tmp_path, capsys):
    from skinflow.cli import main

    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "s"), "--per-class", "0"])
    assert "--per-class 0: at least 1 image per class" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_learning_rate_warms_up_then_decays_to_its_floor_at_the_last_step():
    """The warmup stage's schedule over the trainer's stepping batches: linear warmup, cosine to min_lr_ratio."""
    from types import SimpleNamespace

    stage = WarmupStage(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1)
    stage._trainer = SimpleNamespace(estimated_stepping_batches=10)
    config = stage.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(11):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen[:3] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert seen[6] == pytest.approx(5.5e-4) and seen[10] == pytest.approx(1e-4)  # half way down; the floor
    assert all(a >= b for a, b in zip(seen[2:], seen[3:]))


def test_the_label_head_trains_the_vision_tower_directly_and_shares_its_pass(batch):
    """With ``label_loss_weight``: the text loss on features computed once equals the usual one (one tower pass feeds
    both losses), and the label loss alone sends gradient into the vision tower and the head (nothing else)."""
    torch.manual_seed(0)
    stage = WarmupStage(BackboneSpec(), content_weight=10.0, label_loss_weight=0.5)
    assert stage.label_head.out_features == len(ONTOLOGY)
    features = stage.encode_images(stage.model, batch["pixel_values"], batch["image_grid_thw"])
    shared = stage.teacher_forced_loss(batch, 10.0, features)
    assert shared.item() == pytest.approx(stage.teacher_forced_loss(batch, 10.0).item(), rel=1e-6)
    stage.label_loss(features, batch["targets"]).backward()
    grads = {n: p.grad for n, p in stage.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".visual." in n for n in grads) and "label_head.weight" in grads
    assert all(".visual." in n or n.startswith("label_head.") for n in grads)
    with pytest.raises(ValueError, match="label_loss_weight=-1"):
        WarmupStage(BackboneSpec(), label_loss_weight=-1)
    assert WarmupStage(BackboneSpec()).label_head is None


def test_without_text_loss_into_vision_only_the_label_head_trains_the_tower(batch):
    """``text_loss_trains_vision=False``: the vision tower's gradient is the label loss's alone (times its weight),
    while the language model still learns from the text; with the default the text loss reaches the tower too."""
    def grads(stage, loss):
        stage.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}

    torch.manual_seed(0)
    stage = WarmupStage(BackboneSpec(), content_weight=10.0, label_loss_weight=0.5, text_loss_trains_vision=False)
    features = stage.encode_images(stage.model, batch["pixel_values"], batch["image_grid_thw"])
    label_only = grads(stage, 0.5 * stage.label_loss(features, batch["targets"]))
    loss, label_loss = stage.training_loss(batch)
    both = grads(stage, loss)
    text = stage.teacher_forced_loss(batch, 10.0).item() + 0.5 * label_loss.item()
    assert loss.item() == pytest.approx(text, rel=1e-6)  # the loss's value is the same; only its gradient stops
    visual = [n for n in label_only if ".visual." in n and label_only[n].abs().sum() > 0]
    assert visual and all(torch.allclose(both[n], label_only[n], atol=1e-7) for n in visual)
    assert any(".visual." not in n and not n.startswith("label_head.") and g.abs().sum() > 0 for n, g in both.items())
    stage.hparams.text_loss_trains_vision = True
    with_text = grads(stage, stage.training_loss(batch)[0])
    assert not all(torch.allclose(with_text[n], label_only[n], atol=1e-7) for n in visual)
    with pytest.raises(ValueError, match="text_loss_trains_vision=False"):
        WarmupStage(BackboneSpec(), text_loss_trains_vision=False)


def test_label_smoothing_spreads_the_label_heads_target_over_every_label(batch):
    """``label_smoothing`` e: the loss is (1 - e) of the gold label's -log p plus e of the mean -log p over all the
    ontology's labels; 0 is the plain cross-entropy."""
    torch.manual_seed(0)
    stage = WarmupStage(BackboneSpec(), label_loss_weight=1.0, label_smoothing=0.3)
    features = stage.encode_images(stage.model, batch["pixel_values"], batch["image_grid_thw"])
    with torch.no_grad():
        stage.label_head.weight.normal_(0, 1.0)  # far from uniform, so the two terms differ
        logp = torch.log_softmax(stage.label_head(torch.stack([f.mean(0) for f in features]).float()), -1)
        gold = torch.tensor([ONTOLOGY.index(t.label) for t in batch["targets"]])
        nll, spread = -logp[torch.arange(len(gold)), gold].mean(), -logp.mean()
        assert stage.label_loss(features, batch["targets"]).item() == pytest.approx((0.7 * nll + 0.3 * spread).item(), rel=1e-5)
        stage.hparams.label_smoothing = 0.0
        assert stage.label_loss(features, batch["targets"]).item() == pytest.approx(nll.item(), rel=1e-5)
        assert abs(nll.item() - spread.item()) > 0.1
    with pytest.raises(ValueError, match="label_smoothing=1"):
        WarmupStage(BackboneSpec(), label_smoothing=1)


def test_a_checkpoint_with_a_label_head_starts_later_stages_without_it(tmp_path):
    """The head is resumed with its warmup but left behind by Stage I/II, export and analyses; any other weight a
    stage lacks is still refused."""
    from skinflow.stages.base import SkinflowStage
    from skinflow.stages.grpo import GRPOStage

    warmup = WarmupStage(BackboneSpec(), label_loss_weight=1.0)
    checkpoint = {}
    warmup.on_save_checkpoint(checkpoint)
    assert {"label_head.weight", "label_head.bias"} <= set(checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "warmup.ckpt")
    resumed = WarmupStage(BackboneSpec(), label_loss_weight=1.0, init_from=str(tmp_path / "warmup.ckpt"))
    assert torch.equal(resumed.label_head.weight, warmup.label_head.weight)
    later = GRPOStage(init_from=str(tmp_path / "warmup.ckpt"))
    name = next(n for n in checkpoint["state_dict"] if ".visual." in n)
    assert torch.equal(later.state_dict()[name], checkpoint["state_dict"][name]) and not hasattr(later, "label_head")
    SkinflowStage(BackboneSpec()).load_checkpoint_weights(checkpoint, "warmup.ckpt")
    checkpoint["state_dict"]["stray.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch, match="stray.weight"):
        SkinflowStage(BackboneSpec()).load_checkpoint_weights(checkpoint, "warmup.ckpt")
