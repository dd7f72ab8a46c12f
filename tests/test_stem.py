"""The tiny preset's convolutional stem (``backbone.tiny.stem: conv``): it sees the images the processor packed, in
the processor's patch order, one image independent of the others, and it is refused where it cannot hold."""
import numpy as np
import pytest
import torch

from skinflow.errors import ConfigError
from skinflow.models.backbone import BackboneSpec, TinySize, backbone_identity, build_backbone, build_model
from skinflow.models.stem import ConvStem, grid_to_rows, rows_to_images


# the stock patch embedding's parameters at the tiny preset's width (RGB x 2 frames x 14 x 14 patch -> 128, no bias)
PATCH_EMBED_PARAMS = 3 * 2 * 14 * 14 * 128


def photos(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.fixture(scope="module")
def conv():
    return build_backbone(BackboneSpec(tiny=TinySize(stem="conv")))


def test_rows_to_images_gives_back_the_photographs_the_processor_packed(conv):
    """Two sizes in one batch (the second image's rows start after the first's), against the processor's own
    inverse: the same pixels, before normalisation is undone."""
    _, processor = conv
    vision = processor.images(photos([(112, 140), (112, 112)]))
    images = rows_to_images(vision["pixel_values"], vision["image_grid_thw"], 3, 2, 14, 2)
    assert [tuple(i.shape) for i in images] == [(1, 3, 112, 140), (1, 3, 112, 112)]
    mean = np.asarray(processor.image_processor.image_mean)
    std = np.asarray(processor.image_processor.image_std)
    for mine, theirs in zip(images, processor.pixels_to_images(vision["pixel_values"], vision["image_grid_thw"])):
        restored = np.clip(mine[0].permute(1, 2, 0).double().numpy() * std + mean, 0, 1)
        np.testing.assert_allclose(restored, theirs, atol=1e-6)
    with pytest.raises(ValueError, match="covers 80 patch rows, pixel_values has 144"):
        rows_to_images(vision["pixel_values"], vision["image_grid_thw"][:1], 3, 2, 14, 2)


def test_grid_to_rows_puts_each_cell_where_the_processor_put_its_patch(conv):
    """Each patch averaged over its pixels, as a grid, turned into rows: equal to the mean of each processor row."""
    _, processor = conv
    vision = processor.images(photos([(112, 140)], seed=1))
    image = rows_to_images(vision["pixel_values"], vision["image_grid_thw"], 3, 2, 14, 2)[0]
    rows = grid_to_rows(torch.nn.functional.avg_pool2d(image, 14), 2)
    expected = vision["pixel_values"].view(-1, 3, 2 * 14 * 14).mean(-1)
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=0)


def test_the_stem_replaces_the_patch_embedding_and_the_model_runs(conv):
    model, processor = conv
    visual = model.model.visual
    assert isinstance(visual.patch_embed, ConvStem) and visual.patch_embed.stride == 8
    # the stride grows while it stays within the patch: a patch of 8 is reached exactly, one of 7 from below
    assert [ConvStem(p, 2, 2, 16).stride for p in (7, 8, 16)] == [4, 8, 16]
    vision = processor.images(photos([(112, 112), (112, 140)]))
    tokens = model.model.get_image_features(vision["pixel_values"], vision["image_grid_thw"], return_dict=True).pooler_output
    assert [tuple(t.shape) for t in tokens] == [(16, 128), (20, 128)]
    default, _ = build_backbone(BackboneSpec())
    stem_params = sum(p.numel() for p in visual.patch_embed.parameters())
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in default.parameters()) == (
        stem_params - PATCH_EMBED_PARAMS)


def test_the_stem_is_the_architecture_the_results_were_measured_with():
    """docs/results.md's figures belong to this stem: a 5 x 5 stride-2 convolution to half the first width, then a
    3 x 3 conv-BatchNorm-ReLU stage per width, the convolutions without bias (BatchNorm follows), two 2 x 2 max-pools
    (stride 8 at patch 14), an RGB input and a 1 x 1 projection: 0.27 M parameters more than the patch embedding at
    the tiny preset's width."""
    stem = ConvStem(14, 2, 2, 128)
    convs = [m for m in stem.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.bias) for c in convs] == [
        (3, 32, (5, 5), (2, 2), (2, 2), None), (32, 64, (3, 3), (1, 1), (1, 1), None),
        (64, 128, (3, 3), (1, 1), (1, 1), None), (128, 256, (3, 3), (1, 1), (1, 1), None)]
    pools = [m for m in stem.features if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 2), (2, 2)]
    norms = [m.num_features for m in stem.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms == [32, 64, 128, 256]
    expected = (3 * 32 * 25 + 32 * 64 * 9 + 64 * 128 * 9 + 128 * 256 * 9  # convolutions
                + 2 * (32 + 64 + 128 + 256)  # BatchNorm scale and shift
                + 256 * 128 + 128)  # projection
    assert sum(p.numel() for p in stem.parameters()) == expected
    assert round((expected - PATCH_EMBED_PARAMS) / 1e6, 2) == 0.27  # net of the patch embedding it replaces
    # the feature map is the image at the stem's stride, before the pool to the patch grid
    for height, width in ((112, 112), (112, 140)):
        assert tuple(stem.features(torch.zeros(1, 3, height, width)).shape) == (1, 256, height // 8, width // 8)


def test_a_stem_without_its_grid_says_how_to_attach_it():
    with pytest.raises(RuntimeError, match="^ConvStem needs the batch's grid_thw: attach it with attach_conv_stem$"):
        ConvStem(14, 2, 2, 128)(torch.zeros(64, 3 * 2 * 14 * 14))


def test_a_bfloat16_tower_gets_a_bfloat16_stem_that_takes_float32_pixels():
    """The stem takes the tower's dtype, and the processor's float32 rows are cast to it (as the stock patch
    embedding casts them)."""
    model, processor = build_backbone(BackboneSpec(dtype="bfloat16", tiny=TinySize(stem="conv")))
    stem = model.model.visual.patch_embed
    assert {p.dtype for p in stem.parameters()} == {torch.bfloat16}
    vision = processor.images(photos([(112, 112)]))
    assert vision["pixel_values"].dtype == torch.float32
    tokens = model.model.get_image_features(vision["pixel_values"], vision["image_grid_thw"], return_dict=True).pooler_output
    assert tokens[0].dtype == torch.bfloat16 and torch.isfinite(tokens[0].float()).all()
    # called on its own, as the stock patch embedding may be (the model casts before it), the stem casts too
    stem.grid_thw = vision["image_grid_thw"]
    assert stem(vision["pixel_values"]).dtype == torch.bfloat16


def test_each_image_is_embedded_alone_in_eval_mode(conv):
    """In eval mode (running statistics) an image's rows do not depend on what it is batched with, nor on its place
    in the batch; in train mode the batch's statistics join them, as in any BatchNorm network."""
    model, processor = conv
    stem = model.model.visual.patch_embed
    stem.eval()
    pair = processor.images(photos([(112, 112), (112, 112)], seed=2))
    alone = processor.images(photos([(112, 112)], seed=2))
    swapped = processor.images(photos([(112, 112), (112, 112)], seed=2)[::-1])
    out = []
    for vision in (pair, alone, swapped):
        stem.grid_thw = vision["image_grid_thw"]
        out.append(stem(vision["pixel_values"]))
    torch.testing.assert_close(out[1], out[0][:64], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2][64:], out[0][:64], atol=1e-5, rtol=1e-5)
    stem.train()
    stem.grid_thw = pair["image_grid_thw"]
    assert not torch.allclose(stem(pair["pixel_values"])[:64], out[0][:64], atol=1e-3)


def test_a_change_in_one_corner_moves_that_corners_rows_only(conv):
    """The stem's rows follow the processor's order: painting the top-left 14 px changes the first row (the first
    merge window's top-left patch) and not the last (the bottom-right patch), whose receptive field is far away.
    A norm's statistics span the image, so the norms are lifted out here to see the geometry alone."""
    import copy

    model, processor = conv
    stem = copy.deepcopy(model.model.visual.patch_embed)
    for i, layer in enumerate(stem.features):
        if isinstance(layer, torch.nn.BatchNorm2d):
            stem.features[i] = torch.nn.Identity()
    image = photos([(112, 112)], seed=3)[0]
    painted = image.copy()
    painted[:14, :14] = 255 - painted[:14, :14]
    out = []
    for picture in (image, painted):
        vision = processor.images([picture])
        stem.grid_thw = vision["image_grid_thw"]
        out.append(stem(vision["pixel_values"]))
    moved = (out[0] - out[1]).abs().amax(-1)
    assert moved[0] > 1e-3 and moved[-1] == 0
    # the bottom-right patch of the first 2 x 2 merge window (row 3) sits 14 px away diagonally: it sees the change
    assert moved[3] > 0


def test_the_stem_is_refused_where_it_cannot_hold(tmp_path):
    from skinflow.export import ExportError, export_stage

    for spec in (BackboneSpec(preset="qwen2.5-vl-7b", random_init=True, tiny=TinySize(stem="conv")),
                 BackboneSpec(pretrained_path=str(tmp_path), tiny=TinySize(stem="conv"))):
        with pytest.raises(ConfigError, match="tiny.stem: conv is for the randomly initialised tiny preset"):
            build_model(spec, device="meta")
    spec = BackboneSpec(tiny=TinySize(stem="conv"))
    model, _ = build_backbone(spec)
    plain = backbone_identity(BackboneSpec(), build_backbone(BackboneSpec())[0])
    identity = backbone_identity(spec, model)
    assert identity["config_sha256"] != plain["config_sha256"]  # a handoff between the two is refused
    ckpt = tmp_path / "conv.ckpt"
    torch.save({"backbone_identity": identity, "state_dict": {}}, ckpt)
    with pytest.raises(ExportError, match=f"{ckpt}: its tiny backbone has the convolutional stem"):
        export_stage(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def bn_layers(module):
    return [layer for layer in module.modules() if isinstance(layer, torch.nn.BatchNorm2d)]


def test_a_warmup_checkpoint_carries_the_stems_running_statistics(tmp_path):
    """The running statistics are buffers, not trainable parameters: the checkpoint keeps them all the same, and the
    stage restored from it answers as the one that wrote it, in eval mode (where those statistics are used)."""
    from skinflow.stages.warmup import WarmupStage

    spec = BackboneSpec(tiny=TinySize(stem="conv"))
    stage = WarmupStage(backbone=spec)
    vision = stage.processor.images(photos([(112, 112)] * 4, seed=4))
    stem = stage.model.model.visual.patch_embed
    stem.train()
    stem.grid_thw = vision["image_grid_thw"]
    stem(vision["pixel_values"])  # a training batch moves the running statistics off their start (0 and 1)
    checkpoint = {}
    stage.on_save_checkpoint(checkpoint)
    stats = [k for k in checkpoint["state_dict"] if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stats) == 3 * len(bn_layers(stem)) == 12
    torch.save(checkpoint, tmp_path / "conv.ckpt")
    restored = WarmupStage(backbone=spec, init_from=str(tmp_path / "conv.ckpt"))
    fresh = WarmupStage(backbone=spec)
    outputs = []
    for each in (stage, restored, fresh):
        each.eval()
        with torch.no_grad():
            outputs.append(each.model.model.get_image_features(vision["pixel_values"], vision["image_grid_thw"],
                                                               return_dict=True).pooler_output[0])
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])  # the same weights (seed 0) without the statistics differ


def test_a_stem_that_does_not_train_keeps_its_statistics():
    """With the vision tower frozen, train mode leaves the stem's BatchNorms in eval: nothing moves statistics the
    checkpoint would not keep."""
    model, processor = build_backbone(BackboneSpec(tiny=TinySize(stem="conv"), freeze_vision=True))
    model.train()
    stem = model.model.visual.patch_embed
    assert stem.training and not any(layer.training for layer in bn_layers(stem))
    vision = processor.images(photos([(112, 112)] * 2, seed=5))
    stem.grid_thw = vision["image_grid_thw"]
    stem(vision["pixel_values"])
    assert all(torch.equal(layer.running_mean, torch.zeros_like(layer.running_mean)) for layer in bn_layers(stem))
    trained, _ = build_backbone(BackboneSpec(tiny=TinySize(stem="conv")))
    trained.train()
    assert all(layer.training for layer in bn_layers(trained.model.visual.patch_embed))


def test_the_rl_stage_scores_with_the_statistics_it_sampled_with():
    """GRPO samples in eval mode and scores in train mode: with the stem's statistics frozen, a train-mode forward
    gives the eval-mode features and leaves the running statistics alone, after the rollout's own mode switches."""
    from skinflow.stages.grpo import GRPOStage

    stage = GRPOStage(BackboneSpec(tiny=TinySize(stem="conv")), max_new_tokens=4, group_size=2)
    stem = stage.model.model.visual.patch_embed
    vision = stage.processor.images(photos([(112, 112)] * 2, seed=6))
    features = stage.model.model.get_image_features
    stage.model.eval()
    with torch.no_grad():
        sampled = features(vision["pixel_values"], vision["image_grid_thw"], return_dict=True).pooler_output[0]
    stage.model.train()  # as the rollout hands the model back (``model.train(was_training)``)
    stage.train()
    before = [layer.running_mean.clone() for layer in bn_layers(stem)]
    with torch.no_grad():
        scored = features(vision["pixel_values"], vision["image_grid_thw"], return_dict=True).pooler_output[0]
    assert torch.equal(sampled, scored)
    assert all(torch.equal(a, layer.running_mean) for a, layer in zip(before, bn_layers(stem)))
