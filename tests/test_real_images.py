"""The images the model sees are the photographs as a person sees them (issue 29): after the DataModule, the
collator and the processor, a batch's pixels undo to the photograph's evaluation square exactly, in RGB order, and
each image sits beside its own record's label. Runs on the real sample when ../shared/data has it, else on the
synthetic lesions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skinflow.data.transforms import eval_transform, to_rgb
from tests.conftest import REAL_SAMPLE


@pytest.fixture(scope="module")
def evaluated(tiny, synth_dir, tmp_path_factory):
    from skinflow.data.datamodule import Fitzpatrick17kDataModule

    _, processor = tiny
    csv = REAL_SAMPLE / "labels.csv" if (REAL_SAMPLE / "labels.csv").exists() else synth_dir / "labels.csv"
    dm = Fitzpatrick17kDataModule(csv_path=str(csv), cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False,
                                  image_size=112, batch_size=8, drop_wrongly_labelled=False)
    dm.processor = processor
    dm.setup("fit")
    dataset = dm.splits["val"]
    items = [dataset[i] for i in range(8)]
    batch = dm.collator("val")(items)
    return dm, dataset, items, batch


def test_a_batch_undoes_to_each_records_own_photograph(evaluated):
    dm, dataset, items, batch = evaluated
    seen = dm.processor.pixels_to_images(batch["pixel_values"], batch["image_grid_thw"])
    files = {row["md5hash"]: dataset.image_dir / row["image_file"] for row in dataset.records}
    for image, target in zip(seen, batch["targets"]):
        with Image.open(files[target.md5hash]) as photo:
            square = eval_transform(112)(image=to_rgb(photo))["image"] / 255.0
        assert image.shape == square.shape == (112, 112, 3)
        assert np.abs(image - square).max() < 1e-5, target.md5hash  # normalised, patched and merged, nothing else


def test_channel_statistics_are_the_photographs_in_rgb_order(evaluated):
    """Per image, the mean of each channel of what the model sees is the photograph's own (padding by reflection
    moves it by little), and swapping red and blue would not pass: skin photographs are redder than blue."""
    dm, dataset, items, batch = evaluated
    seen = dm.processor.pixels_to_images(batch["pixel_values"], batch["image_grid_thw"])
    files = {row["md5hash"]: dataset.image_dir / row["image_file"] for row in dataset.records}
    reds, blues = [], []
    for image, target in zip(seen, batch["targets"]):
        with Image.open(files[target.md5hash]) as photo:
            original = to_rgb(photo) / 255.0
        assert np.abs(image.mean((0, 1)) - original.mean((0, 1))).max() < 0.05, target.md5hash
        assert abs(image.std() - original.std()) < 0.05, target.md5hash
        reds.append(image[..., 0].mean())
        blues.append(image[..., 2].mean())
    assert np.mean(reds) > np.mean(blues)


def test_the_batch_targets_are_the_items_records(evaluated):
    _, dataset, items, batch = evaluated
    labels = dict(zip(dataset.records["md5hash"], dataset.records["label"]))
    assert [t.md5hash for t in batch["targets"]] == [item["target"].md5hash for item in items]
    assert all(labels[t.md5hash] == t.label for t in batch["targets"])


EPOCHS = 8  # the short fit: at 3 epochs the recipe still gave one answer to every image (seed 0)


def short_fit_first_answers(tmp_path, seed: int = 0, extra: tuple[str, ...] = ()) -> list[str]:
    """The real-sample recipe fitted for ``EPOCHS`` epochs (validation at the end, no test, no logger): the first answer it
    gives for each validation image."""
    from skinflow.data.formats import parse_answer
    from skinflow.launcher import lightning_cli
    from skinflow.stages.base import SkinflowStage
    from tests.conftest import REPO

    answers: list[str] = []
    original = SkinflowStage.generate_text

    def recording(self, batch):
        texts = original(self, batch)
        if self.trainer is not None and self.trainer.validating:
            answers.extend((parse_answer(t).labels or ["-"])[0] for t in texts)
        return texts

    SkinflowStage.generate_text = recording
    try:
        lightning_cli(["fit", "--config", str(REPO / "configs/experiment/warmup_tiny_real_sample.yaml"),
                       f"--seed_everything={seed}", f"--data.init_args.seed={seed}", f"--trainer.max_epochs={EPOCHS}",
                       f"--trainer.check_val_every_n_epoch={EPOCHS}", "--test_after_fit=false", "--trainer.logger=false",
                       "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                       f"--trainer.default_root_dir={tmp_path}", *extra])
    finally:
        SkinflowStage.generate_text = original
    return answers


def test_the_real_sample_recipe_does_not_collapse_to_one_answer(tmp_path, monkeypatch):
    """A short fit of the recipe on the photographs: the validation images get many different first answers, not
    one list for all (the failure the recipe had: 9 labels on 292 test images after 18 epochs at seed 0, the same
    list for every image in the earlier ablation). The bound held in every measured run (docs/results.md)."""
    from tests.conftest import REPO, require_real_sample

    require_real_sample()
    monkeypatch.chdir(REPO)  # the recipe's data paths are relative to the repository root
    answers = short_fit_first_answers(tmp_path)
    assert len(answers) == 165
    assert len(set(answers)) >= DISTINCT_AFTER_SHORT_FIT, sorted(set(answers))


# 8 epochs, seed 0: 9 distinct (seed 1: 10); with the stem 8 (10); with the recipe's depths (2 blocks, 1 language layer)
# 6 (6); without the label head 3, after 3 epochs 1 (docs/results.md)
DISTINCT_AFTER_SHORT_FIT = 5
