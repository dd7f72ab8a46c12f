"""Bad values and unreachable services refused up front (issue 25): one line naming the key or URI, before any
model is built, within seconds."""

import http.server
import socket
import threading
import time

import pytest

from skinflow.cli import main
from skinflow.tracking.store import StoreError, check_reachable
from tests.conftest import REPO

WARMUP = ["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_synthetic.yaml")]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(capsys, argv) -> str:
    """The command's last words: one ``error:`` line (and at most the ``--help`` hint after it), exit status 2.
    Log lines before it (``Seed set to 0``; a logging handler left on an earlier test's closed stream) are not the
    command's answer."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [i for i, line in enumerate(err) if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] >= len(err) - 2, err[-5:]
    return err[errors[0]]


def test_an_unreachable_tracking_server_fails_fast_naming_the_uri(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.perf_counter()
    line = one_line_error(capsys, [*WARMUP, f"--trainer.logger.init_args.tracking_uri={uri}",
                                   "--trainer.logger.init_args.connect_timeout=2"])
    assert time.perf_counter() - start < 60
    assert f"MLflow tracking server {uri} did not answer within 2 s" in line


def test_a_server_that_accepts_but_never_answers_times_out():
    with socket.socket() as silent:  # listens (the kernel accepts connections) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.perf_counter()
        with pytest.raises(StoreError, match=r"did not answer within 1 s .*timed out"):
            check_reachable(uri, timeout=1.0)
        assert time.perf_counter() - start < 10


@pytest.mark.parametrize("status", [200, 401])
def test_a_server_that_answers_passes_whatever_its_status(status):
    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_reachable(f"http://127.0.0.1:{server.server_port}/", timeout=5)
    finally:
        server.shutdown()
    assert seen == ["/health"]


def test_the_timeout_setting_is_checked(monkeypatch):
    monkeypatch.setenv("SKINFLOW_TRACKING_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="SKINFLOW_TRACKING_TIMEOUT='soon' is not a number"):
        check_reachable("http://127.0.0.1:9")
    check_reachable("sqlite:///mlruns/mlflow.db")  # a local store needs no answer


STAGE2 = ["fit", "--config", str(REPO / "configs/experiment/stage2_tiny_synthetic.yaml")]


@pytest.mark.parametrize("command, args, message", [
    (WARMUP, ["--data.init_args.batch_size=0"], "batch_size=0 must be at least 1"),
    (WARMUP, ["--data.init_args.batch_size=-1"], "batch_size=-1 must be at least 1"),
    (WARMUP, ["--data.init_args.eval_batch_size=0"], "eval_batch_size=0 must be at least 1"),
    (WARMUP, ["--data.init_args.num_workers=-1"], "num_workers=-1 must be >= 0"),
    (WARMUP, ["--data.init_args.val_fraction=1.5"], "val_fraction=1.5 must be in [0, 1)"),
    (WARMUP, ["--data.init_args.test_fraction=-0.2"], "test_fraction=-0.2 must be in (0, 1)"),
    (WARMUP, ["--data.init_args.test_fraction=0"], "test_fraction=0.0 must be in (0, 1): a split with no test side"),
    (WARMUP, ["--data.init_args.val_fraction=0.5", "--data.init_args.test_fraction=0.5"], "val_fraction + test_fraction=1.0"),
    (WARMUP, ["--model.init_args.lr=-0.1"], "lr=-0.1 must be positive"),
    (WARMUP, ["--model.init_args.lr", "-0.1"], "lr=-0.1 must be positive"),  # a negative value after a space
    (WARMUP, ["--model.init_args.max_new_tokens=0"], "max_new_tokens=0 must be at least 1"),
    (WARMUP, ["--model.init_args.content_weight=-1"], "content_weight=-1.0 must be positive"),
    (WARMUP, ["--model.init_args.warmup_steps=-3"], "warmup_steps=-3 must be >= 0"),
    (WARMUP, ["--trainer.max_steps=-5"], "`max_steps` must be a non-negative integer or -1"),
    (STAGE2, ["--model.init_args.temperature=0"], "temperature=0.0 must be positive"),
    (STAGE2, ["--model.init_args.beta=-0.1"], "beta=-0.1 must be >= 0"),
    (STAGE2, ["--model.init_args.top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (STAGE2, ["--model.init_args.rollout_engine=vllm"], "rollout_engine='vllm' is not one of"),
])
def test_a_bad_number_is_one_line_naming_the_setting(tmp_path, monkeypatch, capsys, command, args, message):
    import skinflow.stages.base as base

    built = []
    real_build = base.build_backbone
    monkeypatch.setattr(base, "build_backbone", lambda spec: (built.append(spec), real_build(spec))[1])
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, [*command, *args, "--trainer.logger=false", "--data.init_args.progress=false"])
    assert message in line
    if "--model." in args[0]:
        assert not built  # refused before the backbone was built


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: [oops\n")
    line = one_line_error(capsys, ["fit", "--config", str(bad)])
    assert f"{bad}: not valid YAML at line 3" in line


def test_a_missing_composed_config_file_is_named(tmp_path, capsys):
    composed = tmp_path / "experiment.yaml"
    composed.write_text("model: ../model/missing.yaml\ntrainer:\n  callbacks: []\n")
    line = one_line_error(capsys, ["fit", "--config", str(composed)])
    assert f"{composed}: model: ../model/missing.yaml not found" in line
    line = one_line_error(capsys, ["fit", "--config", str(tmp_path / "nowhere.yaml")])
    assert "nowhere.yaml not found" in line


@pytest.mark.parametrize("content", ["", 'md5hash,label\n"abc,psoriasis\n'])
def test_an_empty_or_malformed_csv_is_named(tmp_path, content):
    from skinflow.data.datamodule import DataError, Fitzpatrick17kDataModule

    csv = tmp_path / "labels.csv"
    csv.write_text(content)
    (tmp_path / "images").mkdir()
    dm = Fitzpatrick17kDataModule(csv_path=str(csv), cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(DataError, match=rf"{csv}: not a readable CSV \("):
        dm.read_csv()


@pytest.mark.parametrize("command", [["synth", "--per-class", "1"], ["export", "--ckpt", "missing.ckpt"]])
def test_an_output_folder_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--out", "taken"])
    assert exit_info.value.code == 2
    assert "--out taken: is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


def test_skipping_every_stage_of_a_pipeline_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["pipeline", "--config", str(REPO / "configs/pipeline/demo.yaml"),
                                   "--skip", "warmup", "--skip", "stage1", "--skip", "stage2"])
    assert "every stage of" in line and "nothing to run" in line
    assert not (tmp_path / "mlruns").exists()  # no parent run was made


def test_a_corrupt_store_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_text("not an sqlite file")
    line = one_line_error(capsys, [*WARMUP, "--data.init_args.progress=false"])
    assert f"MLflow store {tmp_path}/mlruns/mlflow.db cannot be used (DatabaseError: file is not a database)" in line
    assert (tmp_path / "mlruns" / "mlflow.db").read_text() == "not an sqlite file"  # left as it was


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    import errno

    from skinflow.tracking import checkpoint_io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.os, "fsync", full)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, [*WARMUP, "--data.init_args.progress=false", "--data.init_args.synthetic_per_class=4",
                                   "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.logger=false",
                                   "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"])
    assert line.startswith("error: cannot write mlruns/") and line.endswith(".ckpt: No space left on device")
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left


def test_out_of_memory_at_the_first_step_is_one_line_naming_the_knobs(tmp_path, monkeypatch, capsys):
    """A GPU that runs out at the first step: the allocator's first line and the settings that lower the peak (batch
    size, gradient checkpointing, sharding), exit 2, not a 60-line traceback through Lightning."""
    import torch

    from skinflow.stages.warmup import WarmupStage

    def oom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has 2.1 GiB free.\nOf the ...")

    monkeypatch.setattr(WarmupStage, "training_step", oom)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, [*WARMUP, "--data.init_args.progress=false", "--data.init_args.synthetic_per_class=4",
                                   "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.logger=false",
                                   "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"])
    assert line.startswith("error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has 2.1 GiB free.);")
    for knob in ("--data.init_args.batch_size", "gradient_checkpointing true", "gpu_bf16_fsdp.yaml"):
        assert knob in line


def test_experiments_carry_mlflows_model_training_kind(tmp_path):
    from mlflow import MlflowClient

    from skinflow.tracking.store import ensure_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    new = ensure_experiment(uri, "fresh", (tmp_path / "a").as_uri())
    client = MlflowClient(uri)
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("older")  # made by an earlier kit: tagged on next use
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("older", "chosen"):
        ensure_experiment(uri, name, (tmp_path / "a").as_uri())
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"  # a user's choice kept


REAL_CHECKOUT = ["--model.init_args.backbone.preset=qwen2.5-vl-3b", "--trainer.logger=false"]


def test_a_missing_checkout_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, [*WARMUP, *REAL_CHECKOUT, f"--model.init_args.backbone.pretrained_path={tmp_path}/nope"])
    assert line == f"error: pretrained_path='{tmp_path}/nope': no such folder"


def test_an_incomplete_checkout_folder_names_the_missing_shard(tmp_path, monkeypatch, capsys):
    import json

    folder = tmp_path / "Qwen2.5-VL-3B-Instruct"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "model-00001-of-00002.safetensors"):
        (folder / name).write_text("{}")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, [*WARMUP, *REAL_CHECKOUT, f"--model.init_args.backbone.pretrained_path={folder}"])
    assert "is not a complete checkpoint folder: model-00002-of-00002.safetensors is missing" in line


def test_a_hub_id_while_offline_and_uncached_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, [*WARMUP, *REAL_CHECKOUT, "--model.init_args.backbone.pretrained_path=Qwen/Qwen2.5-VL-3B-Instruct"])
    assert "is a hub id, the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache" in line


def test_a_gpu_recipe_on_a_machine_without_a_gpu_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import torch

    import skinflow.stages.base as base

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    built = []
    monkeypatch.setattr(base, "build_backbone", lambda spec: built.append(spec))
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["fit", "--config", str(REPO / "configs/experiment/warmup_qwen2_5_vl_7b.yaml")])
    assert "trainer.accelerator='gpu' but this machine has no usable GPU" in line and not built


def test_audit_workers_zero_is_documented_in_help_not_silent(capsys):
    with pytest.raises(SystemExit):
        main(["audit-data", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--workers WORKERS processes hashing images; 0: one per CPU (default 0)" in text
    assert "--tiny-side TINY_SIDE an image whose shorter side has fewer pixels is listed as tiny (default 64)" in text
