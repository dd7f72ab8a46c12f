"""Procedurally drawn skin lesions: the kit's embedded default data (``python -m skinflow synth``).

Fifteen real Fitzpatrick17k labels, spanning all three partitions, are each defined by a *combination* of four
drawn attributes (colour, shape, surface, distribution). Every attribute value is shared by at least two
labels, so no single attribute decides the class (``tests/test_synthetic.py`` checks this). The remaining
caption fields (lesion type, size, border, location) follow the label's clinical picture; size and border are
drawn visibly, location is not (as in many close-up clinical photographs).

Backgrounds take six skin tones, one per Fitzpatrick-like level, with shading, noise, hairs and freckles as
clutter. The same ``seed`` always gives byte-identical images and CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from skinflow.data.formats import CAPTION_COLUMNS, CAPTION_FIELDS
from skinflow.data.ontology import ONTOLOGY


@dataclass(frozen=True)
class LesionClass:
    label: str
    colour: str
    shape: str
    surface: str
    distribution: str
    lesion_type: str
    border: str
    sizes: tuple[str, ...]
    locations: tuple[str, ...]


LESION_CLASSES: tuple[LesionClass, ...] = (
    LesionClass("psoriasis", "red", "round", "scaly", "multiple", "plaque", "well-defined", ("1-3 cm", ">3 cm"), ("elbow", "knee", "scalp", "trunk")),
    LesionClass("eczema", "red", "irregular", "scaly", "single", "patch", "ill-defined", ("1-3 cm", ">3 cm"), ("hand", "flexures", "face")),
    LesionClass("pyogenic granuloma", "red", "round", "smooth", "single", "nodule", "well-defined", ("<1 cm", "1-3 cm"), ("finger", "lip", "face")),
    LesionClass("lyme disease", "red", "annular", "smooth", "single", "patch", "well-defined", (">3 cm",), ("trunk", "thigh", "arm")),
    LesionClass("granuloma annulare", "pink", "annular", "smooth", "multiple", "plaque", "well-defined", ("1-3 cm",), ("hand", "foot", "arm")),
    LesionClass("mycosis fungoides", "pink", "irregular", "scaly", "multiple", "patch", "ill-defined", ("1-3 cm", ">3 cm"), ("trunk", "buttock", "thigh")),
    LesionClass("basal cell carcinoma", "pink", "round", "smooth", "single", "nodule", "well-defined", ("<1 cm", "1-3 cm"), ("nose", "face", "ear")),
    LesionClass("squamous cell carcinoma", "pink", "irregular", "crusted", "single", "nodule", "ill-defined", ("1-3 cm",), ("hand", "scalp", "lip")),
    LesionClass("melanoma", "brown", "irregular", "smooth", "single", "macule", "ill-defined", ("1-3 cm",), ("back", "leg", "trunk")),
    LesionClass("nevocytic nevus", "brown", "round", "smooth", "single", "papule", "well-defined", ("<1 cm",), ("back", "face", "arm")),
    LesionClass("seborrheic keratosis", "brown", "round", "crusted", "multiple", "papule", "well-defined", ("<1 cm", "1-3 cm"), ("back", "chest", "face")),
    LesionClass("kaposi sarcoma", "purple", "round", "smooth", "multiple", "nodule", "well-defined", ("<1 cm", "1-3 cm"), ("foot", "leg", "oral mucosa")),
    LesionClass("lichen planus", "purple", "irregular", "scaly", "multiple", "papule", "well-defined", ("<1 cm",), ("wrist", "shin", "oral mucosa")),
    LesionClass("vitiligo", "white", "irregular", "smooth", "multiple", "macule", "well-defined", ("1-3 cm", ">3 cm"), ("hand", "face", "genitals")),
    LesionClass("milia", "white", "round", "smooth", "multiple", "papule", "well-defined", ("<1 cm",), ("eyelid", "cheek", "face")),
)
CLASS_KEY_ATTRIBUTES = ("colour", "shape", "surface", "distribution")
# Bump when the drawing changes: cached synthetic folders are named by it, so stale images are never reused.
RENDER_VERSION = 4

# Six background tones, light to dark, one per Fitzpatrick-like level (sRGB).
SKIN_TONES: dict[int, tuple[int, int, int]] = {
    1: (246, 216, 196), 2: (232, 190, 160), 3: (208, 160, 122),
    4: (170, 120, 85), 5: (120, 80, 55), 6: (78, 52, 38),
}
LESION_RGB: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35), "pink": (240, 140, 170), "brown": (95, 55, 25),
    "purple": (110, 40, 130), "white": (250, 248, 240),
}
SIZE_RADIUS: dict[str, tuple[float, float]] = {"<1 cm": (0.1, 0.13), "1-3 cm": (0.16, 0.21), ">3 cm": (0.27, 0.32)}
CSV_COLUMNS = (
    "md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
    "three_partition_label", "qc", "url", "url_alphanum", *CAPTION_COLUMNS.values(),
)


def _shape_mask(rng: np.random.Generator, size: int, shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    aspect = rng.uniform(0.8, 1.2)
    dx, dy = (xx - cx) / aspect, (yy - cy) * aspect
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    if shape == "irregular":  # lobed outline: strong low harmonics, visible at 14-pixel patches
        wobble = sum(rng.uniform(0.2, 0.3) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
        return (rho < r * (1 + 0.75 * wobble)).astype(np.float32)
    if shape == "annular":  # a ring with clear central skin
        return ((rho < r) & (rho > 0.55 * r)).astype(np.float32)
    return (rho < r).astype(np.float32)


def _blobs(rng: np.random.Generator, size: int, blur: float, threshold: float) -> np.ndarray:
    """Boolean mask of random blobs; larger ``blur`` gives coarser blobs."""
    noise = Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    field = np.asarray(noise, np.float32)
    field = (field - field.mean()) / (field.std() + 1e-6)
    return field > np.quantile(field, threshold)


def _background(rng: np.random.Generator, size: int, level: int) -> np.ndarray:
    tone = np.array(SKIN_TONES[level], np.float32) * rng.uniform(0.94, 1.06)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    shade = 1 + 0.08 * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    img = tone[None, None, :] * shade[..., None] + rng.normal(0, 4, (size, size, 3))
    for _ in range(rng.integers(0, 5)):  # freckles: small darker spots
        fx, fy, fr = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.005, 0.012)
        spot = np.hypot(xx - fx, yy - fy) < fr
        img[spot] *= 0.8
    return img


def _draw_hairs(rng: np.random.Generator, img: np.ndarray, level: int) -> Image.Image:
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    size = pil.width
    hair = (40, 30, 25) if level < 5 else (20, 15, 12)
    for _ in range(rng.integers(0, 6)):
        x0, y0 = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.4) * size
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=hair, width=1)
    return pil


def render_lesion(cls: LesionClass, level: int, rng: np.random.Generator, size: int = 160) -> tuple[Image.Image, str]:
    """Draw one image of ``cls`` on skin level ``level``; returns the image and the drawn size field."""
    img = _background(rng, size, level)
    size_field = str(rng.choice(cls.sizes))
    lo, hi = SIZE_RADIUS[size_field]
    count = 1 if cls.distribution == "single" else int(rng.integers(3, 6))
    mask = np.zeros((size, size), np.float32)
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        r = rng.uniform(lo, hi) * (1.0 if count == 1 else 0.85)
        margin = min(0.12 + r, 0.5)
        for _attempt in range(30):  # lesions of a "multiple" image never touch: overlapping discs would look irregular
            cx, cy = rng.uniform(margin, 1 - margin, 2)
            if all(np.hypot(cx - x, cy - y) > 1.5 * (r + q) + 0.02 for x, y, q in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        mask = np.maximum(mask, _shape_mask(rng, size, cls.shape, cx, cy, r))
    blur = 3.5 if cls.border == "ill-defined" else 0.6
    mask = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur)), np.float32) / 255
    colour = np.array(LESION_RGB[cls.colour], np.float32) * rng.uniform(0.9, 1.05)
    lesion = colour[None, None, :] + rng.normal(0, 6, (size, size, 3))
    if cls.surface == "scaly":  # silvery-white flakes of a few pixels, about a third of the surface
        flakes = _blobs(rng, size, blur=0.9, threshold=0.62)
        lesion = np.where(flakes[..., None], np.array([238, 238, 230], np.float32), lesion)
    elif cls.surface == "crusted":  # coarse yellow-brown crust over darkened lesion
        crust = _blobs(rng, size, blur=2.2, threshold=0.5)
        lesion = np.where(crust[..., None], np.array([165, 120, 35], np.float32), lesion * 0.7)
    alpha = 0.9 * mask[..., None]
    img = img * (1 - alpha) + lesion * alpha
    return _draw_hairs(rng, img, level), size_field


def class_by_label() -> dict[str, LesionClass]:
    return {cls.label: cls for cls in LESION_CLASSES}


def generate(out: str | Path, per_class: int, seed: int = 0, size: int = 160, progress: bool = True) -> Path:
    """Write ``per_class`` images of every class to ``out/images`` and ``out/labels.csv``; return the CSV path.

    Skin levels cycle 1..6 within each class so every level is represented; image ``i`` of class ``c`` is drawn
    from ``np.random.default_rng([seed, c, i])``, so the output does not depend on ``per_class`` ordering.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    total = per_class * len(LESION_CLASSES)
    bar = _progress(total, "synth", progress)
    for c, cls in enumerate(LESION_CLASSES):
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            level = i % 6 + 1
            image, size_field = render_lesion(cls, level, rng, size)
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=95)
            data = buf.getvalue()
            md5 = hashlib.md5(data).hexdigest()
            (out / "images" / f"{md5}.jpg").write_bytes(data)
            fields = {
                "colour": cls.colour, "location": str(rng.choice(cls.locations)), "shape": cls.shape,
                "lesion type": cls.lesion_type, "size": size_field, "border": cls.border,
                "surface": cls.surface, "distribution": cls.distribution,
            }
            atlas = "synthatlasa" if i % 4 else "synthatlasb"  # two "sources", so source holdouts work here too
            rows.append({
                "md5hash": md5, "fitzpatrick_scale": level, "fitzpatrick_centaur": level, "label": cls.label,
                "nine_partition_label": ONTOLOGY.nine(cls.label), "three_partition_label": ONTOLOGY.three(cls.label),
                "qc": "", "url": f"synthetic://{atlas}/{seed}/{c}/{i}", "url_alphanum": f"synthetic{atlas}{seed}{c}{i}jpg.jpg",
                **{CAPTION_COLUMNS[name]: fields[name] for name in CAPTION_FIELDS},
            })
            bar.update(1)
    bar.close()
    csv_path = out / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="img")


def synth_command(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m skinflow synth", description="Write synthetic skin lesions and their CSV.")
    parser.add_argument("--out", required=True, help="output folder (images/ and labels.csv)")
    parser.add_argument("--per-class", type=int, default=48, help="images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=160, help="image side in pixels")
    ns = parser.parse_args(argv)
    if ns.per_class < 1:
        parser.error(f"--per-class {ns.per_class}: at least 1 image per class")
    if ns.size < 28:
        parser.error(f"--size {ns.size}: images need at least 28 pixels a side (one merged patch)")
    if Path(ns.out).exists() and not Path(ns.out).is_dir():
        parser.error(f"--out {ns.out}: is a file, not a folder (images/ and labels.csv go inside it)")
    print(generate(ns.out, ns.per_class, ns.seed, ns.size))
