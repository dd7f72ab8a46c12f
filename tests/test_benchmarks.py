"""The benchmark scripts keep running (tiny settings); their figures are reported in issue notes, not asserted."""

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


def run(script, *args):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_dve_overhead_prints_parameters_and_a_ratio():
    out = run("dve_overhead.py", "--tokens", "64", "--reps", "1")
    assert "qwen2.5-vl-7b: vision tower" in out and "target <= 2%" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("forward-time ratio DVE/plain") and float(last.split()[-1]) > 0


def test_dve_gpu_runs_tiny_on_cpu():
    out = run("dve_gpu.py", "--tiny")
    assert "ratio DVE/plain" in out.strip().splitlines()[-1]


def test_gpu_scale_takes_a_checkout_folder_and_times_every_phase(qwen_standin):
    """``--pretrained-path``: the folder's weights and real tokenizer (here the stand-in checkout, on CPU); every
    phase of the step is timed."""
    out = run("gpu_scale.py", "--tiny", "--pretrained-path", str(qwen_standin), "--warmup", "0")
    assert f"backbone: {qwen_standin}; tokenizer: 151665 tokens, stops on [151645, 151643]" in out
    lines = out.strip().splitlines()
    phases = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("  ")}
    assert set(phases) == {"rollout", "reference", "policy_forward", "backward", "optimizer"}
    # every phase was timed (the script indexes them, a missing one raises); the heavy ones take measurable time,
    # the optimizer step may round to zero on a fast machine
    assert all(phases[name] > 0 for name in ("rollout", "reference", "policy_forward", "backward"))
    assert lines[-1].startswith("step total") and float(lines[-1].split()[2]) >= sum(phases.values()) * 0.9
    # generated tokens: 2 images x G 4 x at most 16 new tokens; the step's rate is tokens / step seconds
    tokens = float(next(line for line in lines if line.startswith("generated tokens")).split()[-1])
    assert 8 <= tokens <= 2 * 4 * 16
    rate = float(next(line for line in lines if line.startswith("step tokens/s/GPU")).split()[-1])
    assert rate == pytest.approx(tokens / float(lines[-1].split()[2]), rel=0.02, abs=1)
    assert "peak RSS" in out


def test_grpo_vs_trl_refuses_clearly_without_trl_or_prints_a_ratio():
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "grpo_vs_trl.py")], capture_output=True, text=True)
        assert out.returncode != 0 and "pip install" in out.stderr
        return
    out = run("grpo_vs_trl.py", "--rounds", "1", "--steps", "2", "--data", str(REPO / ".cache/skinflow/bench-grpo-test"))
    last = out.strip().splitlines()[-1]
    assert last.startswith("ratio skinflow/TRL") and float(last.split()[-1]) > 0


def test_stage1_headroom_prints_each_arms_start_end_and_gain(tmp_path):
    import re

    out = run("stage1_headroom.py", "--checkpoints", "none", "--rl-steps", "1", "--sft-steps", "1", "--per-class", "4",
              "--samples", "1", "--rl-set", "group_size=2", "--rl-set", "max_new_tokens=8", "--cache-dir", str(tmp_path))
    rows = re.findall(r"^\s+0\s+(grpo|supervised)\s+([\d.]+) -> ([\d.]+) \(([-+][\d.]+)\)\s+([\d.]+) -> ([\d.]+) \(([-+][\d.]+)\)$",
                      out, re.MULTILINE)
    assert [r[0] for r in rows] == ["grpo", "supervised"], out
    for row in rows:
        start, end, gain, s_start, s_end, s_gain = map(float, row[1:])
        assert abs(end - start - gain) < 2e-4 and abs(s_end - s_start - s_gain) < 2e-4
    summary = [line for line in out.splitlines() if "over 1 seeds" in line]
    assert len(summary) == 4 and summary[0].startswith("GRPO 1 steps {'group_size': 2, 'max_new_tokens': 8}")
    assert f"{float(rows[0][3]):+.4f}" in summary[0]  # the grpo greedy gain, averaged over one seed


def test_learning_over_seeds_reads_each_cells_start_and_end_from_the_store(ablation_grid):
    """The script's per-seed gains are the child runs' (end - start) in the store; its summary is their mean."""
    import re
    import statistics

    from mlflow import MlflowClient

    from skinflow.analysis.runs import cell_runs

    folder, uri = ablation_grid["folder"], ablation_grid["uri"]
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "learning_over_seeds.py"), "--config",
                          str(folder / "grid.yaml"), "--no-run"], capture_output=True, text=True, timeout=600, cwd=folder)
    assert out.returncode == 0, out.stderr[-2000:]
    client = MlflowClient(uri)
    for row in ("stage1-no-dve", "no-stage1-no-dve"):
        section = out.stdout.split(f"grid-test / {row}:")[1].split("grid-test / ")[0]
        gains = []
        for seed in (0, 1):
            children = cell_runs("grid-test", row, seed, uri)
            assert ("stage1" in children) == (row == "stage1-no-dve")  # the no-Stage-I row has no Stage I run
            stage2 = client.get_run(children["stage2"]).data.metrics
            start, end = stage2["start/test/graded_top6"], stage2["test/graded_top6"]
            line = re.search(rf"seed {seed}  stage2 test graded_top6 +(\S+) -> (\S+)  \((\S+)\)", section)
            assert line, section
            assert [float(v) for v in line.groups()] == [round(start, 4), round(end, 4), round(end - start, 4)]
            gains.append(end - start)
            assert (f"seed {seed}  stage1 val caption_fields" in section) == (row == "stage1-no-dve")
        mean = re.search(r"stage2 test graded_top6: gain (\S+) ± (\S+) over 2 seeds, improved in (\d)/2", section)
        assert mean and float(mean.group(1)) == round(statistics.mean(gains), 4)
        assert int(mean.group(3)) == sum(g > 0 for g in gains)


@pytest.mark.slow
def test_grpo_step_scale_prints_each_scoring_side_by_side(qwen_standin):
    out = run("grpo_step_scale.py", "--no-trl", "--new-tokens", "4", "--checkout", str(qwen_standin))
    table = {line.split()[0]: line for line in out.splitlines() if line.startswith(("full", "chunked"))}
    assert {"full", "chunked"} <= set(table)
    assert out.strip().splitlines()[-1].startswith("chunked growth micro-batch 1 -> 8:")


@pytest.mark.slow
def test_rollout_decode_prints_a_ratio_per_sequence_count(qwen_standin):
    out = run("rollout_decode.py", "--sequences", "4", "--new-tokens", "4", "--repeats", "1", "--checkout", str(qwen_standin))
    assert "first compiled call" in out
    assert out.strip().splitlines()[-1].startswith("  ratio compiled/hf at N=4:")


@pytest.mark.slow
def test_gpu_scale_runs_the_step_sharded_with_every_weight_trained():
    """``--fsdp --full``: the GPU check of issue 26 (a 7B-shaped Stage II step under FSDP2), here on the tiny model
    on CPU: the step runs through ShardedDataParallel and every phase is timed."""
    out = run("gpu_scale.py", "--tiny", "--fsdp", "--full", "--warmup", "0")
    assert "strategy=fsdp2 training=full" in out and "M trainable (every weight)" in out
    phases = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert phases == {"rollout", "reference", "policy_forward", "backward", "optimizer"}


def test_gpu_scale_grid_prints_every_lever_on_and_off():
    out = run("gpu_scale.py", "--tiny", "--grid", "--grid-sequences", "8", "--warmup", "0")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("8 ")]
    assert {(row[1], row[2]) for row in rows} == {("hf", "0"), ("hf", "64"), ("compiled", "0"), ("compiled", "64")}
    assert out.strip().splitlines()[-1].startswith("EasyR1")


def test_the_likelihood_ranking_scores_each_label_as_the_whole_model_does(synth_dir, tiny, tmp_path):
    """``label_loglikelihoods`` (one image's prompt beside every label, right-padded, the vision tower run once) equals
    the first entry's log-probability summed from the model's own full logits, one sequence and one image at a time:
    the positions, the padding and the image all count."""
    import importlib.util

    from skinflow.data.datamodule import Fitzpatrick17kDataModule
    from skinflow.data.ontology import ONTOLOGY
    from skinflow.stages.warmup import WarmupStage

    spec = importlib.util.spec_from_file_location("real_sample_baseline", REPO / "benchmarks" / "real_sample_baseline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.first_entry_texts(["melanoma"]) == ["<answer>\n1. melanoma\n"]  # the entry ends at its newline

    dm = Fitzpatrick17kDataModule(csv_path=str(synth_dir / "labels.csv"), cache_dir=str(tmp_path / "c"), progress=False,
                                  batch_size=2, augment=False)
    dm.processor = tiny[1]
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    stage = WarmupStage().eval()
    tok = stage.processor.tokenizer
    labels = ["acne", "melanoma", "basal cell carcinoma", "seborrheic keratosis"]  # entries of different lengths
    assert all(label in ONTOLOGY.labels for label in labels)
    lengths = {len(tok(text, add_special_tokens=False)["input_ids"]) for text in bench.first_entry_texts(labels)}
    assert len(lengths) > 1  # so the right padding is exercised
    scores = bench.label_loglikelihoods(stage, batch, labels)
    assert scores.shape == (2, len(labels))

    patches = batch["image_grid_thw"].prod(1).tolist()
    pixels = batch["pixel_values"].split(patches)
    expected = torch.zeros(2, len(labels))
    with torch.no_grad():
        for i in range(2):
            prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
            for j, text in enumerate(bench.first_entry_texts(labels)):
                entry = tok(text, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + entry])
                inputs = stage.model_inputs(ids, torch.ones_like(ids), pixels[i], batch["image_grid_thw"][i:i + 1])
                logp = stage.model(**inputs).logits[0].float().log_softmax(-1)
                expected[i, j] = sum(logp[len(prompt) - 1 + k, token] for k, token in enumerate(entry))
    assert torch.allclose(scores, expected, atol=1e-4)
    assert scores[0].std() > 0.01 and not torch.allclose(scores[0], scores[1])  # labels and images tell apart


@pytest.mark.parametrize("args, message", [
    (["--rank-labels"], "--rank-labels ranks the labels of the --vlm run: add --vlm"),
    (["--rank-checkpoint", "no/such.ckpt"], "--rank-checkpoint 'no/such.ckpt': no such checkpoint file"),
])
def test_the_ranking_options_refuse_what_they_cannot_do_in_one_line(args, message):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_sample_baseline.py"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr.strip().splitlines()[-1], out.stderr[-500:]
