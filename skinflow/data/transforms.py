"""albumentations pipelines for training and evaluation. Both return an ``image_size`` square uint8 RGB array.

Why the colour augmentation is bounded: the Fitzpatrick skin type of a photograph is judged from the colour of
the surrounding skin. Brightness or hue shifts large enough to move a type-II background toward type IV would
make the skin-type label of an augmented image wrong, and the per-skin-type metrics (and any fairness claim
built on them) would then measure the augmentation instead of the model. So brightness and contrast move by at
most ±``colour_strength`` (default 0.1), saturation by ±0.1 and hue by at most ±0.02 (about ±7 degrees), which
keeps an image inside its neighbouring skin tones; there is no grayscale, channel shuffle or solarise.
Geometry: lesions have no canonical orientation, so flips and 90-degree rotations (the dihedral group, exact
and without border artefacts) are free. There is no arbitrary-angle rotation: its reflected corners mirror
lesions near the edge into the image, which changes the apparent count (distribution) and outline (shape) of
what is there. The random crop keeps at least 85% of the area for the same reason.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise call the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

MAX_HUE_SHIFT = 0.02


def train_transform(image_size: int, colour_strength: float = 0.1, seed: int | None = None) -> A.Compose:
    """Random crop, flips, 90-degree rotations and a bounded colour jitter; ``seed`` fixes the random stream."""
    if not 0 <= colour_strength <= 0.2:
        raise ValueError(f"colour_strength={colour_strength} is outside [0, 0.2]: larger shifts can change the apparent skin type")
    return A.Compose([
        A.LongestMaxSize(max_size=image_size),
        A.PadIfNeeded(min_height=image_size, min_width=image_size, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomResizedCrop(size=(image_size, image_size), scale=(0.85, 1.0), ratio=(0.9, 1.1)),
        A.HorizontalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.ColorJitter(brightness=colour_strength, contrast=colour_strength, saturation=0.1, hue=MAX_HUE_SHIFT, p=0.8),
    ], seed=seed)


def eval_transform(image_size: int) -> A.Compose:
    """Deterministic: fit the longer side, pad to a square by reflection."""
    return A.Compose([
        A.LongestMaxSize(max_size=image_size),
        A.PadIfNeeded(min_height=image_size, min_width=image_size, border_mode=cv2.BORDER_REFLECT_101),
    ])


def to_rgb(img: Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 array of any PIL image. PIL's own ``convert("RGB")`` clips 16- and 32-bit integer and
    float images to 255 (a 16-bit PNG becomes white); those are scaled from their range instead: 16-bit by
    1/257, 32-bit integer as 8- or 16-bit by its range, float in [0, 1] by 255, other ranges stretched to
    0-255. Palette, CMYK and alpha images go through PIL (alpha is
    dropped)."""
    if img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64) / 257.0
    elif img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if img.mode == "I" and 0 <= low and high <= 65535:
            values = values / (257.0 if high > 255 else 1.0)
        elif img.mode == "F" and 0 <= low and high <= 1:
            values = values * 255.0
        elif high > low:
            values = (values - low) * (255.0 / (high - low))
        else:
            values = np.zeros_like(values)
    else:
        return np.asarray(img.convert("RGB"))
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)
