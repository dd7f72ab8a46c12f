"""Attention maps: the first answer token's attention over image tokens, on the image grid, and the callback."""

import lightning as L
import numpy as np
import pytest
import torch

from skinflow.analysis.attention import AttentionMaps, attention_maps, token_grid, top_share
from skinflow.data.collate import VisionLanguageCollator
from skinflow.data.datamodule import Fitzpatrick17kDataModule
from skinflow.data.formats import Target
from skinflow.data.ontology import ONTOLOGY
from skinflow.stages.warmup import WarmupStage


def test_concentration_and_grid_layout():
    assert top_share(torch.ones(40)) == pytest.approx(0.1)  # uniform: the top 10% hold 10%
    spike = torch.zeros(30)
    spike[17] = 1.0
    assert top_share(spike) == 1.0
    grid = token_grid(spike, torch.tensor([1, 10, 12]))  # 5 x 6 tokens after the 2 x 2 merge
    assert grid.shape == (5, 6) and grid[17 // 6, 17 % 6] == 1.0 and grid.sum() == 1.0


def test_maps_equal_the_models_own_attention_weights_with_left_padding():
    torch.manual_seed(0)
    stage = WarmupStage()
    rng = np.random.default_rng(0)
    items = [{"image": rng.integers(0, 256, (side, side, 3), dtype=np.uint8),
              "target": Target(label, ONTOLOGY.nine(label), ONTOLOGY.three(label))}
             for label, side in zip(ONTOLOGY.labels[:2], (112, 168))]  # different sizes: the first prompt is padded
    batch = VisionLanguageCollator(stage.processor, "diagnosis")(items)
    assert (batch["prompt_mask"][0] == 0).any()
    maps = attention_maps(stage, batch)
    assert stage.model.config._attn_implementation == "sdpa"  # restored after the eager pass
    assert [tuple(m.shape) for m in maps] == [(4, 4), (6, 6)]
    model = stage.model
    model.set_attn_implementation("eager")
    out = model(**stage.model_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"], batch["image_grid_thw"]),
                output_attentions=True)
    model.set_attn_implementation("sdpa")
    last = torch.stack([a[:, :, -1, :] for a in out.attentions]).mean(dim=(0, 2))  # (B, L): layers and heads
    for b, m in enumerate(maps):
        image = batch["prompt_ids"][b] == stage.processor.image_token_id
        expected = last[b][image] / last[b][image].sum()
        assert torch.allclose(m.flatten(), expected, atol=1e-6)


def test_callback_logs_overlays_and_concentration(synth_dir, tmp_path):
    from mlflow import MlflowClient

    from skinflow.tracking.mlflow import SkinflowMLFlowLogger

    logger = SkinflowMLFlowLogger(experiment_name="att", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                  artifact_location=str(tmp_path / "artifacts"))
    dm = Fitzpatrick17kDataModule(csv_path=str(synth_dir / "labels.csv"), cache_dir=str(tmp_path / "c"), progress=False,
                                  batch_size=4, augment=False)
    maps = AttentionMaps(num_images=3)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, logger=logger, callbacks=[maps], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(WarmupStage(max_new_tokens=4), dm)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    share = client.get_run(logger.run_id).data.metrics["val/attention_top10_share"]
    assert share == pytest.approx(np.mean([entry["share"] for entry in maps.last]), abs=1e-6) and 0.1 <= share <= 1.0
    folder = client.list_artifacts(logger.run_id, "attention")
    assert [f.path for f in folder] == ["attention/step000002"]
    pngs = [f.path for f in client.list_artifacts(logger.run_id, "attention/step000002")]
    records = dm.splits["val"].records
    labels = list(records["label"])
    chosen = [labels.index(label) for label in dict.fromkeys(labels)][:3]  # the first image of each of 3 labels
    assert len({labels[i] for i in chosen}) == 3 and [e["label"] for e in maps.last] == [labels[i] for i in chosen]
    assert pngs == [f"attention/step000002/{n}_{records[i]['md5hash']}.png" for n, i in enumerate(chosen)]
