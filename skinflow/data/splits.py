"""Train/val/test split presets over a Fitzpatrick17k-style table (pure functions of a DataFrame).

Presets (``split`` in the DataModule config):

- ``random``: stratified by label, seeded (the Fitzpatrick17k-C protocol's shape: 70/10/20 by default);
- ``a12`` / ``a34`` / ``a56``: Groh et al.'s skin-type holdouts: train (and val) on FST 1-2 / 3-4 / 5-6, test on
  every other row *including FST -1*; only labels present on both sides are kept;
- ``source_dermaamin`` / ``source_atlas``: holdout by source atlas, read from ``url_alphanum`` (``url`` is empty
  for some rows): test on DermaAmin / Atlas Dermatologico, train on the other; labels present in both;
- ``manifest``: a CSV with ``md5hash`` and ``split`` (train/val/test) columns.

Every function returns a Series of ``"train" | "val" | "test"`` aligned with the input rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
FST_HOLDOUTS = {"a12": (1, 2), "a34": (3, 4), "a56": (5, 6)}
# Marker of each source atlas inside url_alphanum; the synthetic data's two "atlases" follow the same rule.
SOURCES = {"dermaamin": ("dermaamin", "synthatlasa"), "atlas": ("atlasdermatologico", "synthatlasb")}
PRESETS = ("random", *FST_HOLDOUTS, "source_dermaamin", "source_atlas", "manifest")


def stratified_assign(labels: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """Assign each row to a split so that every label is spread over the splits in the given fractions.

    Within each label, rows are shuffled with ``seed`` and cut at the cumulative fractions (rounded), so a
    label with n rows gets about n*f rows of each split and every split of a label with >= 3 rows is non-empty
    when its fraction is positive.
    """
    rng = np.random.default_rng(seed)
    names = list(fractions)
    cum = np.cumsum([fractions[n] for n in names])
    out = pd.Series(index=labels.index, dtype=object)
    for label in sorted(labels.unique()):
        idx = labels.index[labels == label].to_numpy()
        idx = idx[rng.permutation(len(idx))]
        cuts = np.round(cum * len(idx)).astype(int)
        if len(idx) >= len(names):  # keep every split of this label non-empty
            for i in range(len(names) - 1):
                cuts[i] = min(max(cuts[i], i + 1), len(idx) - (len(names) - 1 - i))
        start = 0
        for name, stop in zip(names, cuts):
            out.loc[idx[start:stop]] = name
            start = stop
    return out


def random_split(df: pd.DataFrame, val: float, test: float, seed: int) -> pd.Series:
    return stratified_assign(df["label"], {"train": 1 - val - test, "val": val, "test": test}, seed)


def _holdout(df: pd.DataFrame, is_train_side: pd.Series, val: float, seed: int) -> pd.Series:
    shared = set(df.loc[is_train_side, "label"]) & set(df.loc[~is_train_side, "label"])
    out = pd.Series("drop", index=df.index, dtype=object)
    keep = df["label"].isin(shared)
    out[keep & ~is_train_side] = "test"
    train_rows = df[keep & is_train_side]
    out[train_rows.index] = stratified_assign(train_rows["label"], {"train": 1 - val, "val": val}, seed)
    return out


def fst_holdout(df: pd.DataFrame, preset: str, val: float, seed: int, column: str = "fitzpatrick_scale") -> pd.Series:
    return _holdout(df, df[column].isin(FST_HOLDOUTS[preset]), val, seed)


def source_of(url_alphanum: pd.Series) -> pd.Series:
    """``dermaamin`` / ``atlas`` / ``unknown`` from ``url_alphanum`` (filled for every Fitzpatrick17k row)."""
    text = url_alphanum.fillna("").str.lower()
    out = pd.Series("unknown", index=url_alphanum.index, dtype=object)
    for source, markers in SOURCES.items():
        out[text.str.contains("|".join(markers), regex=True)] = source
    return out


def source_holdout(df: pd.DataFrame, test_source: str, val: float, seed: int) -> pd.Series:
    source = source_of(df["url_alphanum"])
    other = [s for s in SOURCES if s != test_source][0]
    out = _holdout(df[source.isin(SOURCES)], source[source.isin(SOURCES)] == other, val, seed)
    return out.reindex(df.index, fill_value="drop")


def manifest_split(df: pd.DataFrame, path: str | Path) -> pd.Series:
    manifest = pd.read_csv(path, dtype=str)
    for column in ("md5hash", "split"):
        if column not in manifest.columns:
            raise ValueError(f"split manifest {path} has no {column!r} column (columns: {list(manifest.columns)})")
    bad = manifest[~manifest["split"].isin(SPLITS)]
    if len(bad):
        raise ValueError(f"split manifest {path} row {bad.index[0] + 2}: split {bad['split'].iloc[0]!r} is not one of {SPLITS}")
    mapping = dict(zip(manifest["md5hash"], manifest["split"]))
    return df["md5hash"].map(mapping).fillna("drop")


def assign_splits(df: pd.DataFrame, preset: str, val: float = 0.1, test: float = 0.2, seed: int = 0,
                  manifest: str | Path | None = None, fst_column: str = "fitzpatrick_scale") -> pd.Series:
    """Dispatch on ``preset``; rows marked ``"drop"`` belong to no split (labels absent from one side)."""
    if preset == "random":
        return random_split(df, val, test, seed)
    if preset in FST_HOLDOUTS:
        return fst_holdout(df, preset, val, seed, fst_column)
    if preset.startswith("source_") and preset[7:] in SOURCES:
        return source_holdout(df, preset[7:], val, seed)
    if preset == "manifest":
        if manifest is None:
            raise ValueError("split 'manifest' needs split_manifest: path to a CSV with md5hash,split columns")
        return manifest_split(df, manifest)
    raise ValueError(f"unknown split preset {preset!r}; choose one of {', '.join(PRESETS)}")
