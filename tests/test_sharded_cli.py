"""FSDP2 through the command a user runs (issue 26): ``fit ... --trainer configs/trainer/cpu_fsdp.yaml
--trainer.devices 2`` on two CPU processes (gloo). A sharded warmup stopped after its first epoch and resumed
reaches the weights of the uninterrupted run; its sharded checkpoint is slim, starts a later stage (``init_from``)
and exports to a folder stock transformers loads; a GRPO stage with LoRA runs sharded; every rank evaluates the
same number of batches (an uneven split gets a padding batch that counts for nothing); a failing rank stops both.
The one-process equality of the sharded maths is tests/test_sharding.py's."""

import json

import pytest
import torch

from tests.conftest import REPO
from tests.ddp_probe import read
from tests.test_ddp import fit
from tests.test_resume import FAST, STAGE1, client_in

SHARDED = ["--trainer", str(REPO / "configs/trainer/cpu_fsdp.yaml"), "--trainer.devices=2"]
# 27 training images, 8 a batch per rank: 2 optimizer steps an epoch. A constant learning rate, so a run stopped
# after epoch 1 and resumed for epoch 2 follows the schedule of a 2-epoch run
WARMUP = ["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"), *FAST, *SHARDED,
          "--data.init_args.batch_size=8", "--model.init_args.warmup_steps=0", "--model.init_args.min_lr_ratio=1.0",
          "--trainer.check_val_every_n_epoch=1"]


def last_checkpoint(folder):
    (last,) = list((folder / "mlruns").rglob("last.ckpt"))
    return last


def the_run(folder):
    client = client_in(folder)
    runs = client.search_runs([client.get_experiment_by_name("skinflow").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def warmup(tmp_path_factory):
    """The uninterrupted sharded warmup (2 epochs, whole validation and test splits) and the one stopped after
    epoch 1, then resumed from its sharded last.ckpt."""
    root = tmp_path_factory.mktemp("sharded")
    whole, stopped = root / "whole", root / "stopped"
    for folder in (whole, stopped):
        folder.mkdir()
    # 15 validation and 15 test images, 7 a batch: rank 0 evaluates 8 (2 batches), rank 1 7 (1 batch + 1 padding)
    done = fit(whole, [*WARMUP, "--trainer.max_epochs=2", "--trainer.limit_val_batches=null", "--test_after_fit=true",
                       "--trainer.limit_test_batches=null", "--data.init_args.eval_batch_size=7"], {"folder": str(whole / "probe")})
    assert done.returncode == 0, done.stderr[-4000:]
    first = fit(stopped, [*WARMUP, "--trainer.max_epochs=1", "--test_after_fit=false"], {"folder": str(stopped / "probe")})
    assert first.returncode == 0, first.stderr[-4000:]
    resumed = fit(stopped, [*WARMUP, "--trainer.max_epochs=2", "--test_after_fit=false", f"--ckpt_path={last_checkpoint(stopped)}"],
                  {"folder": str(stopped / "probe")})
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return whole, stopped, done


def test_a_sharded_checkpoint_is_a_slim_folder_of_shards_written_once(warmup):
    from skinflow.stages.fsdp import is_sharded_checkpoint, read_sharded_checkpoint

    whole, _, _ = warmup
    last = last_checkpoint(whole)
    assert is_sharded_checkpoint(last)
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert not list(last.parent.glob("*.partial")) and not list(last.parent.glob("*.old"))  # renamed into place
    checkpoint = read_sharded_checkpoint(last)
    assert checkpoint["global_step"] == 4 and checkpoint["skinflow_stage"] == "warmup"
    from skinflow.stages.warmup import WarmupStage

    stage = WarmupStage()
    assert set(checkpoint["state_dict"]) == {n for n, p in stage.named_parameters() if p.requires_grad}
    # each rank wrote about half: the shards are each well under the whole
    sizes = [(last / f"__{r}_0.distcp").stat().st_size for r in (0, 1)]
    total = sum(v.numel() * v.element_size() for v in checkpoint["state_dict"].values())
    assert all(0.3 * total < s < 0.75 * total * 3 for s in sizes)  # weights + two AdamW moments, split in two


def test_a_sharded_run_stopped_and_resumed_reaches_the_weights_of_the_uninterrupted_run(warmup):
    from skinflow.stages.fsdp import read_sharded_checkpoint

    whole, stopped, _ = warmup
    a, b = (read_sharded_checkpoint(last_checkpoint(f)) for f in (whole, stopped))
    assert a["global_step"] == b["global_step"] == 4
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name  # same ops in the same order: bit-identical
    # the probe saw the same batches on each rank in both runs (the data position resumed at epoch 2)
    for rank in (0, 1):
        assert [r["ids"] for r in read(whole / "probe", rank)] == [r["ids"] for r in read(stopped / "probe", rank)]


def test_every_rank_evaluates_the_whole_split_once_with_a_padding_batch_where_uneven(warmup):
    from skinflow.data.order import EvenEvalShards

    whole, _, _ = warmup
    assert [EvenEvalShards(15, 2, r, 7).padding for r in (0, 1)] == [0, 1]  # the split sizes this run has
    client, run = the_run(whole)
    table = json.loads(open(client.download_artifacts(run.info.run_id, "predictions/test.json", str(whole))).read())
    ids = [row[table["columns"].index("md5hash")] for row in table["data"]]
    assert len(ids) == len(set(ids)) == 15  # every test image once; the padding image not counted
    assert "val/top1_exact" in run.data.metrics and "val/loss" in run.data.metrics


def test_a_sharded_checkpoint_starts_a_later_stage_and_exports_for_stock_transformers(warmup, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from skinflow.export import export_stage
    from skinflow.stages.fsdp import read_sharded_checkpoint
    from skinflow.stages.grpo import GRPOStage

    whole, _, _ = warmup
    last = last_checkpoint(whole)
    saved = read_sharded_checkpoint(last)["state_dict"]
    stage = GRPOStage(init_from=str(last), max_new_tokens=8)  # one process, from the sharded folder
    mine = dict(stage.named_parameters())
    assert all(torch.equal(mine[k].detach(), v) for k, v in saved.items())
    parts = export_stage(last, tmp_path / "export")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(parts["model"], dtype=torch.float32)
    theirs = model.state_dict()
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    assert torch.equal(theirs[name], saved[f"model.{name}"])


def test_a_lora_grpo_stage_runs_sharded_with_a_slim_checkpoint(tmp_path):
    from skinflow.stages.fsdp import read_sharded_checkpoint

    args = [*STAGE1, *SHARDED, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
            '--model.init_args.backbone.lora={"r": 2}', "--model.init_args.beta=0.5"]
    done = fit(tmp_path, args, {"folder": str(tmp_path / "probe")}, SKINFLOW_PROBE_REWARD="1")
    assert done.returncode == 0, done.stderr[-4000:]
    client, run = the_run(tmp_path)
    assert {"rl/kl", "val/top1_exact"} <= set(run.data.metrics)
    kl = [m.value for m in client.get_metric_history(run.info.run_id, "rl/kl")]
    assert kl[0] == 0 and kl[-1] > 0  # the sharded reference is the starting policy, not the moving one
    keys = set(read_sharded_checkpoint(last_checkpoint(tmp_path))["state_dict"])
    assert keys and all("lora_" in k for k in keys)  # only the adapters (the tiny stage trains no DVE here)


def test_a_bad_input_on_one_rank_stops_both_sharded_ranks(tmp_path):
    done = fit(tmp_path, [*WARMUP, "--trainer.max_epochs=1"], {"folder": str(tmp_path / "probe"), "fail_rank": 1, "fail_step": 1},
               timeout=300)  # a hang would time out
    assert done.returncode != 0
    assert "rank 1: every image of a batch could not be read" in done.stderr
