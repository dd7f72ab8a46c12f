"""``python -m skinflow audit-data``: exact and near-duplicate clusters, label conflicts and unusable images.

Fitzpatrick17k is dirty: an independent audit (CleanPatrick) found about a fifth of its images to be
near-duplicates, and Fitzpatrick17k-C removed duplicate clusters before building its clean split. This audit
finds them so that the DataModule can keep every cluster on one side of a split (``clusters_path``).

For every image the CSV lists (found in the image folder as ``<md5hash>.jpg|png|jpeg``):

- the MD5 of its bytes (images with the same bytes are *exact* duplicates; a file whose bytes do not hash to its
  ``md5hash`` is counted, as resized copies do not);
- two perceptual hashes (ImageHash's ``phash``: the lowest 8 x 8 DCT coefficients of a 32 x 32 grey image
  against their median; ``dhash``: the sign of horizontal differences of a 9 x 8 grey image; 64 bits each) of
  the image and of its mirror image;
- its size, aspect ratio and grey-level spread: images that fail to decode, are tiny, extreme in aspect or
  nearly blank are listed (a nearly blank image's perceptual hash is noise: it joins a cluster only by its bytes).

Two images are near-duplicates when, comparing one with the other as it is or mirrored, their phashes differ in
at most ``threshold`` bits and their dhashes in at most ``dhash_threshold``; clusters are the connected
components of that relation together with exact duplicates (single linkage: a chain of near-duplicates is one
cluster). The defaults (14 and 12 of 64 bits) are calibrated by ``benchmarks/near_duplicates.py`` on the real
sample's images and transformed copies of them (resize, JPEG re-encode, crop, flip, colour change): see
``configs/audit/default.yaml`` for the figures.

Writes into ``--out`` (default ``audit/``): ``report.json``, ``clusters.csv`` (``md5hash, cluster, label, width,
height, keep``: every image in a cluster of two or more; ``keep`` marks the one image per cluster that the
``clean`` split keeps, the largest) and ``contact_sheet.png`` (the largest clusters, a row each); prints a
summary table with the throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from skinflow.data.formats import DataError, image_files, read_id_csv

CLUSTER_COLUMNS = ("md5hash", "cluster", "label", "width", "height", "keep")


def field_comments(cls) -> dict[str, str]:
    """``{field: the comment after its default}`` from a dataclass's source: ``--help`` says what each setting means
    (``workers``: "processes hashing images; 0: one per CPU"), from the one place it is written."""
    import inspect
    import re

    return dict(re.findall(r"^    (\w+): [^=\n]+ = [^#\n]+#\s*(.+)$", inspect.getsource(cls), re.MULTILINE))


@dataclass
class AuditConfig:
    """What the audit calls a near-duplicate or a bad image. ``threshold``: Hamming bits of ``hash_size**2``."""

    threshold: int = 14  # phash bits (of hash_size**2)
    dhash_threshold: int = 12  # and dhash bits, in the same orientation; hash_size**2 turns this test off
    hash_size: int = 8
    tiny_side: int = 64  # an image whose shorter side has fewer pixels is listed as tiny
    max_aspect: float = 3.5  # longer side over shorter side above this: extreme aspect
    blank_std: float = 1.5  # grey-level standard deviation (0-255) below this: nearly blank
    workers: int = 0  # processes hashing images; 0: one per CPU
    sheet_clusters: int = 12  # rows of the contact sheet (the largest clusters)
    sheet_members: int = 8  # images shown per cluster
    thumb: int = 112  # thumbnail side in the contact sheet

    def check(self) -> None:
        for name in ("threshold", "dhash_threshold"):
            if not 0 <= getattr(self, name) <= self.hash_size ** 2:
                raise ValueError(f"{name}={getattr(self, name)}: needs 0..{self.hash_size ** 2} (bits of a {self.hash_size}x{self.hash_size} hash)")
        if self.hash_size < 2:
            raise ValueError(f"hash_size={self.hash_size}: needs at least 2")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers}: needs 0 (one per CPU) or more")


def image_hashes(img, hash_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Packed bits of an image's perceptual hashes, phash then dhash, and of its mirror image's."""
    import imagehash
    from PIL import ImageOps

    grey = img.convert("L")

    def bits(g):
        return np.packbits(np.concatenate([imagehash.phash(g, hash_size).hash.ravel(), imagehash.dhash(g, hash_size).hash.ravel()]))

    return bits(grey), bits(ImageOps.mirror(grey))


def inspect_image(path: str, hash_size: int = 8) -> dict:
    """Bytes' MD5, size, grey spread and the perceptual hashes (packed bits) of one image; never raises."""
    from PIL import Image

    out: dict = {"path": path}
    try:
        data = Path(path).read_bytes()
        out["bytes_md5"] = hashlib.md5(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            out["width"], out["height"] = img.size
            img.draft("RGB", (hash_size * 8, hash_size * 8))  # JPEG: decode at a reduced scale, far faster
            grey = img.convert("L")
        grey.load()
        small = np.asarray(grey.resize((64, 64)), dtype=np.float32)
        out["grey_std"] = float(small.std())
        out["hash"], out["mirror"] = image_hashes(grey, hash_size)
    except Exception as err:  # noqa: BLE001  any decoder error: the image is listed as undecodable
        out["error"] = f"{type(err).__name__}: {err}"
    return out


def near_copies(img) -> dict:
    """The transformed copies the threshold is calibrated on (``benchmarks/near_duplicates.py``) and the tests
    check: what a re-upload to another atlas does to a photograph."""
    from PIL import Image, ImageEnhance, ImageOps

    img = img.convert("RGB")
    w, h = img.size

    def reencode(im, quality):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return {
        "resize_half": img.resize((max(w // 2, 1), max(h // 2, 1)), Image.LANCZOS),
        "jpeg_q30": reencode(img, 30),
        "crop_90": img.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
        "flip": ImageOps.mirror(img),
        "colour": ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.12)).enhance(1.2),
    }


def hamming_pairs(hashes: np.ndarray, mirrors: np.ndarray, thresholds: tuple[int, ...], chunk: int = 256) -> np.ndarray:
    """``(i, j)`` with ``i < j`` that are near-duplicates: in one orientation (``j`` as it is, or mirrored), every
    hash of ``i`` within its threshold of ``j``'s.

    ``hashes`` and ``mirrors``: ``(n, bytes)`` uint8, the packed bits of ``len(thresholds)`` equal-length hashes
    laid end to end (``image_hashes``). All pairs, in blocks: the first hash filters, the others are compared
    only where it passed (16,500 random hashes: 6 s on one core of the reference machine).

    >>> h = np.array([[0b1111_0000, 0], [0b1111_0001, 0b1], [0b1111_0001, 0b11111]], dtype=np.uint8)
    >>> hamming_pairs(h, h, (1, 1)).tolist()
    [[0, 1]]
    >>> hamming_pairs(h, h, (1, 8)).tolist()
    [[0, 1], [0, 2], [1, 2]]
    """
    n, k = len(hashes), len(thresholds)
    if hashes.shape[1] % (8 * k) == 0:  # whole 64-bit words per hash: popcount 8 bytes at a time
        hashes, mirrors = (np.ascontiguousarray(a).view(np.uint64) for a in (hashes, mirrors))
    width = hashes.shape[1] // k
    limits = np.array(thresholds)[None, None, :]
    found = []
    for start in range(0, n, chunk):
        block = hashes[start:start + chunk, None, :]
        near = np.zeros((len(block), n), dtype=bool)
        for other in (hashes, mirrors):
            first = np.bitwise_count(block[:, :, :width] ^ other[None, :, :width]).sum(-1, dtype=np.int32)
            ii, jj = np.nonzero(first <= thresholds[0])
            rest = np.bitwise_count(block[ii, 0, width:] ^ other[jj, width:]).reshape(len(ii), k - 1, width).sum(-1)
            passed = (rest <= limits[0, 0, 1:]).all(-1)
            near[ii[passed], jj[passed]] = True
        i, j = np.nonzero(near)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component id of each of ``n`` items under ``pairs`` (union-find with path halving)."""
    parent = np.arange(n)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)])


def read_listing(csv_path: Path, image_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The CSV's ``md5hash`` and ``label`` per distinct image, with the file found for each (or none)."""
    df = read_id_csv(csv_path, ("md5hash", "label"), image_dir)
    repeated = df["md5hash"].duplicated()
    conflicting = df[df["md5hash"].isin(df.loc[repeated, "md5hash"])].groupby("md5hash")["label"].nunique()
    facts = {"rows": len(df), "repeated_rows": int(repeated.sum()), "repeated_with_other_label": int((conflicting > 1).sum())}
    df = df[~repeated][["md5hash", "label"]].reset_index(drop=True)
    df["file"] = image_files(df["md5hash"], image_dir)
    return df, facts


def audit(csv_path: str | Path, image_dir: str | Path, out: str | Path = "audit", cfg: AuditConfig | None = None,
          progress: bool = True) -> dict:
    """Run the audit; write ``report.json``, ``clusters.csv`` and ``contact_sheet.png`` into ``out``; return the
    report."""
    from tqdm.auto import tqdm

    cfg = cfg or AuditConfig()
    cfg.check()
    csv_path, image_dir, out = Path(csv_path), Path(image_dir), Path(out)
    df, facts = read_listing(csv_path, image_dir)
    present = df[df["file"].notna()].reset_index(drop=True)
    paths = [str(image_dir / f) for f in present["file"]]
    workers = cfg.workers or os.cpu_count() or 1
    start = time.monotonic()
    bar = dict(total=len(paths), desc=f"hashing {image_dir}", unit="img", disable=not progress)
    if workers == 1:
        results = [inspect_image(p, cfg.hash_size) for p in tqdm(paths, **bar)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(inspect_image, paths, [cfg.hash_size] * len(paths), chunksize=16), **bar))
    hashed_at = time.monotonic()
    info = pd.DataFrame(results).drop(columns="path")
    present = pd.concat([present, info], axis=1)
    if "error" not in present.columns:
        present["error"] = None
    ok = present[present["error"].isna()].reset_index(drop=True)

    pairs = np.zeros((0, 2), dtype=np.int64)
    # a nearly blank image's hash bits are noise around a flat median: it is listed, and clustered only by bytes
    hashable = np.flatnonzero(ok["grey_std"].to_numpy() >= cfg.blank_std)
    if len(hashable):
        found = hamming_pairs(np.stack(ok["hash"].iloc[hashable].to_list()), np.stack(ok["mirror"].iloc[hashable].to_list()),
                              (cfg.threshold, cfg.dhash_threshold))
        pairs = hashable[found]
    exact_groups = ok.groupby("bytes_md5").indices
    exact_pairs = [(idx[0], j) for idx in exact_groups.values() if len(idx) > 1 for j in idx[1:]]
    all_pairs = np.concatenate([pairs, np.array(exact_pairs, dtype=np.int64).reshape(-1, 2)])
    comp = components(len(ok), all_pairs)
    sizes = pd.Series(comp).value_counts()
    multi = sizes[sizes > 1]
    # cluster ids by size (largest first), ties by their smallest md5hash: stable across runs
    order = sorted(multi.index, key=lambda c: (-multi[c], ok.loc[comp == c, "md5hash"].min()))
    names = {c: f"c{k + 1:05d}" for k, c in enumerate(order)}
    ok["cluster"] = [names.get(c) for c in comp]
    members = ok[ok["cluster"].notna()].copy()
    members["pixels"] = members["width"] * members["height"]
    keepers = members.sort_values(["pixels", "md5hash"], ascending=[False, True]).groupby("cluster").head(1).index
    members["keep"] = members.index.isin(keepers).astype(int)
    label_counts = members.groupby("cluster")["label"].value_counts()
    conflicts = []
    for cluster in members["cluster"].unique():
        counts = label_counts[cluster]
        if len(counts) > 1:
            conflicts.append({"cluster": cluster, "labels": {k: int(v) for k, v in counts.items()},
                              "md5hashes": sorted(members.loc[members["cluster"] == cluster, "md5hash"])})
    conflicts.sort(key=lambda c: c["cluster"])
    seconds = time.monotonic() - start

    def listing(mask) -> list[dict]:
        rows = ok[mask]
        return [{"md5hash": m, "width": int(w), "height": int(h)} for m, w, h in zip(rows["md5hash"], rows["width"], rows["height"])]

    short, long = np.minimum(ok["width"], ok["height"]), np.maximum(ok["width"], ok["height"])
    exact_multi = [idx for idx in exact_groups.values() if len(idx) > 1]
    report = {
        "csv": str(csv_path), "image_dir": str(image_dir), "config": asdict(cfg),
        "hash": (f"phash <= {cfg.threshold} and dhash <= {cfg.dhash_threshold} of {cfg.hash_size ** 2} bits, "
                 "image against image or against mirror image"),
        **facts,
        "images_listed": len(df), "images_found": len(present), "missing": df.loc[df["file"].isna(), "md5hash"].tolist(),
        "undecodable": [{"md5hash": m, "error": e} for m, e in zip(present["md5hash"], present["error"]) if isinstance(e, str)],
        "bytes_not_matching_md5hash": int((ok["bytes_md5"] != ok["md5hash"]).sum()),
        "exact_duplicate_groups": len(exact_multi), "exact_duplicate_images": int(sum(len(i) for i in exact_multi)),
        "near_duplicate_pairs": int(len(pairs)),
        "clusters": len(multi), "images_in_clusters": int(multi.sum()), "largest_cluster": int(multi.max()) if len(multi) else 0,
        "images_merged_by_clean": int(multi.sum() - len(multi)),
        "label_conflict_clusters": len(conflicts), "label_conflicts": conflicts,
        "tiny": listing(short < cfg.tiny_side), "extreme_aspect": listing(long > cfg.max_aspect * short),
        "nearly_blank": listing(ok["grey_std"] < cfg.blank_std),
        "seconds": round(seconds, 2), "images_per_second": round(len(paths) / max(hashed_at - start, 1e-9), 1),
        "workers": workers,
    }
    out.mkdir(parents=True, exist_ok=True)
    members = members.sort_values(["cluster", "keep", "md5hash"], ascending=[True, False, True])
    _atomic_text(out / "clusters.csv", members[list(CLUSTER_COLUMNS)].to_csv(index=False))
    _atomic_text(out / "report.json", json.dumps(report, indent=2))
    sheet = contact_sheet(members, image_dir, cfg)
    if sheet is not None:
        partial = out / f".contact_sheet.png.partial-{os.getpid()}"
        sheet.save(partial, format="PNG")
        os.replace(partial, out / "contact_sheet.png")
    report["out"] = str(out)
    return report


def _atomic_text(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


def contact_sheet(members: pd.DataFrame, image_dir: Path, cfg: AuditConfig):
    """A PNG of the largest clusters: a row each, the kept image first, md5hash prefix and label under each."""
    from PIL import Image, ImageDraw, ImageFont

    if not len(members):
        return None
    clusters = members["cluster"].value_counts()
    chosen = sorted(clusters.index, key=lambda c: (-clusters[c], c))[: cfg.sheet_clusters]
    t, label_h, head = cfg.thumb, 28, 150
    shown = min(cfg.sheet_members, int(clusters[chosen[0]]))
    sheet = Image.new("RGB", (head + shown * (t + 6), len(chosen) * (t + label_h + 8)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, cluster in enumerate(chosen):
        y = row * (t + label_h + 8) + 4
        rows = members[members["cluster"] == cluster]
        labels = rows["label"].nunique()
        draw.text((4, y + 4), f"{cluster}\n{len(rows)} images\n{labels} label{'s' * (labels > 1)}", fill="black", font=font)
        for k, (_, r) in enumerate(rows.head(cfg.sheet_members).iterrows()):
            x = head + k * (t + 6)
            try:
                with Image.open(image_dir / r["file"]) as img:
                    img.draft("RGB", (t, t))
                    thumb = img.convert("RGB")
                thumb.thumbnail((t, t))
                sheet.paste(thumb, (x + (t - thumb.width) // 2, y + (t - thumb.height) // 2))
            except Exception:  # noqa: BLE001  listed as undecodable elsewhere
                draw.rectangle((x, y, x + t, y + t), outline="red")
            if r["keep"]:
                draw.rectangle((x - 2, y - 2, x + t + 1, y + t + 1), outline="green", width=2)
            draw.text((x, y + t + 2), f"{r['md5hash'][:8]}\n{str(r['label'])[:18]}", fill="black", font=font)
    return sheet


def md5_note(mismatched: int, found: int) -> str:
    """The md5 mismatch count, with what it usually means: ``md5hash`` is the hash of the file the dataset's
    authors downloaded, so a resized or re-encoded copy (the shared sample, a mirror's thumbnails) never matches;
    only a few mismatches among matching files point at wrong or damaged downloads."""
    if not mismatched:
        return "0"
    if mismatched == found:
        return f"{mismatched} (all: resized or re-encoded copies, as the shared sample is, never match; not an error)"
    return f"{mismatched} (a resized or re-encoded copy never matches; among matching files, check these downloads)"


def summary_table(report: dict) -> str:
    rows = [
        ("images listed / found", f"{report['images_listed']} / {report['images_found']}"),
        ("missing", len(report["missing"])),
        ("undecodable", len(report["undecodable"])),
        ("exact duplicate groups (images)", f"{report['exact_duplicate_groups']} ({report['exact_duplicate_images']})"),
        (f"clusters (phash <= {report['config']['threshold']}, dhash <= {report['config']['dhash_threshold']} bits; images)", f"{report['clusters']} ({report['images_in_clusters']})"),
        ("largest cluster", report["largest_cluster"]),
        ("clusters with more than one label", report["label_conflict_clusters"]),
        ("images the clean split merges away", report["images_merged_by_clean"]),
        (f"tiny (< {report['config']['tiny_side']} px)", len(report["tiny"])),
        (f"extreme aspect (> {report['config']['max_aspect']}:1)", len(report["extreme_aspect"])),
        ("nearly blank", len(report["nearly_blank"])),
        ("CSV rows repeating an md5hash", report["repeated_rows"]),
        ("files whose bytes are not their md5hash", md5_note(report["bytes_not_matching_md5hash"], report["images_found"])),
        ("throughput", f"{report['images_per_second']} images/s ({report['workers']} processes, {report['seconds']} s in all)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def load_config(path: str | Path) -> dict:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(AuditConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return data


def audit_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m skinflow audit-data",
        description="Find exact and near-duplicate image clusters, label conflicts and unusable images; write "
                    "report.json, clusters.csv (for the DataModule's clusters_path) and contact_sheet.png.")
    parser.add_argument("--csv", required=True, help="label CSV (md5hash and label columns)")
    parser.add_argument("--image-dir", required=True, help="folder of <md5hash>.jpg|png images")
    parser.add_argument("--out", default="audit", help="folder for the outputs (default %(default)s)")
    parser.add_argument("--config", help="YAML of audit settings (configs/audit/default.yaml); flags override it")
    meanings = field_comments(AuditConfig)
    for f in fields(AuditConfig):
        meaning = meanings.get(f.name)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                            help=f"{meaning} (default {f.default})" if meaning else f"default {f.default}")
    parser.add_argument("--no-progress", action="store_true")
    ns = parser.parse_args(argv)
    try:
        settings = load_config(ns.config) if ns.config else {}
        settings.update({f.name: getattr(ns, f.name) for f in fields(AuditConfig) if getattr(ns, f.name) is not None})
        cfg = AuditConfig(**settings)
        report = audit(ns.csv, ns.image_dir, ns.out, cfg, progress=not ns.no_progress)
    except (DataError, ValueError, OSError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary_table(report))
    print(f"wrote {Path(report['out']) / 'report.json'}, clusters.csv, contact_sheet.png")
