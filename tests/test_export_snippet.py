"""EXPORT.md's script answers for a photograph exactly as the stage's own evaluation does: the same pixels, the same
prompt tokens (``<|image_pad|>`` expanded), the same greedy answer, with stock transformers and no torchvision or
skinflow import; and it says the image size and prompt the run used."""

from __future__ import annotations

import ast
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from skinflow.cli import main
from skinflow.data.collate import VisionLanguageCollator
from skinflow.data.formats import PROMPTS, Target
from skinflow.data.ontology import ONTOLOGY
from skinflow.data.transforms import eval_transform, to_rgb
from tests.conftest import REAL_SAMPLE

SIZE, TOKENS = 112, 20


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synth_dir):
    """A full-training tiny stage with moved weights, as a Lightning checkpoint records it (the DataModule's image
    size and mixed prompts, the stage's max_new_tokens), exported; and a photograph that is not square."""
    from skinflow.models.backbone import BackboneSpec
    from skinflow.stages.warmup import WarmupStage

    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(1)
    stage = WarmupStage(BackboneSpec(), max_new_tokens=TOKENS)
    with torch.no_grad():
        for p in stage.trainable_parameters():
            p.add_(0.5 * torch.randn_like(p))
    checkpoint = {"datamodule_hyper_parameters": {"image_size": SIZE, "prompt": "mixed"},
                  "hyper_parameters": {"max_new_tokens": TOKENS}}
    stage.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, folder / "stage.ckpt")
    main(["export", "--ckpt", str(folder / "stage.ckpt"), "--out", str(folder / "out")])
    photos = sorted((REAL_SAMPLE / "images").glob("*.jpg"))[:1] or sorted((synth_dir / "images").glob("*"))[:1]
    image = Image.open(photos[0]).convert("RGB")
    image.crop((0, 0, image.width, int(image.height * 0.7))).save(folder / "out" / "lesion.png")  # wider than tall
    stage.eval()
    return folder / "out", stage


def kit_batch(stage, path):
    rgb = eval_transform(SIZE)(image=to_rgb(Image.open(path)))["image"]
    target = Target(label=ONTOLOGY.labels[0], nine="x", three="y")
    return VisionLanguageCollator(stage.processor, prompt="diagnosis")([{"image": rgb, "target": target}])


def test_export_md_states_size_prompt_and_the_image_pad_expansion(exported):
    out, _ = exported
    page = (out / "EXPORT.md").read_text()
    assert f"resized to {SIZE} px" in page and "the `diagnosis` prompt" in page and "<|image_pad|>" in page
    script = (out / "run_exported.py").read_text()
    assert f"```python\n{script.rstrip()}\n```" in page  # the page's snippet is the script
    assert f"SIZE = {SIZE}" in script and repr(PROMPTS["diagnosis"]) in script and f"max_new_tokens={TOKENS}" in script
    imported = {node.names[0].name.split(".")[0] if isinstance(node, ast.Import) else node.module.split(".")[0]
                for node in ast.walk(ast.parse(script)) if isinstance(node, (ast.Import, ast.ImportFrom))}
    assert imported == {"sys", "cv2", "numpy", "torch", "PIL", "transformers"}  # no skinflow, no torchvision


def test_the_script_gives_the_stages_own_pixels_tokens_and_answer(exported, monkeypatch, capsys):
    from transformers import Qwen2_5_VLForConditionalGeneration

    out, stage = exported
    batch = kit_batch(stage, out / "lesion.png")
    expected = stage.generate_text(batch)[0]
    seen = {}
    original = Qwen2_5_VLForConditionalGeneration.generate

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "generate", spy)
    monkeypatch.chdir(out)
    monkeypatch.setattr(sys, "argv", ["run_exported.py", "lesion.png"])
    runpy.run_path(str(out / "run_exported.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert torch.equal(seen["pixel_values"], batch["pixel_values"])
    assert torch.equal(seen["image_grid_thw"], batch["image_grid_thw"])
    assert seen["input_ids"].tolist() == batch["prompt_ids"].tolist()  # one prompt: no padding
    assert int((seen["input_ids"] == stage.processor.image_token_id).sum()) == int(batch["image_grid_thw"].prod()) // 4
    assert printed == expected + "\n" and expected.strip()


def test_the_script_runs_alone_in_a_fresh_interpreter(exported):
    out, stage = exported
    expected = stage.generate_text(kit_batch(stage, out / "lesion.png"))[0]
    done = subprocess.run([sys.executable, "run_exported.py", "lesion.png"], cwd=out, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == expected + "\n"
    assert np.asarray(Image.open(out / "lesion.png")).shape[0] != np.asarray(Image.open(out / "lesion.png")).shape[1]
