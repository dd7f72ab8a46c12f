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
