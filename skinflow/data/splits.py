"""Train/val/test split presets over a Fitzpatrick17k-style table (pure functions of a DataFrame).

Presets (``split`` in the DataModule config):

- ``random``: stratified by label, seeded (the Fitzpatrick17k-C protocol's shape: 70/10/20 by default);
- ``a12`` / ``a34`` / ``a56``: Groh et al.'s skin-type holdouts: train (and val) on FST 1-2 / 3-4 / 5-6, test on
  every other row *including FST -1*; only labels present on both sides are kept;
- ``source_dermaamin`` / ``source_atlas``: holdout by source atlas, read from ``url_alphanum`` (``url`` is empty
  for some rows): test on DermaAmin / Atlas Dermatologico, train on the other; labels present in both;
- ``manifest``: a CSV with ``md5hash`` and ``split`` (train/val/test) columns;
- ``clean``: Fitzpatrick17k-C's protocol: every near-duplicate cluster reduced to one image (the audit's
  ``keep``), clusters whose images carry different labels left out, then 70/10/20 stratified by label (the
  ``val`` and ``test`` fractions), seeded. It needs the audit's clusters.

Clusters (``groups``: a cluster id per row, ``None`` for an image in no cluster; from ``python -m skinflow
audit-data``'s ``clusters.csv``) never straddle a split: ``random`` and the train/val cut of the holdouts assign
whole clusters (stratified by each cluster's most common label); a holdout whose test side holds part of a
cluster drops that cluster's train-side images (the test side is the holdout's definition); a manifest that puts
one cluster into two splits is an error naming it.

Every function returns a Series of ``"train" | "val" | "test" | "drop"`` aligned with the input rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from skinflow.data.formats import DataError

SPLITS = ("train", "val", "test")
FST_HOLDOUTS = {"a12": (1, 2), "a34": (3, 4), "a56": (5, 6)}
# Marker of each source atlas inside url_alphanum; the synthetic data's two "atlases" follow the same rule.
SOURCES = {"dermaamin": ("dermaamin", "synthatlasa"), "atlas": ("atlasdermatologico", "synthatlasb")}
# the DataModule's ``split`` choices (``--help`` lists them)
SplitPreset = Literal["random", "a12", "a34", "a56", "source_dermaamin", "source_atlas", "manifest", "clean"]
PRESETS = get_args(SplitPreset)


class SplitError(DataError):
    """A split that cannot be made as asked (the message names the file, cluster or row)."""


def group_keys(df: pd.DataFrame, groups: pd.Series | None) -> pd.Series:
    """One key per row: its cluster id, or the row's own md5hash when it is in no cluster."""
    own = "row:" + df["md5hash"].astype(str)
    if groups is None:
        return own
    g = groups.reindex(df.index)
    return ("cluster:" + g.astype(str)).where(g.notna(), own)


def grouped_assign(labels: pd.Series, keys: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """``stratified_assign`` over whole groups: each group (stratified by its most common label, ties by name)
    goes to one split with all its rows. Within a label the groups are shuffled and cut where the cumulative
    *image* count crosses each fraction (a group goes where its middle falls), so a split's share of images stays
    near its fraction however large the clusters; every split of a label with enough groups is non-empty."""
    first = labels.groupby(keys).agg(lambda v: sorted(v.value_counts().items(), key=lambda kv: (-kv[1], kv[0]))[0][0])
    sizes = keys.value_counts()
    rng = np.random.default_rng(seed)
    names = list(fractions)
    cum = np.cumsum([fractions[n] for n in names])
    out = pd.Series(index=first.index, dtype=object)
    for label in sorted(first.unique()):
        groups = np.sort(first.index[first == label].to_numpy())
        groups = groups[rng.permutation(len(groups))]
        weight = sizes[groups].to_numpy(dtype=float)
        middle = np.cumsum(weight) - weight / 2
        cuts = np.searchsorted(middle, cum * weight.sum())
        cuts[-1] = len(groups)
        if len(groups) >= len(names):
            for i in range(len(names) - 1):
                cuts[i] = min(max(cuts[i], i + 1), len(groups) - (len(names) - 1 - i))
        start = 0
        for name, stop in zip(names, cuts):
            out.loc[groups[start:stop]] = name
            start = stop
    return keys.map(out)


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


def random_split(df: pd.DataFrame, val: float, test: float, seed: int, groups: pd.Series | None = None) -> pd.Series:
    fractions = {"train": 1 - val - test, "val": val, "test": test}
    if groups is None:  # the ungrouped draw, unchanged (runs without clusters keep their split)
        return stratified_assign(df["label"], fractions, seed)
    return grouped_assign(df["label"], group_keys(df, groups), fractions, seed)


def _holdout(df: pd.DataFrame, is_train_side: pd.Series, val: float, seed: int, groups: pd.Series | None = None) -> pd.Series:
    test_side, train_side = ~is_train_side, is_train_side
    if groups is not None:  # a cluster with an image on the test side: its train-side images are dropped
        keys = group_keys(df, groups)
        train_side = train_side & ~keys.isin(set(keys[test_side]))
    shared = set(df.loc[train_side, "label"]) & set(df.loc[test_side, "label"])
    out = pd.Series("drop", index=df.index, dtype=object)
    keep = df["label"].isin(shared)
    out[keep & test_side] = "test"
    train_rows = df[keep & train_side]
    fractions = {"train": 1 - val, "val": val}
    if groups is None:
        out[train_rows.index] = stratified_assign(train_rows["label"], fractions, seed)
    else:
        out[train_rows.index] = grouped_assign(train_rows["label"], group_keys(train_rows, groups), fractions, seed)
    return out


def fst_holdout(df: pd.DataFrame, preset: str, val: float, seed: int, column: str = "fitzpatrick_scale",
                groups: pd.Series | None = None) -> pd.Series:
    return _holdout(df, df[column].isin(FST_HOLDOUTS[preset]), val, seed, groups)


def source_of(url_alphanum: pd.Series) -> pd.Series:
    """``dermaamin`` / ``atlas`` / ``unknown`` from ``url_alphanum`` (filled for every Fitzpatrick17k row)."""
    text = url_alphanum.fillna("").str.lower()
    out = pd.Series("unknown", index=url_alphanum.index, dtype=object)
    for source, markers in SOURCES.items():
        out[text.str.contains("|".join(markers), regex=True)] = source
    return out


def source_holdout(df: pd.DataFrame, test_source: str, val: float, seed: int, groups: pd.Series | None = None) -> pd.Series:
    source = source_of(df["url_alphanum"])
    other = [s for s in SOURCES if s != test_source][0]
    known = source.isin(SOURCES)  # an image of unknown source is in no split
    out = _holdout(df[known], source[known] == other, val, seed, None if groups is None else groups[known])
    return out.reindex(df.index, fill_value="drop")


def clean_split(df: pd.DataFrame, val: float, test: float, seed: int, groups: pd.Series | None,
                keep: pd.Series | None = None) -> pd.Series:
    """Fitzpatrick17k-C's clean split: one image per cluster (``keep``: the audit's choice; else the smallest
    md5hash), clusters with more than one label dropped, then 70/10/20 stratified by label."""
    if groups is None:
        raise SplitError("split 'clean' needs clusters_path: the near-duplicate clusters of python -m skinflow "
                         "audit-data (its clusters.csv); without them duplicates cannot be merged")
    keys = group_keys(df, groups)
    in_cluster = groups.reindex(df.index).notna()
    conflicted = df.loc[in_cluster].groupby(keys[in_cluster])["label"].nunique()
    conflicted = set(conflicted.index[conflicted > 1])
    if keep is None:
        chosen = df.loc[in_cluster].sort_values("md5hash").groupby(keys[in_cluster]).head(1).index
        keep = pd.Series(df.index.isin(chosen), index=df.index)
    keep = keep.reindex(df.index).fillna(False).astype(bool)
    # a cluster whose kept image fell to a filter keeps another of its images
    has_keeper = keys[in_cluster & keep].unique()
    fallback = df.loc[in_cluster & ~keys.isin(has_keeper)].sort_values("md5hash").groupby(keys).head(1).index
    kept = (~in_cluster | keep | df.index.isin(fallback)) & ~keys.isin(conflicted)
    out = pd.Series("drop", index=df.index, dtype=object)
    out[kept] = stratified_assign(df.loc[kept, "label"], {"train": 1 - val - test, "val": val, "test": test}, seed)
    return out


def manifest_split(df: pd.DataFrame, path: str | Path, groups: pd.Series | None = None) -> pd.Series:
    manifest = pd.read_csv(path, dtype=str)
    for column in ("md5hash", "split"):
        if column not in manifest.columns:
            raise SplitError(f"split manifest {path} has no {column!r} column (columns: {list(manifest.columns)})")
    bad = manifest[~manifest["split"].isin(SPLITS)]
    if len(bad):
        raise SplitError(f"split manifest {path} row {bad.index[0] + 2}: split {bad['split'].iloc[0]!r} is not one of {SPLITS}")
    mapping = dict(zip(manifest["md5hash"], manifest["split"]))
    out = df["md5hash"].map(mapping).fillna("drop")
    if groups is not None:
        g = groups.reindex(df.index)
        placed = out[g.notna() & (out != "drop")]
        sides = placed.groupby(g[placed.index]).unique()
        split_up = sides[sides.map(len) > 1]
        if len(split_up):
            cluster = split_up.index[0]
            members = df.loc[placed.index[g[placed.index] == cluster]]
            where = ", ".join(f"{m} in {out[i]}" for i, m in zip(members.index, members["md5hash"]))
            raise SplitError(f"split manifest {path} puts near-duplicate cluster {cluster} into "
                             f"{' and '.join(sorted(split_up.iloc[0]))} ({where}; {len(split_up)} such clusters): "
                             "a cluster's images must share one split")
    return out


def assign_splits(df: pd.DataFrame, preset: str, val: float = 0.1, test: float = 0.2, seed: int = 0,
                  manifest: str | Path | None = None, fst_column: str = "fitzpatrick_scale",
                  groups: pd.Series | None = None, keep: pd.Series | None = None) -> pd.Series:
    """Dispatch on ``preset``; rows marked ``"drop"`` belong to no split (labels absent from one side, or the
    train-side images of a cluster the test side holds). ``groups``: cluster id per row (``None`` / NaN: in no
    cluster); ``keep``: the image each cluster keeps under ``clean``."""
    if preset == "random":
        return random_split(df, val, test, seed, groups)
    if preset in FST_HOLDOUTS:
        return fst_holdout(df, preset, val, seed, fst_column, groups)
    if preset.startswith("source_") and preset[7:] in SOURCES:
        return source_holdout(df, preset[7:], val, seed, groups)
    if preset == "manifest":
        if manifest is None:
            raise SplitError("split 'manifest' needs split_manifest: path to a CSV with md5hash,split columns")
        return manifest_split(df, manifest, groups)
    if preset == "clean":
        return clean_split(df, val, test, seed, groups, keep)
    raise SplitError(f"unknown split preset {preset!r}; choose one of {', '.join(PRESETS)}")


def clusters_on_two_sides(assigned: pd.Series, groups: pd.Series) -> list:
    """Cluster ids with images in more than one split (``drop`` ignored): what no preset may return."""
    g = groups.reindex(assigned.index)
    placed = assigned[(assigned != "drop") & g.notna()]
    sides = placed.groupby(g[placed.index]).nunique()
    return sorted(sides.index[sides > 1])


def read_clusters(path: str | Path) -> pd.DataFrame:
    """The audit's ``clusters.csv``: ``md5hash`` and ``cluster`` columns (``keep`` optional); an md5hash in two
    clusters is an error naming its rows."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"clusters file not found: {path} (write it with python -m skinflow audit-data)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in ("md5hash", "cluster"):
        if column not in table.columns:
            raise SplitError(f"clusters file {path} has no {column!r} column (columns: {list(table.columns)})")
    empty = table.index[(table["md5hash"].str.strip() == "") | (table["cluster"].str.strip() == "")]
    if len(empty):
        raise SplitError(f"clusters file {path} row {empty[0] + 2}: empty md5hash or cluster")
    repeated = table["md5hash"].duplicated(keep=False)
    if repeated.any():  # a repeat in one cluster is read once; one md5hash in two clusters is an error
        clusters_of = table[repeated].groupby("md5hash")["cluster"].nunique()
        conflicted = table["md5hash"].isin(clusters_of.index[clusters_of > 1])
        if conflicted.any():
            md5 = table.loc[conflicted, "md5hash"].iloc[0]
            its_rows = table[table["md5hash"] == md5]
            raise SplitError(f"clusters file {path} rows {', '.join(map(str, its_rows.index + 2))}: md5hash {md5} is in "
                             f"clusters {sorted(set(its_rows['cluster']))} ({int((clusters_of > 1).sum())} such md5hashes)")
        table = table[~table["md5hash"].duplicated()]
    if "keep" in table.columns:
        bad = table.index[~table["keep"].isin(["0", "1"])]
        if len(bad):
            raise SplitError(f"clusters file {path} row {bad[0] + 2}: keep {table['keep'][bad[0]]!r} is not 0 or 1")
    return table.reset_index(drop=True)
