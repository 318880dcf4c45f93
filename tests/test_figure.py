"""Demo pictures: the caption band sits below the picture (the picture's pixels are untouched) and every
legend colour is drawn in it."""

import numpy as np
import pytest

from napari_medseg._napari._figure import Caption, Swatch, compose, rgb255


def test_caption_goes_below_the_picture_with_every_legend_colour(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    shot = rng.integers(0, 255, size=(300, 500, 4), dtype=np.uint8)
    legend = [Swatch("RV (prediction)", (0.47, 0.145, 0.024, 1.0), "fill"),
              Swatch("reference", (0.0, 1.0, 0.0), "outline"),
              Swatch("flagged", (255, 26, 26), "ring"),
              Swatch("disc", (0.99, 0.91, 0.14), "dot", edge=(1.0, 1.0, 1.0))]
    caption = Caption("A title that says what the picture shows: model-x",
                      ["a line of explanation " * 8], legend)
    out = compose(shot, caption, tmp_path / "fig.png")
    fig = np.asarray(Image.open(out).convert("RGB"))
    assert fig.shape[1] == 500 and fig.shape[0] > 300 + 80  # a band of title, wrapped lines and legend
    np.testing.assert_array_equal(fig[:300], shot[..., :3])  # nothing drawn over the image
    band = fig[300:].reshape(-1, 3)
    for sw in legend:
        assert (band == np.array(rgb255(sw.color))).all(axis=1).any(), sw.label


def test_caption_refuses_what_it_cannot_draw():
    with pytest.raises(ValueError, match="legend style"):
        Swatch("x", (1, 0, 0), "hatched")
    with pytest.raises(ValueError, match="not an RGB colour"):
        rgb255((1.0, 0.5))
    assert rgb255((1.0, 0.5, 0.0, 1.0)) == (255, 128, 0) and rgb255((10, 20, 30)) == (10, 20, 30)
