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
