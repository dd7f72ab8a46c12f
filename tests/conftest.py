import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_SAMPLE = SHARED_DATA / "real-derm-sample"


def require_real_sample() -> Path:
    if not (REAL_SAMPLE / "labels.csv").exists():
        pytest.skip(f"real Fitzpatrick17k sample not found at {REAL_SAMPLE} (it lives in ../shared/data beside the repo)")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset (6 images per class) shared by the session."""
    from skinflow.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, per_class=6, seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny():
    """The tiny backbone and its processor (full training)."""
    from skinflow.models.backbone import BackboneSpec, build_backbone

    return build_backbone(BackboneSpec())


def one_image_per_label(synth_dir: Path, folder: Path, n: int):
    """A label CSV in ``folder`` of the first synthetic image of each of ``n`` labels, leaving out lichen planus (the
    scripted verifiers' and judges' wrong answer); returns its path and rows."""
    import pandas as pd

    df = pd.read_csv(synth_dir / "labels.csv", dtype=str, keep_default_na=False)
    df = df[df["label"] != "lichen planus"].groupby("label").head(1).head(n).reset_index(drop=True)
    csv_path = folder / "labels.csv"
    df.to_csv(csv_path, index=False)
    return csv_path, df


def pipeline_in(folder: Path, *args: str) -> dict:
    """``python -m skinflow pipeline ARGS`` run from ``folder`` (relative data and store paths land there), for
    module-scoped fixtures, which cannot use ``monkeypatch.chdir``."""
    from skinflow.pipeline import pipeline_command

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return pipeline_command(list(args))
    finally:
        os.chdir(cwd)


GRID_ROWS = [
    {"name": "no-stage1-no-dve", "factors": {"stage1": "no", "dve": "off"}, "skip": ["stage1"]},
    {"name": "stage1-no-dve", "factors": {"stage1": "yes", "dve": "off"}},
    {"name": "stage1-dve", "factors": {"stage1": "yes", "dve": "on"}, "args": ["--model.init_args.backbone.dve.enabled=true"]},
]


def write_grid(folder: Path, rows: list[dict], seeds=(0, 1), name: str = "grid-test") -> Path:
    """An ablation file over the demo pipeline with the fast test settings of every stage."""
    import yaml

    from tests.test_pipeline import COMMON, FAST

    stage_args = {stage: [*COMMON, *args] for stage, args in FAST.items()}
    rows = [dict(row, stage_args={k: v + row.get("stage_args", {}).get(k, []) for k, v in stage_args.items()}) for row in rows]
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": name, "pipeline": str(REPO / "configs/pipeline/demo.yaml"),
                                    "seeds": list(seeds), "rows": rows}))
    return path


@pytest.fixture(scope="session")
def ablation_grid(tmp_path_factory):
    """The paper's three rows x 2 seeds on the tiny preset (fast settings), interrupted in its third cell and
    resumed: ``{"folder", "uri", "first_calls", "second_calls", "first_error", "result", "failed_run"}``.
    Shared by the ablation, notebook and compare tests (one grid run for all of them)."""
    import skinflow.ablation as ablation_module

    folder = tmp_path_factory.mktemp("grid")
    grid = write_grid(folder, GRID_ROWS)
    calls: list[str] = []
    real_run = ablation_module.run_pipeline
    interrupt = {"at": 3}

    def run_pipeline(pipeline, skip, extra, tags, all_args):
        calls.append(tags["skinflow.row"] + "/" + tags["skinflow.seed"])
        if len(calls) == interrupt["at"]:  # stage2 of this cell dies: its parent run is left FAILED
            extra = {**extra, "stage2": [*extra.get("stage2", []), "--trainer.max_steps=oops"]}
        return real_run(pipeline, skip, extra, tags, all_args)

    cwd = os.getcwd()
    os.chdir(folder)
    ablation_module.run_pipeline = run_pipeline
    try:
        try:
            ablation_module.ablate_command(["--config", str(grid)])
            first_error = None
        except SystemExit as error:
            first_error = error
        first_calls = list(calls)
        calls.clear()
        interrupt["at"] = -1
        result = ablation_module.ablate_command(["--config", str(grid)])
    finally:
        ablation_module.run_pipeline = real_run
        os.chdir(cwd)
    return {"folder": folder, "uri": f"sqlite:///{folder}/mlruns/mlflow.db", "first_calls": first_calls,
            "second_calls": list(calls), "first_error": first_error, "result": result}


@pytest.fixture(scope="session")
def qwen_standin(tmp_path_factory) -> Path:
    """A folder laid out as a Hugging Face download of Qwen2.5-VL-3B-Instruct (real tokenizer, chat template and
    generation config; random weights at CPU size), built once per session (about 6 s)."""
    pytest.importorskip("dashscope", reason="the stand-in checkout needs the dashscope test extra (pip install -e '.[dev]')")
    from skinflow.models.standin import build_standin

    return build_standin(tmp_path_factory.mktemp("Qwen2.5-VL-3B-Instruct"))
