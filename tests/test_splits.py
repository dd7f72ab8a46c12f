import numpy as np
import pandas as pd
import pytest

from skinflow.data.splits import assign_splits, source_of


def table(n_labels=6, per_label=30, seed=0):
    rng = np.random.default_rng(seed)
    labels = ["psoriasis", "eczema", "melanoma", "milia", "vitiligo", "kaposi sarcoma"][:n_labels]
    rows = []
    for label in labels:
        for i in range(per_label):
            source = "httpwwwdermaamincomx" if i % 3 else "httpatlasdermatologicocombr"
            rows.append({"md5hash": f"{label[:3]}{i:04d}", "label": label, "fitzpatrick_scale": int(rng.integers(-1, 7)) or 1,
                         "url_alphanum": f"{source}{label}{i}jpg.jpg"})
    return pd.DataFrame(rows)


def test_random_split_is_disjoint_complete_and_stratified():
    df = table()
    split = assign_splits(df, "random", val=0.1, test=0.2, seed=1)
    assert set(split) == {"train", "val", "test"}
    by_split = {s: set(df.md5hash[split == s]) for s in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"]) and not (by_split["val"] & by_split["test"])
    assert sum(map(len, by_split.values())) == len(df)
    counts = pd.crosstab(df.label, split)
    assert (counts["test"] == 6).all() and (counts["val"] == 3).all() and (counts["train"] == 21).all()


def test_same_seed_same_split_other_seed_differs():
    df = table()
    a, b, c = (assign_splits(df, "random", seed=s) for s in (4, 4, 5))
    assert a.equals(b)
    assert not a.equals(c)


def test_small_labels_still_reach_every_split():
    df = table(per_label=3)
    split = assign_splits(df, "random", val=0.1, test=0.2, seed=0)
    assert (pd.crosstab(df.label, split) == 1).all().all()


@pytest.mark.parametrize("preset,kept", [("a12", {1, 2}), ("a34", {3, 4}), ("a56", {5, 6})])
def test_fst_holdout_trains_on_its_types_and_tests_on_the_rest_including_unknown(preset, kept):
    df = table(per_label=60)
    split = assign_splits(df, preset, val=0.1, seed=0)
    fst = df.fitzpatrick_scale
    assert set(fst[split.isin(["train", "val"])]) <= kept
    test_fst = set(fst[split == "test"])
    assert not (test_fst & kept) and -1 in test_fst
    assert set(df.label[split == "test"]) == set(df.label[split == "train"])


def test_fst_holdout_drops_labels_missing_on_one_side():
    df = table(per_label=20)
    df.loc[(df.label == "milia"), "fitzpatrick_scale"] = 6  # milia only on dark skin: absent from a12's train side
    split = assign_splits(df, "a12", seed=0)
    assert (split[df.label == "milia"] == "drop").all()


def test_source_holdout_reads_url_alphanum():
    df = table()
    split = assign_splits(df, "source_dermaamin", seed=0)
    source = source_of(df.url_alphanum)
    assert (source[split == "test"] == "dermaamin").all()
    assert (source[split.isin(["train", "val"])] == "atlas").all()
    assert (split != "drop").all()


def test_manifest_split(tmp_path):
    df = table(n_labels=2, per_label=4)
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"md5hash": df.md5hash[:6], "split": ["train", "train", "val", "test", "test", "train"]}).to_csv(manifest, index=False)
    split = assign_splits(df, "manifest", manifest=manifest)
    assert list(split[:6]) == ["train", "train", "val", "test", "test", "train"]
    assert (split[6:] == "drop").all()


def test_bad_manifest_names_file_and_row(tmp_path):
    manifest = tmp_path / "bad.csv"
    pd.DataFrame({"md5hash": ["a", "b"], "split": ["train", "holdout"]}).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"bad.csv row 3.*holdout"):
        assign_splits(table(), "manifest", manifest=manifest)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown split preset"):
        assign_splits(table(), "by_moon_phase")


# -- near-duplicate clusters ------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from skinflow.data.splits import PRESETS, SplitError, clusters_on_two_sides, read_clusters  # noqa: E402

GROUPED_PRESETS = [p for p in PRESETS if p != "manifest"]


@st.composite
def clustered_tables(draw):
    """A table of 12-120 images over 2-5 labels, mixed skin types and atlases, with random near-duplicate
    clusters (some straddling skin types and atlases, some with two labels)."""
    n = draw(st.integers(12, 120))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    labels = ["psoriasis", "eczema", "melanoma", "milia", "vitiligo"][: draw(st.integers(2, 5))]
    df = pd.DataFrame({
        "md5hash": [f"{i:032x}" for i in range(n)],
        "label": rng.choice(labels, n),
        "fitzpatrick_scale": rng.choice([-1, 1, 2, 3, 4, 5, 6], n),
        "url_alphanum": rng.choice(["httpwwwdermaamincomx.jpg", "httpatlasdermatologicocombrx.jpg", "httpelsewherex.jpg"], n),
    })
    k = draw(st.integers(0, n // 2))
    groups = pd.Series(np.where(rng.random(n) < 0.5, rng.integers(0, max(k, 1), n).astype(str), None), index=df.index)
    groups = groups.where(groups.map(groups.value_counts()).fillna(0) > 1)  # a cluster has two or more images
    return df, groups, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clustered_tables())
def test_no_preset_puts_a_cluster_on_two_sides(case):
    df, groups, seed = case
    for preset in GROUPED_PRESETS:
        assigned = assign_splits(df, preset, val=0.1, test=0.2, seed=seed % 7, groups=groups)
        assert set(assigned) <= {"train", "val", "test", "drop"}
        assert clusters_on_two_sides(assigned, groups) == [], preset
        if preset in ("a12", "a34", "a56"):  # the holdout's test side is its definition: no image moves to it
            kept = {"a12": (1, 2), "a34": (3, 4), "a56": (5, 6)}[preset]
            assert not df.fitzpatrick_scale[assigned.isin(["train", "val"])].isin([t for t in range(-1, 7) if t not in kept]).any()
        if preset == "clean":  # one image per cluster, clusters with two labels left out
            placed = groups[(assigned != "drop") & groups.notna()]
            assert placed.is_unique
            labels = df.label.groupby(groups).nunique()
            assert not placed.isin(set(labels.index[labels > 1])).any()
            single = labels.index[labels == 1]
            assert set(placed) == set(single) & set(groups[df.index[df.label.isin(df.label[assigned != "drop"])]])


def test_grouped_random_split_moves_whole_clusters_and_stays_stratified():
    df = table(per_label=30)
    groups = pd.Series([f"c{i // 3}" if i % 30 < 12 else None for i in range(len(df))], index=df.index)
    split = assign_splits(df, "random", seed=1, groups=groups)
    assert clusters_on_two_sides(split, groups) == []
    assert clusters_on_two_sides(assign_splits(df, "random", seed=1), groups)  # without groups they straddle
    counts = pd.crosstab(df.label, split)
    assert (counts["test"] >= 5).all() and (counts["train"] >= 19).all()


def test_manifest_that_splits_a_cluster_names_it(tmp_path):
    df = table(n_labels=2, per_label=4)
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"md5hash": df.md5hash, "split": ["train", "test"] + ["train"] * 6}).to_csv(manifest, index=False)
    groups = pd.Series(["c7", "c7"] + [None] * 6, index=df.index)
    with pytest.raises(SplitError, match=r"m.csv puts near-duplicate cluster c7 into test and train .*pso0000 in train"):
        assign_splits(df, "manifest", manifest=manifest, groups=groups)
    ok = pd.Series(["c7", None, "c7"] + [None] * 5, index=df.index)
    assert assign_splits(df, "manifest", manifest=manifest, groups=ok).iloc[0] == "train"


def test_clean_needs_clusters_and_keeps_the_audits_choice():
    df = table(n_labels=2, per_label=30)
    with pytest.raises(SplitError, match="needs clusters_path"):
        assign_splits(df, "clean")
    groups = pd.Series([None] * len(df), index=df.index)
    groups[[0, 1, 2]] = "c1"
    keep = pd.Series(False, index=df.index)
    keep[2] = True
    split = assign_splits(df, "clean", seed=0, groups=groups, keep=keep)
    assert list(split[[0, 1]]) == ["drop", "drop"] and split[2] != "drop"
    counts = pd.crosstab(df.label, split).drop(columns="drop")
    assert counts.loc["eczema"].to_dict() == {"test": 6, "train": 21, "val": 3}  # 70/10/20 of 30


def test_a_cluster_is_stratified_by_its_most_common_label_ties_by_name():
    """A cluster goes where its most common label's groups are cut (ties: the label first by name): the
    assignment equals that of the table with every image relabelled to its cluster's label, computed here."""
    from skinflow.data.splits import group_keys, grouped_assign

    rng = np.random.default_rng(3)
    n = 90
    labels = pd.Series(rng.choice(["acne", "eczema", "psoriasis"], n))
    groups = pd.Series([f"c{i // 3}" if i < 45 else None for i in range(n)])  # 15 clusters of 3, mixed labels
    keys = group_keys(pd.DataFrame({"md5hash": [f"{i:032x}" for i in range(n)]}), groups)

    def cluster_label(values: pd.Series) -> str:
        counts = values.value_counts()
        return min(counts.index[counts == counts.max()])  # most common, ties by name

    relabelled = labels.groupby(keys).transform(cluster_label)
    assert (relabelled != labels).any()  # some clusters do hold two labels
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    for seed in range(5):
        assert grouped_assign(labels, keys, fractions, seed).equals(grouped_assign(relabelled, keys, fractions, seed))


@pytest.mark.parametrize("seed", range(12))
def test_an_uneven_cluster_lands_where_its_middle_falls(seed):
    """One label: a 40-image cluster among 60 single images, cut 50/25/25. A group goes to the split where its
    middle image falls, so each cumulative cut (50 train, 75 train + val) is missed by at most half the group
    straddling it: 20 images, where a group placed by its last image could miss by 40."""
    from skinflow.data.splits import grouped_assign

    keys = pd.Series(["big"] * 40 + [f"s{i}" for i in range(60)])
    split = grouped_assign(pd.Series(["eczema"] * 100), keys, {"train": 0.5, "val": 0.25, "test": 0.25}, seed)
    counts = split.value_counts()
    assert abs(counts.get("train", 0) - 50) <= 20.5 and abs(counts.get("train", 0) + counts.get("val", 0) - 75) <= 20.5
    assert (split[keys == "big"] == split[0]).all() and set(counts.index) == {"train", "val", "test"}


def test_a_holdout_drops_the_test_labels_left_without_training_images_by_cluster_drops():
    """Skin types 1-2 train, the rest test. Label "milia" has one train-side image, in a cluster with a test-side
    image: dropping it (its cluster's test side defines the holdout) leaves milia without training images, so its
    test images are dropped too; the other labels keep theirs."""
    rows = []
    for label in ("psoriasis", "eczema"):
        rows += [{"label": label, "fitzpatrick_scale": t} for t in (1, 2, 1, 2, 5, 6, 5)]
    rows += [{"label": "milia", "fitzpatrick_scale": 1}, {"label": "milia", "fitzpatrick_scale": 5},
             {"label": "milia", "fitzpatrick_scale": 6}]
    df = pd.DataFrame(rows)
    df["md5hash"] = [f"{i:032x}" for i in range(len(df))]
    df["url_alphanum"] = "x.jpg"
    groups = pd.Series([None] * 14 + ["m", "m", None], index=df.index)
    split = assign_splits(df, "a12", val=0.2, seed=0, groups=groups)
    assert (split[df.label == "milia"] == "drop").all()
    assert (split[(df.label != "milia") & df.fitzpatrick_scale.isin([5, 6])] == "test").all()


@pytest.mark.parametrize("preset", ["a12", "a56", "source_atlas", "source_dermaamin", "random", "clean"])
def test_the_seed_reaches_every_preset_and_the_val_share_holds(preset):
    """Another seed draws another train/val cut (the test side of a holdout is its definition and stays); the
    validation share of what trains is near ``val`` for every preset."""
    df = table(per_label=40)
    groups = pd.Series([f"c{i // 2}" if i % 10 == 0 or i % 10 == 1 else None for i in range(len(df))], index=df.index)
    a, b, again = (assign_splits(df, preset, val=0.2, test=0.2, seed=s, groups=groups) for s in (0, 1, 0))
    assert not a.equals(b) and a.equals(again)  # the seed decides: not the clock
    if preset != "random" and preset != "clean":
        assert a[a == "test"].index.equals(b[b == "test"].index)
    trains = a.isin(["train", "val"])
    assert abs((a[trains] == "val").mean() - (0.2 if preset not in ("random", "clean") else 0.25)) < 0.06


def test_cluster_keys_never_merge_a_cluster_with_an_unclustered_image_of_the_same_name():
    from skinflow.data.splits import group_keys

    df = pd.DataFrame({"md5hash": ["a1", "b2", "c3"]})
    keys = group_keys(df, pd.Series(["a1", None, "a1"]))  # a cluster id that is also an image's md5hash
    assert keys[0] == keys[2] != keys[1] and len(set(group_keys(df, pd.Series([None, None, None])))) == 3
    keys = group_keys(df, pd.Series([None, "a1", None]))  # image b2 in cluster "a1"; image a1 in none
    assert keys[0] != keys[1]


def test_an_unknown_or_missing_source_is_in_no_holdout_split():
    df = table(n_labels=2, per_label=6)
    df.loc[0, "url_alphanum"] = "httpelsewherecomx.jpg"
    df.loc[1, "url_alphanum"] = None
    assert source_of(df["url_alphanum"]).tolist()[:2] == ["unknown", "unknown"]
    split = assign_splits(df, "source_atlas", val=0.2)
    assert split[:2].tolist() == ["drop", "drop"] and split.index.equals(df.index)


def test_clean_without_clusters_says_what_to_run():
    with pytest.raises(SplitError, match="split 'clean' needs clusters_path: the near-duplicate clusters of python -m skinflow audit-data"):
        assign_splits(table(), "clean")


def test_read_clusters_reads_the_audit_file_and_names_every_fault(tmp_path):
    """The audit's clusters.csv as text; a repeated md5hash in one cluster is read once; faults name the file and
    the row (1-based, the header being row 1)."""
    path = tmp_path / "clusters.csv"
    path.write_text("md5hash,cluster,keep\na1,007,1\nb2,007,0\na1,007,1\nc3,NA,1\n")
    table = read_clusters(path)
    assert table.to_dict("list") == {"md5hash": ["a1", "b2", "c3"], "cluster": ["007", "007", "NA"], "keep": ["1", "0", "1"]}
    assert table.index.tolist() == [0, 1, 2]
    path.write_text("md5hash,cluster\na1,x\n")
    assert read_clusters(path).columns.tolist() == ["md5hash", "cluster"]  # keep is optional
    faults = {
        "md5hash,group\na1,x\n": r"clusters file .*clusters\.csv has no 'cluster' column \(columns: \['md5hash', 'group'\]\)",
        "hash,cluster\na1,x\n": r"has no 'md5hash' column",
        "md5hash,cluster\na1,x\nb2, \n": r"clusters\.csv row 3: empty md5hash or cluster$",
        "md5hash,cluster\na1,x\n ,y\n": r"clusters\.csv row 3: empty md5hash or cluster$",
        "md5hash,cluster\nz9,w\na1,x\nb2,y\na1,y\n": r"clusters\.csv rows 3, 5: md5hash a1 is in clusters \['x', 'y'\] \(1 such md5hashes\)$",
        # the first repeated id is consistent, a later one is not: still refused, every row of it named
        "md5hash,cluster\nz9,w\nz9,w\nb2,x\nb2,x\nb2,y\nc3,u\nc3,v\n": r"clusters\.csv rows 4, 5, 6: md5hash b2 is in clusters \['x', 'y'\] \(2 such md5hashes\)$",
        "md5hash,cluster,keep\na1,x,1\nb2,x,yes\n": r"clusters\.csv row 3: keep 'yes' is not 0 or 1$",
    }
    for text, message in faults.items():
        path.write_text(text)
        with pytest.raises(SplitError, match=message):
            read_clusters(path)
    with pytest.raises(SplitError, match=r"^clusters file not found: .*nowhere\.csv \(write it with python -m skinflow audit-data\)$"):
        read_clusters(tmp_path / "nowhere.csv")


def test_manifest_message_in_full_and_images_it_leaves_out_do_not_split_a_cluster(tmp_path):
    """The refusal names the cluster, both splits, every member with its split, and the rule; an image the
    manifest does not list (``drop``) does not put its cluster on a second side; ids are read as text (an all-digit
    id keeps its leading zero)."""
    df = table(n_labels=2, per_label=4)
    digits = "0071"  # an id_pattern other than MD5 allows it
    df.loc[7, "md5hash"] = digits
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"md5hash": [*df.md5hash[:2], digits], "split": ["train", "test", "val"]}).to_csv(manifest, index=False)
    groups = pd.Series(["c7", "c7", "c8", "c8"] + [None] * 4, index=df.index)
    with pytest.raises(SplitError) as err:
        assign_splits(df, "manifest", manifest=manifest, groups=groups)
    assert str(err.value) == (f"split manifest {manifest} puts near-duplicate cluster c7 into test and train "
                              "(pso0000 in train, pso0001 in test; 1 such clusters): a cluster's images must share one split")
    # c8: one image in train, one left out of the manifest; the all-digit id is found
    pd.DataFrame({"md5hash": [df.md5hash[2], digits], "split": ["train", "val"]}).to_csv(manifest, index=False)
    split = assign_splits(df, "manifest", manifest=manifest, groups=groups)
    assert split.tolist() == ["drop", "drop", "train", "drop", "drop", "drop", "drop", "val"]
    numeric = df.assign(md5hash=[f"{i:04d}" for i in range(len(df))])  # every id all digits
    pd.DataFrame({"md5hash": numeric.md5hash[:2], "split": ["val", "test"]}).to_csv(manifest, index=False)
    assert assign_splits(numeric, "manifest", manifest=manifest).tolist()[:3] == ["val", "test", "drop"]
    pd.DataFrame({"md5": ["x"], "split": ["train"]}).to_csv(manifest, index=False)
    with pytest.raises(SplitError, match=r"^split manifest .*m\.csv has no 'md5hash' column \(columns: \['md5', 'split'\]\)$"):
        assign_splits(df, "manifest", manifest=manifest)


def test_clusters_on_two_sides_reports_a_cluster_in_two_splits_and_ignores_drop():
    assigned = pd.Series(["train", "test", "train", "drop", "val", "val", "test"], index=[10, 11, 12, 13, 14, 15, 16])
    groups = pd.Series(["a", "a", "b", "b", "c", "c", None], index=[10, 11, 12, 13, 14, 15, 16])
    assert clusters_on_two_sides(assigned, groups) == ["a"]
    # cluster ids given for more rows than were assigned (the whole table): read by index
    wider = pd.concat([groups, pd.Series(["b"], index=[99])])
    assert clusters_on_two_sides(assigned, wider) == ["a"]


def test_splits_read_cluster_ids_by_index_when_the_table_is_a_filtered_subset(tmp_path):
    """The DataModule passes the rows its filters kept (a non-contiguous index) with their cluster ids; the
    clean and manifest presets give the same split whether the ids cover exactly those rows or the whole table."""
    full = table(n_labels=3, per_label=20)
    groups_full = pd.Series([f"c{i // 4}" if i % 20 < 12 else None for i in range(len(full))], index=full.index)
    subset = full.iloc[1::2]  # every other row: index 1, 3, 5, ...
    exact = assign_splits(subset, "clean", seed=2, groups=groups_full[subset.index])
    assert assign_splits(subset, "clean", seed=2, groups=groups_full).equals(exact)
    assert exact.index.equals(subset.index) and (exact != "drop").sum() > 0
    kept = exact[exact != "drop"].index
    assert groups_full[kept].dropna().is_unique  # one image per cluster (each has two rows in the subset)
    # without the audit's choice, the image kept is the smallest md5hash of each cluster
    shifted = full.iloc[10:]  # index 10, 11, ...: positions and labels differ
    split = assign_splits(shifted, "clean", seed=2, groups=groups_full[shifted.index])
    in_cluster = groups_full[shifted.index].notna()
    smallest = shifted[in_cluster].groupby(groups_full[shifted.index][in_cluster])["md5hash"].min()
    assert sorted(shifted.loc[split.index[(split != "drop") & in_cluster], "md5hash"]) == sorted(smallest)
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"md5hash": subset.md5hash, "split": ["train"] * len(subset)}).to_csv(manifest, index=False)
    by_index = assign_splits(subset, "manifest", manifest=manifest, groups=groups_full)
    assert by_index.index.equals(subset.index) and (by_index == "train").all()


@pytest.mark.parametrize("fractions, n, counts", [
    ({"train": 0.85, "val": 0.1, "test": 0.05}, 5, {"train": 3, "val": 1, "test": 1}),  # test rounds to 0: one kept
    ({"train": 0.1, "val": 0.1, "test": 0.8}, 3, {"train": 1, "val": 1, "test": 1}),   # train rounds to 0: one kept
    ({"train": 0.1, "val": 0.1, "test": 0.8}, 10, {"train": 1, "val": 1, "test": 8}),  # exact: no split padded
    ({"train": 0.7, "val": 0.1, "test": 0.2}, 2, {"train": 1, "val": 1, "test": 0}),   # too few: the rounded cuts alone
])
def test_stratified_cuts_keep_every_split_of_a_label_non_empty_and_otherwise_exact(fractions, n, counts):
    """The same edges for images (``stratified_assign``) and for groups of one image each (``grouped_assign``,
    which cuts at each group's middle)."""
    from skinflow.data.splits import grouped_assign, stratified_assign

    out = stratified_assign(pd.Series(["acne"] * n), fractions, seed=0)
    assert {name: int((out == name).sum()) for name in fractions} == counts
    if n >= len(fractions):  # (with fewer groups than splits the two round differently: no guarantee to share)
        grouped = grouped_assign(pd.Series(["acne"] * n), pd.Series([f"row:{i}" for i in range(n)]), fractions, seed=0)
        assert {name: int((grouped == name).sum()) for name in fractions} == counts


def test_source_of_an_empty_url_is_unknown_and_fst_holdout_reads_fitzpatrick_scale_by_default():
    from skinflow.data.splits import fst_holdout, source_of

    urls = pd.Series(["httpwwwdermaamincomx1", None, "HTTPATLASDERMATOLOGICOCOMBR2", "elsewhere"], index=[5, 6, 7, 8])
    assert source_of(urls).to_dict() == {5: "dermaamin", 6: "unknown", 7: "atlas", 8: "unknown"}
    df = table(n_labels=2, per_label=30)
    assert fst_holdout(df, "a12", 0.1, 0).equals(fst_holdout(df, "a12", 0.1, 0, column="fitzpatrick_scale"))


def test_clean_keeps_another_image_of_a_cluster_whose_kept_image_was_filtered_out():
    """The audit's keep covers the whole table; a filter (a label, an exclusion) removed a cluster's kept image: the
    cluster keeps its smallest remaining md5hash instead, exactly one image, and a cluster whose keeper remains
    keeps only that one (rows the audit did not list are not keepers)."""
    df = table(n_labels=2, per_label=30)
    groups = pd.Series([None] * len(df), index=df.index)
    groups[[0, 1, 2, 3]] = "c1"  # its keeper, row 0, is filtered out below
    groups[[4, 5, 6]] = "c2"  # keeper row 6; rows 4, 5 not listed in keep
    keep = pd.Series({0: True, 1: False, 2: False, 3: False, 6: True})
    filtered = df.drop(index=[0])
    split = assign_splits(filtered, "clean", seed=0, groups=groups[filtered.index], keep=keep)
    assert split[1] != "drop" and list(split[[2, 3]]) == ["drop", "drop"]  # pso0001 is c1's smallest remaining
    assert split[6] != "drop" and list(split[[4, 5]]) == ["drop", "drop"]


def test_holdout_training_side_follows_the_seed_and_unknown_presets_are_refused():
    """The held-out presets cut their training side with the given seed (the same seed: the same split, another:
    another); assign_splits' default seed is 0; a preset that only starts like a known one is refused by name."""
    from skinflow.data.splits import fst_holdout

    df = table(n_labels=3, per_label=40)
    first = fst_holdout(df, "a12", 0.2, 3)
    assert first.equals(fst_holdout(df, "a12", 0.2, 3))
    assert not first.equals(fst_holdout(df, "a12", 0.2, 4))
    assert assign_splits(df, "random").equals(assign_splits(df, "random", seed=0))
    for bad in ("source_bogus", "a99"):
        with pytest.raises(SplitError) as err:
            assign_splits(df, bad)
        assert str(err.value) == f"unknown split preset '{bad}'; choose one of {', '.join(PRESETS)}"
    with pytest.raises(SplitError) as err:
        assign_splits(df, "manifest")
    assert str(err.value) == "split 'manifest' needs split_manifest: path to a CSV with md5hash,split columns"
