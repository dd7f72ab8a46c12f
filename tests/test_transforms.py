import numpy as np
import pytest

from skinflow.data.transforms import eval_transform, train_transform


def image(h=150, w=100, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("make", [train_transform, eval_transform])
def test_square_uint8_output(make):
    out = make(112)(image=image())["image"]
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8


def test_eval_is_deterministic_and_train_is_not():
    x = image()
    assert np.array_equal(eval_transform(112)(image=x)["image"], eval_transform(112)(image=x)["image"])
    t = train_transform(112)
    assert not all(np.array_equal(t(image=x)["image"], t(image=x)["image"]) for _ in range(3))


def test_colour_jitter_keeps_skin_tone_near_the_original():
    # A flat skin-type-II patch: brightness may move by at most ~10%, never to a type-IV tone (~30% darker).
    skin = np.full((112, 112, 3), (232, 190, 160), np.uint8)
    t = train_transform(112)
    means = np.array([t(image=skin)["image"].reshape(-1, 3).mean(0) for _ in range(200)])
    assert np.abs(means / np.array([232, 190, 160]) - 1).max() < 0.2


def test_colour_strength_is_bounded():
    with pytest.raises(ValueError, match="skin type"):
        train_transform(112, colour_strength=0.5)


def test_seeded_train_transform_repeats_its_stream():
    x = image()
    a, b = train_transform(112, seed=5), train_transform(112, seed=5)
    assert all(np.array_equal(a(image=x)["image"], b(image=x)["image"]) for _ in range(4))


def test_every_image_mode_becomes_the_8_bit_values_a_person_would_see():
    """16-bit by 1/257 exactly (65535 -> 255, 257 -> 1), 32-bit integers in 0-255 unchanged and in 0-65535 by
    1/257, floats in [0, 1] by 255, other ranges stretched to 0-255, a constant image black; grey to three equal
    channels."""
    import numpy as np
    from PIL import Image

    from skinflow.data.transforms import to_rgb

    def grey(img):
        out = to_rgb(img)
        assert out.dtype == np.uint8 and out.shape == (*img.size[::-1], 3)
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        return out[..., 0].ravel().tolist()

    sixteen = Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16") and grey(sixteen) == [0, 1, 128, 255]
    assert grey(Image.fromarray(np.array([[0, 7, 200, 255]], dtype=np.int32))) == [0, 7, 200, 255]
    assert grey(Image.fromarray(np.array([[0, 514, 65535, 300]], dtype=np.int32))) == [0, 2, 255, 1]
    assert grey(Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.2]], dtype=np.float32))) == [0, 128, 255, 51]
    assert grey(Image.fromarray(np.array([[-1.0, 0.0, 1.0, 3.0]], dtype=np.float32))) == [0, 64, 128, 255]
    assert grey(Image.fromarray(np.array([[-5, -5]], dtype=np.int32))) == [0, 0]


def test_integer_and_float_images_keep_their_values_rather_than_being_stretched():
    """Values already on the 8-bit or 16-bit scale are kept (or divided by 257), not stretched to 0-255: an image
    whose values do not start at 0 or end at 255 tells the two apart."""
    import numpy as np
    from PIL import Image

    from skinflow.data.transforms import to_rgb

    def grey(array):
        return to_rgb(Image.fromarray(np.array([array], dtype=array.dtype if hasattr(array, "dtype") else None)))[0, :, 0].tolist()

    assert grey(np.array([100, 200, 250], dtype=np.int32)) == [100, 200, 250]
    assert grey(np.array([0, 7, 200], dtype=np.int32)) == [0, 7, 200]
    assert grey(np.array([514, 1028, 2570], dtype=np.int32)) == [2, 4, 10]
    assert grey(np.array([0.2, 0.5, 0.6], dtype=np.float32)) == [51, 128, 153]
    assert grey(np.array([2.0, 3.0, 4.0], dtype=np.float32)) == [0, 128, 255]  # out of [0, 1]: stretched
    assert grey(np.array([-3, 5], dtype=np.int32)) == [0, 255]  # negative integers: stretched


def test_padding_reflects_the_photograph_and_the_crop_keeps_most_of_it():
    """A wide photograph padded to a square shows no constant border (reflection, not black) in evaluation and in
    training; a training crop keeps at least 85% of the area, so a lesion in one half never leaves the picture
    (both halves of a half-red, half-blue image stay visible in every draw, and the aspect stays near square)."""
    import numpy as np

    from skinflow.data.transforms import eval_transform, train_transform

    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :30] = (200, 40, 40)
    wide[:, 30:] = (40, 40, 200)
    out = eval_transform(60)(image=wide)["image"]
    assert out.shape == (60, 60, 3) and (out.sum(-1) > 0).all()  # no black padding
    for seed in range(25):
        img = train_transform(60, colour_strength=0.0, seed=seed)(image=wide)["image"]
        assert img.shape == (60, 60, 3) and (img.sum(-1) > 0).all()
        red, blue = (img[..., 0] > img[..., 2] + 60).mean(), (img[..., 2] > img[..., 0] + 60).mean()
        assert red > 0.25 and blue > 0.25, (seed, red, blue)
    for strength in (0.0, 0.2):
        train_transform(60, colour_strength=strength)
    with pytest.raises(ValueError, match="colour_strength=0.21 is outside"):
        train_transform(60, colour_strength=0.21)


def test_the_training_augmentation_is_the_documented_recipe():
    """docs/data.md's recipe, setting by setting (each one a fault no image test sees reliably: a crop ratio of up
    to 2:1 stretches lesions, no contrast jitter, jitter on every image): fit the longer side, reflect-pad both
    sides to a square, crop 85-100% of the area at 0.9-1.1 aspect, flip half the time, rotate by 90° always,
    colour jitter on 80% of images with brightness/contrast at the given strength, saturation 0.1, hue 0.02."""
    import cv2

    from skinflow.data.transforms import MAX_HUE_SHIFT, train_transform

    steps = {type(t).__name__: t.get_transform_init_args() for t in train_transform(60, colour_strength=0.15).transforms}
    assert list(steps) == ["LongestMaxSize", "PadIfNeeded", "RandomResizedCrop", "HorizontalFlip", "RandomRotate90", "ColorJitter"]
    assert steps["LongestMaxSize"]["max_size"] == 60
    pad = steps["PadIfNeeded"]
    assert (pad["min_height"], pad["min_width"], pad["border_mode"], pad["position"]) == (60, 60, cv2.BORDER_REFLECT_101, "center")
    crop = steps["RandomResizedCrop"]
    assert (crop["size"], crop["scale"], crop["ratio"]) == ((60, 60), (0.85, 1.0), (0.9, 1.1))
    assert steps["HorizontalFlip"]["p"] == 0.5 and steps["RandomRotate90"]["p"] == 1.0
    jitter = steps["ColorJitter"]
    assert jitter["p"] == 0.8 and jitter["brightness"] == pytest.approx((0.85, 1.15)) and jitter["contrast"] == pytest.approx((0.85, 1.15))
    assert jitter["saturation"] == pytest.approx((0.9, 1.1)) and jitter["hue"] == pytest.approx((-MAX_HUE_SHIFT, MAX_HUE_SHIFT))
    assert MAX_HUE_SHIFT == 0.02


def test_ordinary_images_are_pils_own_rgb_and_the_scale_boundaries_fall_where_documented():
    """RGB, grey, palette and RGBA images are PIL's RGB conversion (alpha dropped); at the edges of each rule: 16-bit
    range up to 65535 inclusive (by 1/257) and 65536 stretched; 8-bit up to 255 inclusive, 256 by 1/257; floats in
    [0, 1] inclusive at both ends by 255, 1.5 stretched; a stretch maps the range to 0-255 exactly."""
    import numpy as np
    from PIL import Image

    from skinflow.data.transforms import to_rgb

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    for img in (rgb, rgb.convert("L"), rgb.convert("P"), rgb.convert("RGBA"), rgb.convert("CMYK")):
        out = to_rgb(img)
        assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and np.array_equal(out, np.asarray(img.convert("RGB"))), img.mode

    def grey(values, dtype):
        return to_rgb(Image.fromarray(np.array([values], dtype=dtype)))[0, :, 0].tolist()

    assert grey([514, 1028, 65535], np.int32) == [2, 4, 255]  # 65535 is still 16-bit: divided, not stretched
    assert grey([514, 65536], np.int32) == [0, 255]  # beyond 16 bits: stretched
    assert grey([0, 128, 256], np.int32) == [0, 0, 1]  # 256 is past 8 bits: divided by 257
    assert grey([0.0, 0.5], np.float32) == [0, 128]  # starts at 0, ends below 1: still [0, 1] by 255
    assert grey([0.2, 1.0], np.float32) == [51, 255]  # ends at exactly 1
    assert grey([0.2, 0.5, 1.5], np.float32) == [0, 59, 255]  # past 1: stretched
    assert grey([0.0, 6.0, 10.0], np.float32) == [0, 153, 255]  # the stretch: 6/10 of 255 is 153, not 154
    # rounded from the exact product: this float32 times 255 is 155.49999..., which float32 arithmetic rounds to 155.5
    assert grey([0.0, 0.6098039, 1.0], np.float32) == [0, 155, 255]
