"""``Fitzpatrick17kDataModule``: CSV + image folder -> checked records -> splits -> augmented, prompted batches.

``prepare_data`` (rank 0) reads the CSV, validates it, checks every image (progress bar), and caches the clean
record table as a ``datasets.Dataset`` under ``cache_dir`` keyed by a fingerprint of the CSV, the image
folder's listing and the options; a second run reuses it. Missing or unreadable images are counted, listed in
``<cache>/report.json`` and skipped with a warning (``strict_images: true`` makes them fatal). ``setup``
filters labels, assigns the split preset and builds the datasets; batches are collated through the backbone's
processor (taken from the LightningModule, so model and data always share one tokenizer).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from skinflow.data.captions import read_captions
from skinflow.data.collate import MIXED, PromptChoice, VisionLanguageCollator
from skinflow.data.formats import CAPTION_COLUMNS, FREE_TEXT, IMAGE_SUFFIXES, PROMPTS, DataError, Target
from skinflow.data.names import MD5_PATTERN, invalid_ids
from skinflow.data.order import EpochShuffle, EvenEvalShards, ResumableLoader, reseed
from skinflow.data.ontology import ONTOLOGY, SKIN_TYPES
from skinflow.data.splits import PRESETS, SplitPreset, assign_splits, clusters_on_two_sides, read_clusters
from skinflow.data.synthetic import RENDER_VERSION, generate
from skinflow.data.transforms import eval_transform, to_rgb, train_transform
from skinflow.errors import ConfigError, require

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("md5hash", "label")
WRONGLY_LABELLED = "3 Wrongly labelled"


def differential(label: str, candidates: list[str], counts: dict[str, int]) -> tuple[str, ...]:
    """``label`` then the five candidates closest in the label tree (same nine-group, then same three-class),
    ties broken by frequency then name: the ranked differential the warmup teaches.

    >>> differential("melanoma", ["psoriasis", "nevocytic nevus", "malignant melanoma", "basal cell carcinoma"], {})
    ('melanoma', 'malignant melanoma', 'basal cell carcinoma', 'nevocytic nevus', 'psoriasis')
    """
    def distance(other: str) -> tuple:
        tree = 0 if ONTOLOGY.nine(other) == ONTOLOGY.nine(label) else 1 if ONTOLOGY.three(other) == ONTOLOGY.three(label) else 2
        return tree, -counts.get(other, 0), other

    others = sorted((c for c in candidates if c != label), key=distance)
    return (label, *others[:5])


class RecordDataset(Dataset):
    """One split: records (a ``datasets.Dataset``) + image folder + transform -> dicts for the collator."""

    def __init__(self, records, image_dir: Path, transform, differentials: dict[str, tuple[str, ...]],
                 fitzpatrick_column: str, with_caption: bool, captions: dict[str, dict[str, str]] | None = None):
        self.records, self.image_dir, self.transform = records, image_dir, transform
        self.differentials, self.fst_column, self.with_caption = differentials, fitzpatrick_column, with_caption
        self.captions = captions or {}

    def __len__(self) -> int:
        return len(self.records)

    def target(self, row: dict) -> Target:
        caption = {}
        if self.with_caption:  # the captions file wins over caption columns of the CSV
            caption = self.captions.get(row["md5hash"]) or {name: row[col] for name, col in CAPTION_COLUMNS.items() if row.get(col)}
        return Target(
            label=row["label"], nine=ONTOLOGY.nine(row["label"]), three=ONTOLOGY.three(row["label"]),
            fitzpatrick=int(row[self.fst_column]), md5hash=row["md5hash"], caption=caption or None,
            differential=self.differentials.get(row["label"], (row["label"],)),
        )

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key``: an index, or ``(index, item_seed)`` from ``EpochShuffle``: the augmentation and the ``mixed``
        prompt draw then depend on the item's seed alone (``skinflow.data.order``)."""
        i, seed, *padding = key if isinstance(key, tuple) else (key, None)
        row = self.records[i]
        try:
            with Image.open(self.image_dir / row["image_file"]) as img:
                image = to_rgb(img)
        except Exception as err:  # noqa: BLE001  changed or damaged since the table was built: skipped, counted
            return {"skipped": f"{row['md5hash']} ({self.image_dir / row['image_file']}: {type(err).__name__}: {err})"}
        if seed is not None:
            reseed(self.transform, seed)
        return {"image": self.transform(image=image)["image"], "target": self.target(row), "seed": seed,
                "padding": bool(padding)}  # (index, None, "padding"): keeps a rank in step, counts for nothing


class MixedRecords(Dataset):
    """Training splits of several DataModules as one (``mix_train``): index ``i`` runs through the parts in order;
    an ``EpochShuffle`` key ``(index, seed, ...)`` keeps its seed, so each item's augmentation and prompt draw are
    its own whichever part it comes from."""

    def __init__(self, parts: list[RecordDataset]):
        self.parts = parts
        self.offsets = np.cumsum([0, *(len(part) for part in parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def part_of(self, i: int) -> tuple[RecordDataset, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} outside the {len(self)} mixed training records")
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k], i - int(self.offsets[k])

    @property
    def records(self):
        """The first part's records (the DataModule's own data; checks that read a sample of records use it)."""
        return self.parts[0].records

    def target(self, row: dict) -> Target:
        return self.parts[0].target(row)

    def __getitem__(self, key: int | tuple) -> dict:
        i, *rest = key if isinstance(key, tuple) else (key,)
        part, j = self.part_of(int(i))
        return part[(j, *rest)] if rest else part[j]


class Fitzpatrick17kDataModule(LightningDataModule):
    """Fitzpatrick17k-style data: the label CSV plus a folder of ``<md5hash>.jpg|png`` images.

    Args:
        csv_path: label CSV (Fitzpatrick17k columns; caption columns optional). ``None``: the embedded synthetic
            lesions, generated into ``cache_dir`` on first use.
        image_dir: folder of images; default ``<csv folder>/images``.
        synthetic_per_class: images per class when generating synthetic data.
        synthetic_seed: seed of the synthetic generator.
        cache_dir: where synthetic images, the cached record table and the data report go.
        split: ``random`` | ``a12`` | ``a34`` | ``a56`` | ``source_dermaamin`` | ``source_atlas`` | ``manifest`` |
            ``clean`` (one image per near-duplicate cluster, 70/10/20 stratified by label; needs ``clusters_path``).
            See ``skinflow.data.splits``.
        clusters_path: the near-duplicate clusters of ``python -m skinflow audit-data`` (its ``clusters.csv``):
            every preset keeps each cluster on one side of the split. Without it the data report warns that
            near-duplicates were not checked (not for the embedded synthetic lesions, each drawn afresh).
        exclude_path: CSV with an ``md5hash`` column: images to leave out of every split (counted in the data
            report).
        val_fraction: share of validation rows (of the training side for holdout presets).
        test_fraction: share of test rows for ``random``.
        split_seed: seed of the split (which image goes to train, val or test).
        seed: seed of the training randomness: shuffling, augmentation and the ``mixed`` prompt draws; ``None``
            uses ``split_seed``. Runs that differ only in ``seed`` see the same split in another order (the
            ablation grid sets it per seed).
        split_manifest: CSV with ``md5hash,split`` columns for ``split: manifest``.
        labels: keep only these labels.
        min_images_per_label: drop labels with fewer images (after cleaning).
        drop_wrongly_labelled: drop rows with ``qc == "3 Wrongly labelled"``.
        fitzpatrick_column: skin-type column (``fitzpatrick_scale`` as in the literature, or ``fitzpatrick_centaur``).
        image_size: side of the square model input, a multiple of 28 (patch 14 x merge 2).
        augment: albumentations training augmentation on/off.
        colour_strength: bound of the brightness/contrast jitter (see ``skinflow.data.transforms``).
        prompt: ``warmup`` | ``caption`` | ``diagnosis`` (see ``skinflow.data.formats.PROMPTS``), or ``mixed``: a
            prompt drawn per training item, with its matching target (evaluation uses ``warmup``).
        with_caption: put caption fields (where the data has them) into the targets.
        captions_path: CSV or JSONL of reference captions keyed by ``md5hash`` (see ``skinflow.data.captions``);
            its captions replace caption columns of the label CSV.
        require_caption: leave out records without a caption (Stage I); the count per split is logged and
            written to the data report.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default: ``batch_size``).
        num_workers: DataLoader workers.
        strict_images: raise on a missing or unreadable image instead of skipping it.
        progress: show the image-check progress bar.
        id_pattern: regular expression every ``md5hash`` must match in full (default: 32 lower-case hex
            characters, Fitzpatrick17k's MD5 of the image bytes); ids name image files, so whatever the pattern,
            an id must also be a plain file name (no ``/``, ``..``, absolute path). A row that fails stops loading
            with an error naming it.
        mix_train: init args of a second DataModule whose training split joins this one's, e.g. ``{}`` (the
            embedded synthetic lesions, which carry caption fields) beside real photographs that have none, so one
            warmup learns both the real labels and the caption schema. Its ``image_size``, ``seed`` and
            ``progress`` follow this DataModule; validation and test stay this DataModule's. The data report
            counts its records (``mixed_in``).
    """

    def __init__(
        self,
        csv_path: str | None = None,
        image_dir: str | None = None,
        synthetic_per_class: int = 96,
        synthetic_seed: int = 0,
        cache_dir: str = ".cache/skinflow",
        split: SplitPreset = "random",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        seed: int | None = None,
        split_manifest: str | None = None,
        clusters_path: str | None = None,
        exclude_path: str | None = None,
        labels: list[str] | None = None,
        min_images_per_label: int = 0,
        drop_wrongly_labelled: bool = True,
        fitzpatrick_column: str = "fitzpatrick_scale",
        image_size: int = 112,
        augment: bool = True,
        colour_strength: float = 0.1,
        prompt: PromptChoice = "warmup",
        with_caption: bool = True,
        captions_path: str | None = None,
        require_caption: bool = False,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        strict_images: bool = False,
        progress: bool = True,
        id_pattern: str = MD5_PATTERN,
        mix_train: dict | None = None,
    ):
        super().__init__()
        if split not in PRESETS:
            raise ConfigError(f"split={split!r} is not one of {PRESETS}")
        if image_size % 28:
            raise ConfigError(f"image_size={image_size} must be a multiple of 28 (patch 14 x spatial merge 2)")
        if prompt not in PROMPTS and prompt != MIXED:
            raise ConfigError(f"prompt={prompt!r} is not one of {(*PROMPTS, MIXED)}")
        require(0 <= val_fraction < 1, "val_fraction", val_fraction, "must be in [0, 1)")
        require(0 < test_fraction < 1, "test_fraction", test_fraction, "must be in (0, 1): a split with no test side "
                                                                       "leaves fit without test metrics")
        require(val_fraction + test_fraction < 1, "val_fraction + test_fraction", val_fraction + test_fraction,
                "must be below 1 (nothing would be left to train on)")
        require(batch_size >= 1, "batch_size", batch_size, "must be at least 1")
        require(eval_batch_size is None or eval_batch_size >= 1, "eval_batch_size", eval_batch_size, "must be at least 1 (or null: batch_size)")
        require(num_workers >= 0, "num_workers", num_workers, "must be >= 0 (0: load in the main process)")
        require(image_size >= 28, "image_size", image_size, "must be at least 28")
        require(synthetic_per_class >= 1, "synthetic_per_class", synthetic_per_class, "must be at least 1")
        require(min_images_per_label >= 0, "min_images_per_label", min_images_per_label, "must be >= 0")
        require(colour_strength >= 0, "colour_strength", colour_strength, "must be >= 0")
        if mix_train is not None:
            fixed = sorted({"image_size", "seed", "progress", "mix_train"} & set(mix_train))
            require(not fixed, "mix_train", fixed, "sets keys that follow this DataModule; leave them out")
            unknown = sorted(set(mix_train) - set(inspect.signature(Fitzpatrick17kDataModule).parameters))
            require(not unknown, "mix_train", unknown, "are not Fitzpatrick17kDataModule arguments")
        self.save_hyperparameters(logger=False)
        self.processor = None
        self.report: dict = {}
        self.splits: dict[str, RecordDataset] = {}
        self._train_sampler: EpochShuffle | None = None
        self.skipped_at_load: list[str] = []
        self._resume_order: dict | None = None

    # -- paths -------------------------------------------------------------------------------------------------
    @property
    def csv_file(self) -> Path:
        if self.hparams.csv_path is not None:
            return Path(self.hparams.csv_path)
        name = f"synthetic-v{RENDER_VERSION}-{self.hparams.synthetic_per_class}-seed{self.hparams.synthetic_seed}"
        return Path(self.hparams.cache_dir) / name / "labels.csv"

    @property
    def image_folder(self) -> Path:
        return Path(self.hparams.image_dir) if self.hparams.image_dir else self.csv_file.parent / "images"

    def _fingerprint(self) -> str:
        """The cached table's key: everything that changes it. The CSV's bytes, the image folder's resolved path,
        every file in it by name, size and modification time (an image rewritten in place changes the key), and
        the options the table depends on."""
        h = hashlib.sha256(self.csv_file.read_bytes())
        h.update(f"{self.image_folder.resolve()}\n".encode())
        if self.image_folder.is_dir():
            for entry in sorted(os.scandir(self.image_folder), key=lambda e: e.name):
                info = entry.stat()
                h.update(f"{entry.name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
        keys = ("drop_wrongly_labelled", "fitzpatrick_column", "id_pattern", "strict_images")
        h.update(json.dumps({k: self.hparams[k] for k in keys}, sort_keys=True).encode())
        return h.hexdigest()[:16]

    @staticmethod
    def _complete(table_dir: Path) -> bool:
        return (table_dir / "report.json").is_file() and (table_dir / "dataset_info.json").is_file()

    def _table_dir(self) -> Path:
        return Path(self.hparams.cache_dir) / "tables" / self._fingerprint()

    # -- prepare ---------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.hparams.csv_path is None and not self.csv_file.exists():
            generate(self.csv_file.parent, self.hparams.synthetic_per_class, self.hparams.synthetic_seed,
                     progress=self.hparams.progress)
        if not self.csv_file.exists():
            raise DataError(f"label CSV not found: {self.csv_file}")
        if not self.image_folder.is_dir():
            raise DataError(f"image folder not found: {self.image_folder} (the images of {self.csv_file}; set image_dir)")
        table_dir = self._table_dir()
        if self._complete(table_dir):
            return
        if table_dir.exists():  # a table left incomplete (an older kit's crash mid-write): build it again
            log.warning("data cache %s is incomplete; rebuilding it", table_dir)
            shutil.rmtree(table_dir)
        table, report = self.clean_table(self.read_csv())
        import datasets

        # written beside its final place and renamed in one step: a crash leaves no half-written table behind
        partial = table_dir.with_name(f"{table_dir.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        datasets.Dataset.from_pandas(table, preserve_index=False).save_to_disk(str(partial))
        (partial / "report.json").write_text(json.dumps(report, indent=2))
        try:
            os.replace(partial, table_dir)
        except OSError:  # another process renamed its identical table into place first
            shutil.rmtree(partial, ignore_errors=True)
            if not self._complete(table_dir):
                raise

    def read_csv(self) -> pd.DataFrame:
        """Read and validate the CSV: required columns, known labels (errors name the column or row)."""
        try:
            df = pd.read_csv(self.csv_file, dtype={"md5hash": str, "qc": str, "url": str, "url_alphanum": str},
                             keep_default_na=False)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise DataError(f"{self.csv_file}: not a readable CSV ({str(err).splitlines()[0]})") from None
        fst = self.hparams.fitzpatrick_column
        for column in (*REQUIRED_COLUMNS, fst):
            if column not in df.columns:
                raise DataError(f"{self.csv_file}: required column {column!r} is missing (columns: {list(df.columns)})")
        bad_ids = invalid_ids(df["md5hash"].tolist(), self.hparams.id_pattern)
        if bad_ids:
            row = bad_ids[0]
            raise DataError(
                f"{self.csv_file} row {row + 2}: md5hash {df['md5hash'].iloc[row]!r} is not a valid image id (it must "
                f"match {self.hparams.id_pattern!r} and be a plain file name inside {self.image_folder}; "
                f"{len(bad_ids)} such rows; set id_pattern for other ids)"
            )
        unknown = ~df["label"].isin(ONTOLOGY.labels)
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise DataError(
                f"{self.csv_file} row {row + 2} (md5hash {df['md5hash'].iloc[row]}): label {df['label'].iloc[row]!r} is not "
                f"one of the 114 Fitzpatrick17k labels ({int(unknown.sum())} such rows)"
            )
        df[fst] = self._skin_types(df, fst)
        for column in ("qc", "url_alphanum", *CAPTION_COLUMNS.values()):
            if column not in df.columns:
                df[column] = ""
        return df

    def _skin_types(self, df: pd.DataFrame, fst: str) -> pd.Series:
        """Fitzpatrick types 1-6, or -1 (unknown, as Fitzpatrick17k writes it). Anything else (0, 7, 3.7, text,
        an empty cell) is an error naming the first such row: a skin type is a label the fairness metrics use."""
        column = df[fst]
        text = column.astype(str).str.strip()
        valid = text.isin([str(v) for v in (*SKIN_TYPES, -1)] + [f"{v}.0" for v in (*SKIN_TYPES, -1)])
        if not valid.all():
            row = int(np.flatnonzero(~valid)[0])
            raise DataError(
                f"{self.csv_file} row {row + 2} (md5hash {df['md5hash'].iloc[row]}): {fst} {text.iloc[row]!r} is "
                f"not a Fitzpatrick skin type (1-6, or -1 for unknown; {int((~valid).sum())} such rows)")
        return text.astype(float).astype(int)

    def _find_image(self, md5: str) -> str | None:
        for suffix in IMAGE_SUFFIXES:
            if (self.image_folder / f"{md5}{suffix}").is_file():
                return f"{md5}{suffix}"
        return None

    def clean_table(self, df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        """Drop duplicates, wrongly-labelled rows and bad images; return the clean table and a report."""
        from tqdm.auto import tqdm

        report: dict = {"csv": str(self.csv_file), "image_dir": str(self.image_folder), "rows": len(df)}
        duplicated = df["md5hash"].duplicated(keep="first")
        report["duplicate_md5hash"] = df.loc[duplicated, "md5hash"].tolist()
        if duplicated.any():
            warnings.warn(f"{self.csv_file}: {int(duplicated.sum())} rows repeat an md5hash; keeping the first of each")
        df = df[~duplicated]
        wrong = df["qc"] == WRONGLY_LABELLED
        report["wrongly_labelled_dropped"] = int(wrong.sum()) if self.hparams.drop_wrongly_labelled else 0
        if self.hparams.drop_wrongly_labelled:
            df = df[~wrong]
        files, bad = [], []
        for md5 in tqdm(df["md5hash"], desc=f"checking images in {self.image_folder}", disable=not self.hparams.progress, unit="img"):
            name = self._find_image(md5)
            reason = None if name else "missing"
            if name:
                try:
                    with Image.open(self.image_folder / name) as img:
                        to_rgb(img)
                except Exception as err:  # any decoder error means the file is unusable
                    reason = f"unreadable: {type(err).__name__}: {err}"
            if reason:
                bad.append({"md5hash": md5, "reason": reason})
            files.append(None if reason else name)
        report["bad_images"] = bad
        if bad:
            listing = ", ".join(f"{b['md5hash']} ({b['reason']})" for b in bad[:5])
            message = f"{len(bad)} of {len(df)} images in {self.image_folder} are missing or unreadable: {listing}"
            if self.hparams.strict_images:
                raise DataError(message)
            warnings.warn(message + "; skipped (listed in the data report)")
        df = df.assign(image_file=files)
        df = df[df["image_file"].notna()]
        report["kept"] = len(df)
        if not len(df):
            raise DataError(f"{self.csv_file}: none of its {report['rows']} rows has a usable image in {self.image_folder} "
                            f"({len(bad)} missing or unreadable, e.g. {bad[0] if bad else None})")
        columns = ["md5hash", "label", self.hparams.fitzpatrick_column, "qc", "url_alphanum", "image_file", *CAPTION_COLUMNS.values()]
        return df[columns].reset_index(drop=True), report

    # -- setup -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        import datasets

        table_dir = self._table_dir()
        if not self._complete(table_dir):
            self.prepare_data()
        columns = ["md5hash", "label", self.hparams.fitzpatrick_column, "url_alphanum", *CAPTION_COLUMNS.values()]
        try:
            records = datasets.load_from_disk(str(table_dir))
            df = records.select_columns(columns).to_pandas()
        except Exception as err:  # noqa: BLE001  a damaged cache (truncated arrow file...): pyarrow raises many kinds
            log.warning("data cache %s is damaged (%s: %s); rebuilding it", table_dir, type(err).__name__, err)
            shutil.rmtree(table_dir)
            self.prepare_data()
            records = datasets.load_from_disk(str(table_dir))
            df = records.select_columns(columns).to_pandas()
        self.report = json.loads((table_dir / "report.json").read_text())
        self.report["table"] = str(table_dir)
        groups, keepers = self._clusters(df)
        keep = self._label_filter(df) & ~self._excluded(df)
        assigned = assign_splits(
            df[keep], self.hparams.split, self.hparams.val_fraction, self.hparams.test_fraction,
            self.hparams.split_seed, self.hparams.split_manifest, self.hparams.fitzpatrick_column,
            groups=None if groups is None else groups[keep], keep=None if keepers is None else keepers[keep],
        ).reindex(df.index, fill_value="drop")
        self._cluster_report(df, keep, assigned, groups)
        train_labels = df.loc[assigned == "train", "label"]
        counts = train_labels.value_counts().to_dict()
        candidates = sorted(counts)
        differentials = {label: differential(label, candidates, counts) for label in df["label"].unique()}
        size = self.hparams.image_size
        transforms = {
            "train": train_transform(size, self.hparams.colour_strength, self.training_seed) if self.hparams.augment else eval_transform(size),
            "val": eval_transform(size), "test": eval_transform(size),
        }
        captions = self._captions(df["md5hash"])
        has_caption = self._has_caption(df, captions)
        self.report["without_caption_dropped"] = {}
        for name in ("train", "val", "test"):
            in_split = (assigned == name).to_numpy().copy()
            if self.hparams.require_caption:
                self.report["without_caption_dropped"][name] = int((in_split & ~has_caption).sum())
                in_split &= has_caption
            self.splits[name] = RecordDataset(
                records.select(np.flatnonzero(in_split)), self.image_folder, transforms[name], differentials,
                self.hparams.fitzpatrick_column, self.hparams.with_caption, captions,
            )
        if any(self.report["without_caption_dropped"].values()):
            log.warning("require_caption: left out records without a caption: %s", self.report["without_caption_dropped"])
        if self.hparams.mix_train is not None:
            self._mix_in()
        self.report["splits"] = {name: len(ds) for name, ds in self.splits.items()}
        self.report["dropped_by_split_or_filter"] = int((assigned == "drop").sum())
        self.report["labels"] = candidates
        log.info("data: %s", {k: self.report[k] for k in ("rows", "kept", "splits")})

    def _mix_in(self) -> None:
        """Join ``mix_train``'s training split to this one's (its own table, split, captions and transform)."""
        other = Fitzpatrick17kDataModule(**self.hparams.mix_train, image_size=self.hparams.image_size,
                                         seed=self.training_seed, progress=self.hparams.progress)
        other.prepare_data()  # the embedded synthetic lesions are generated on first use
        other.setup("fit")
        extra = other.splits["train"]
        self.splits["train"] = MixedRecords([self.splits["train"], extra])
        self.report["mixed_in"] = {"csv": str(other.csv_file), "train": len(extra),
                                   "with_caption": int(sum(bool(extra.target(extra.records[i]).caption)
                                                           for i in range(len(extra)))),
                                   "labels": other.report["labels"]}
        log.info("mix_train: %d training records of %s joined the %d of %s", len(extra), other.csv_file,
                 len(self.splits["train"]) - len(extra), self.csv_file)

    def _clusters(self, df: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None]:
        """Cluster id per record (NaN: in no cluster) and the audit's ``keep`` mark, from ``clusters_path``."""
        if not self.hparams.clusters_path:
            if self.hparams.csv_path is None:  # the embedded synthetic lesions: each drawn afresh, no copies to find
                return None, None
            message = ("near-duplicates were not checked: no clusters_path, so copies of one photograph may sit on "
                       "both sides of the split (python -m skinflow audit-data writes the clusters.csv to give)")
            self.report.setdefault("warnings", []).append(message)
            log.warning(message)
            return None, None
        table = read_clusters(self.hparams.clusters_path)
        cluster = dict(zip(table["md5hash"], table["cluster"]))
        groups = df["md5hash"].map(cluster)
        keepers = df["md5hash"].map(dict(zip(table["md5hash"], table["keep"] == "1"))) if "keep" in table.columns else None
        self.report["clusters"] = {"file": str(self.hparams.clusters_path), "listed_images": len(table),
                                   "listed_images_not_in_data": int((~table["md5hash"].isin(df["md5hash"])).sum())}
        return groups, keepers

    def _excluded(self, df: pd.DataFrame) -> pd.Series:
        if not self.hparams.exclude_path:
            return pd.Series(False, index=df.index)
        path = Path(self.hparams.exclude_path)
        if not path.is_file():
            raise DataError(f"exclude_path: file not found: {path}")
        listed = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "md5hash" not in listed.columns:
            raise DataError(f"exclude_path {path} has no 'md5hash' column (columns: {list(listed.columns)})")
        names = set(listed["md5hash"].str.strip()) - {""}
        excluded = df["md5hash"].isin(names)
        self.report["excluded"] = {"file": str(path), "listed": len(names), "excluded": int(excluded.sum()),
                                   "listed_not_in_data": len(names - set(df["md5hash"]))}
        log.info("exclude_path %s: left out %d of the %d images it lists", path, int(excluded.sum()), len(names))
        return excluded

    def _cluster_report(self, df: pd.DataFrame, keep: pd.Series, assigned: pd.Series, groups: pd.Series | None) -> None:
        """How many clusters each split holds, how many images the split merged or dropped to keep them apart."""
        if groups is None:
            return
        straddling = clusters_on_two_sides(assigned, groups)
        if straddling:  # the split functions guarantee it; a failure here is a bug in them, not bad data
            raise RuntimeError(f"split {self.hparams.split!r} put clusters {straddling[:3]} on two sides")
        in_cluster = groups.notna() & keep
        per_split = {name: int(groups[in_cluster & (assigned == name)].nunique()) for name in ("train", "val", "test")}
        dropped = in_cluster & (assigned == "drop")
        labels = df.loc[in_cluster, "label"].groupby(groups[in_cluster]).nunique()
        conflicted = in_cluster & groups.isin(set(labels.index[labels > 1]))
        clean = self.hparams.split == "clean"
        self.report["clusters"].update({
            "clusters_in_data": int(groups[in_cluster].nunique()), "images_in_clusters": int(in_cluster.sum()),
            "clusters_per_split": per_split,
            "cluster_images_out_of_every_split": int(dropped.sum()),
            "clusters_with_several_labels": int((labels > 1).sum()),
            "merged_by_clean": int((dropped & ~conflicted).sum()) if clean else 0,
            "label_conflict_images_left_out_by_clean": int((dropped & conflicted).sum()) if clean else 0,
        })

    def _captions(self, md5hashes: pd.Series) -> dict[str, dict[str, str]]:
        if not self.hparams.captions_path:
            return {}
        captions = read_captions(self.hparams.captions_path)
        matched = int(md5hashes.isin(list(captions)).sum())
        self.report["captions"] = {"file": str(self.hparams.captions_path), "entries": len(captions), "matched": matched,
                                   "unmatched_entries": len(captions) - matched,
                                   "free_text": sum(FREE_TEXT in c for c in captions.values())}
        if len(captions) > matched:
            log.warning("%s: %d of %d captions name no record of this data", self.hparams.captions_path, len(captions) - matched, len(captions))
        return captions

    @staticmethod
    def _has_caption(df: pd.DataFrame, captions: dict) -> np.ndarray:
        in_csv = (df[list(CAPTION_COLUMNS.values())].astype(str).apply(lambda c: c.str.strip() != "")).any(axis=1)
        return (in_csv | df["md5hash"].isin(list(captions))).to_numpy()

    def _label_filter(self, df: pd.DataFrame) -> pd.Series:
        keep = pd.Series(True, index=df.index)
        if self.hparams.labels:
            unknown = [label for label in self.hparams.labels if label not in ONTOLOGY]
            if unknown:
                raise DataError(f"labels: {unknown} are not Fitzpatrick17k labels")
            keep &= df["label"].isin(self.hparams.labels)
        if self.hparams.min_images_per_label:
            counts = df.loc[keep, "label"].value_counts()
            keep &= df["label"].map(counts).fillna(0) >= self.hparams.min_images_per_label
        return keep

    # -- loaders ---------------------------------------------------------------------------------------------
    @property
    def training_seed(self) -> int:
        return self.hparams.split_seed if self.hparams.seed is None else self.hparams.seed

    def collator(self, split: str = "train") -> VisionLanguageCollator:
        processor = self.processor
        if processor is None and self.trainer is not None:
            processor = getattr(self.trainer.lightning_module, "processor", None)
        if processor is None:
            raise RuntimeError("Fitzpatrick17kDataModule needs a processor: set dm.processor or attach it to a Trainer with a skinflow stage")
        prompt = self.hparams.prompt
        if prompt == MIXED and split != "train":
            prompt = "warmup"  # evaluation asks for caption and answer
        return VisionLanguageCollator(processor, prompt, self.hparams.with_caption, seed=self.training_seed)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        batch = self.hparams.batch_size if name == "train" else (self.hparams.eval_batch_size or self.hparams.batch_size)
        options = dict(batch_size=batch, num_workers=self.hparams.num_workers, collate_fn=self.collator(name),
                       drop_last=False, persistent_workers=self.hparams.num_workers > 0,
                       # its own generator: creating an iterator then draws no number from torch's global stream,
                       # which a resumed run must find where the interrupted run left it
                       generator=torch.Generator().manual_seed(self.training_seed))
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if not shuffle:
            # several processes: each evaluates its own images, none twice (DistributedSampler would repeat some to
            # even the shards, and the reduced metrics would then differ from one process's); a rank one batch
            # short runs one padding batch that counts for nothing, so all run the same number (FSDP2 needs it)
            sampler = EvenEvalShards(len(self.splits[name]), world, rank, batch) if world > 1 else None
            return DataLoader(self.splits[name], shuffle=False, sampler=sampler, **options)
        sampler = EpochShuffle(len(self.splits[name]), self.training_seed, world, rank)
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)
        if self._resume_order is not None:  # a resumed fit: continue the epoch where the checkpoint left it
            order, self._resume_order = self._resume_order, None
            theirs, ours = (order["seed"], order["num_replicas"]), (sampler.seed, sampler.num_replicas)
            if theirs != ours:
                raise DataError(f"the checkpoint's data order (seed, processes) {theirs} is not this run's {ours}: "
                                "resume with the seed and number of processes the run started with")
            sampler.set_epoch(order["epoch"])
            sampler.resume(order["epoch"], order["batches_done"] * options["batch_size"])
        self._train_sampler = sampler
        return ResumableLoader(self.splits[name], sampler=sampler, **options)

    def _batches_done(self) -> int:
        """Training batches the trainer has finished in the current epoch (what a resumed loader skips). Read when
        a checkpoint is written: Lightning has prefetched the next batch by then, so a count kept by the loader
        would be one ahead."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    # -- images unreadable at load time ----------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Count the images a batch left out because they could not be read (changed since the table was built)."""
        skipped = batch.pop("skipped_images", None) if isinstance(batch, dict) else None
        if skipped:
            new = [s for s in skipped if s not in self.skipped_at_load]
            self.skipped_at_load.extend(new)
            if new:
                log.warning("skipped %d unreadable image(s) (%d in this run so far): %s", len(new), len(self.skipped_at_load), new[:3])
        return batch

    def teardown(self, stage: str) -> None:
        """Put the images skipped at load time into the run's data report (``data_report.json``) and metrics."""
        if not self.skipped_at_load or self.trainer is None:
            return
        self.report["unreadable_at_load"] = list(self.skipped_at_load)
        logger = self.trainer.logger
        if logger is not None and hasattr(logger, "run_id") and self.trainer.is_global_zero:
            logger.experiment.log_text(logger.run_id, json.dumps(self.report, indent=2, default=str), "data_report.json")
            logger.log_metrics({"data/unreadable_at_load": len(self.skipped_at_load)})

    # -- resume ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The training order's position, saved in every checkpoint (``skinflow.data.order``). Restored before
        Lightning first builds the training loader (it does so early, to count the steps of the schedule)."""
        sampler = self._train_sampler
        if sampler is None:
            return {}
        return {"train_order": {"seed": sampler.seed, "epoch": sampler.epoch, "num_replicas": sampler.num_replicas,
                                "batches_done": int(self._batches_done())}}

    def load_state_dict(self, state: dict) -> None:
        self._resume_order = state.get("train_order")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
