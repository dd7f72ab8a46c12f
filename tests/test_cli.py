"""The CLI as a user drives it: every shipped YAML parses, and a short fit lands in MLflow."""

import contextlib
import io
from pathlib import Path

import pandas as pd
import pytest
import yaml

from skinflow.cli import main
from tests.conftest import REPO

# pipeline and ablation files are not LightningCLI configs (they name them): tested below and in test_ablation;
# audit files configure audit-data (tested in test_audit)
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name not in ("pipeline", "ablation", "audit"))
PIPELINES = sorted((REPO / "configs" / "pipeline").glob("*.yaml"))
COMPONENT = {"data": "--data", "model": "--model", "trainer": "--trainer"}


def print_config(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (None, 0)
    return yaml.safe_load(out.getvalue())


def args_for(path: Path) -> list[str]:
    group = path.parent.name
    if group in COMPONENT:
        defaults = {"--model": REPO / "configs/model/warmup_tiny.yaml", "--data": REPO / "configs/data/synthetic.yaml"}
        defaults[COMPONENT[group]] = path
        return [arg for flag, value in defaults.items() for arg in (flag, str(value))] + (
            ["--trainer", str(path)] if group == "trainer" else [])
    if group == "logger":
        return ["--model", str(REPO / "configs/model/warmup_tiny.yaml"), "--data", str(REPO / "configs/data/synthetic.yaml"),
                "--trainer.logger", str(path)]
    return ["--config", str(path)]


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_every_config_parses_through_the_cli(path):
    config = print_config(args_for(path))
    assert config["model"]["class_path"].startswith("skinflow.stages.")
    assert config["data"]["class_path"].startswith("skinflow.data.")


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_pipeline_loads_and_its_stages_parse(path):
    from skinflow.pipeline import load_pipeline

    pipeline = load_pipeline(path)
    names = [s.name for s in pipeline.stages]
    assert names[-2:] == ["stage1", "stage2"] and names[-3].startswith("warmup")  # warmups may come first
    stages = [print_config(["--config", str(s.config), *s.args]) for s in pipeline.stages]
    warmups = len(stages) - 2
    assert [c["model"]["class_path"].rsplit(".", 1)[1] for c in stages] == ["WarmupStage"] * warmups + ["GRPOStage"] * 2
    assert [c["model"]["init_args"]["stage"] for c in stages[-2:]] == ["stage1", "stage2"]
    assert stages[-2]["data"]["init_args"]["prompt"] == "caption" and stages[-1]["data"]["init_args"]["prompt"] == "diagnosis"
    backbones = [c["model"]["init_args"]["backbone"] for c in stages]
    assert all(b == backbones[0] for b in backbones)  # one backbone: every handoff passes the identity check
    if "qwen" in path.name:
        assert [c["model"]["init_args"]["lr"] for c in stages[-2:]] == [1e-6, 5e-7]  # the paper's learning rates
    else:  # the tiny model learns the caption schema only from warmup targets: the warmup Stage I starts from has them
        data = stages[-3]["data"]["init_args"]  # (the real-sample grid once ended on answer-only targets: Stage I a no-op)
        mixed_in = data.get("mix_train") or {}  # the real-sample grid: the synthetic lesions mixed into its warmup
        assert data["prompt"] == "mixed" and (data["csv_path"] is None or data.get("captions_path")
                                              or ("csv_path" in mixed_in and mixed_in["csv_path"] is None))


def test_7b_recipe_builds_on_meta_without_download():
    from skinflow.models.backbone import BackboneSpec, LoRASpec, build_model, count_parameters
    from skinflow.models.dve import DVESpec, attach_dve

    config = print_config(["--config", str(REPO / "configs/experiment/warmup_qwen2_5_vl_7b.yaml")])
    backbone = dict(config["model"]["init_args"]["backbone"])
    backbone["lora"] = LoRASpec(**backbone["lora"])
    backbone["dve"] = DVESpec(**backbone["dve"])
    backbone.pop("tiny")
    spec = BackboneSpec(**backbone)
    assert spec.preset == "qwen2.5-vl-7b" and spec.dtype == "bfloat16" and spec.dve.enabled
    assert config["trainer"]["precision"] == "bf16-true"
    model = build_model(spec, device="meta")
    assert count_parameters(model) > 8e9
    replaced = attach_dve(model, spec.dve)
    assert replaced[0] == "visual.blocks.7.mlp.gate_proj" and len(replaced) == 12


def test_fit_logs_metrics_config_and_tags_to_mlflow(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"),
        "--data.init_args.synthetic_per_class", "4", "--data.init_args.progress", "false",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1", "--model.init_args.max_new_tokens", "8",
    ])
    assert (tmp_path / "mlruns" / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("skinflow")
    (run,) = client.search_runs([experiment.experiment_id])
    metrics = run.data.metrics
    assert {"train/loss", "val/loss", "val/top1_exact", "val/top6_exact", "val/parse_failure", "test/top1_exact"} <= set(metrics)
    assert 0 <= metrics["val/top1_exact"] <= metrics["val/top6_exact"] <= 1
    # the full clinical collection, with per-skin-type values
    assert {"val/graded_top1", "val/graded_top6", "val/top3_nine", "val/top1_three", "val/malignant_miss_top1",
            "test/graded_top1_by_fst/worst", "test/graded_top1_by_fst/gap"} <= set(metrics)
    assert any(key.startswith("test/graded_top1_by_fst/fst_") for key in metrics)
    assert run.data.tags["skinflow.stage"] == "warmup"
    assert len(run.data.tags["mlflow.source.git.commit"]) >= 7
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "data_report.json", "samples"} <= artifacts
    config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
    assert config["data"]["init_args"]["synthetic_per_class"] == 4
    checkpoints = list((tmp_path / "mlruns").rglob("*.ckpt"))
    assert checkpoints and all(str(c).startswith(str(tmp_path / "mlruns")) for c in checkpoints)
    # every tested image's answer, for the LLM judge; then the judge grades them and logs beside the kit's numbers
    import json

    assert "predictions" in artifacts
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions/test.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    labels = pd.read_csv(next((tmp_path / ".cache").rglob("labels.csv")), dtype=str).set_index("md5hash")["label"]
    assert rows and len({r["md5hash"] for r in rows}) == len(rows)
    assert all(labels[r["md5hash"]] == r["label"] for r in rows)
    from skinflow.llm.fake_server import FakeOpenAI

    with FakeOpenAI(lambda request: '{"top1": true, "top6": true, "dangerous_miss": false}') as server:
        monkeypatch.setenv("SKINFLOW_TEST_KEY", server.api_key)
        main(["judge", "--run-id", run.info.run_id, "--base-url", server.base_url, "--model", "j", "--api-key-env",
              "SKINFLOW_TEST_KEY", "--runs", "1", "--no-progress"])
        assert len(server.requests) == len(rows)
    judged = client.get_run(run.info.run_id).data
    assert judged.metrics["judge/top1"] == 1.0 and judged.metrics["judge/images"] == len(rows)
    assert judged.metrics["judge/dangerous_miss"] == 0.0 and judged.tags["skinflow.judge.prompt_version"] == "skinflow-judge-v1"
    with pytest.raises(SystemExit) as missing:
        main(["judge", "--run-id", run.info.run_id, "--model", "j", "--api-key-env", "SKINFLOW_TEST_KEY",
              "--table", "predictions/nothing.json"])
    assert missing.value.code == 2
    # predict: one CSV row per test image with the same columns as the test table, also an MLflow artifact
    main(["predict", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml"),
          "--data.init_args.synthetic_per_class", "4", "--data.init_args.progress", "false",
          "--trainer.limit_predict_batches", "1", "--trainer.enable_progress_bar", "false",
          "--model.init_args.max_new_tokens", "8", "--ckpt_path", str(checkpoints[0])])
    (csv,) = (tmp_path / "mlruns" / "predictions").rglob("predict.csv")
    predicted = pd.read_csv(csv, dtype={"md5hash": str}, keep_default_na=False)
    assert list(predicted.columns) == table["columns"] and len(predicted) == len(rows)
    assert set(predicted["md5hash"]) == {r["md5hash"] for r in rows}
    assert {"graded_at_1", "graded_at_6", "caption/colour", "caption/distribution"} <= set(predicted.columns)
    (predict_run,) = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id != run.info.run_id]
    assert "predictions/predict.csv" in {a.path for a in client.list_artifacts(predict_run.info.run_id, "predictions")}


def test_prediction_rows_grade_ranks_one_and_six_against_the_credit_matrix():
    from skinflow.data.formats import Target, parse_answer
    from skinflow.data.ontology import ONTOLOGY
    from skinflow.metrics.grading import credit_matrix, rank_discount
    from skinflow.stages.base import prediction_rows

    credit = credit_matrix()
    target = Target("psoriasis", "inflammatory", "non-neoplastic", md5hash="a" * 32, fitzpatrick=3)
    texts = ["<caption>\ncolour: red\n</caption>\n<answer>\n1. eczema\n2. psoriasis\n</answer>", "no answer at all"]
    rows = prediction_rows(texts, [parse_answer(t) for t in texts], [target, target], credit)
    t, e = ONTOLOGY.index("psoriasis"), ONTOLOGY.index("eczema")
    discount = rank_discount(2)
    assert rows[0]["graded_at_1"] == pytest.approx(float(credit[t, e]))
    assert rows[0]["graded_at_6"] == pytest.approx(max(float(credit[t, e] * discount[0]), float(credit[t, t] * discount[1])))
    assert rows[0]["graded_at_6"] > rows[0]["graded_at_1"]  # the right label at rank 2 beats a near miss at rank 1
    assert rows[0]["caption/colour"] == "red" and rows[0]["caption/shape"] == ""
    assert rows[1]["graded_at_1"] == rows[1]["graded_at_6"] == 0.0 and rows[1]["parsed"] == ""
    assert (rows[0]["md5hash"], rows[0]["label"], rows[0]["fitzpatrick"]) == ("a" * 32, "psoriasis", 3)


def test_relative_sqlite_store_is_made_absolute(tmp_path, monkeypatch):
    from skinflow.tracking.store import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///mlruns/mlflow.db") == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_every_config_file_is_listed_in_docs_configs():
    """docs/configs.md names every YAML under configs/ (a new file without a line there fails)."""
    page = (REPO / "docs" / "configs.md").read_text()
    sections = {part.split("/`", 1)[0]: part for part in page.split("\n## `")[1:]}  # folder -> its section
    missing = [str(f.relative_to(REPO)) for f in sorted((REPO / "configs").rglob("*.yaml"))
               if f"| `{f.name}` |" not in sections.get(f.parent.name, "")]
    assert not missing, missing
