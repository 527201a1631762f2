"""The layout registry and the image recipe: every layout's shape, panels and ON/OFF mixing; one resolved recipe
per run; a new layout is one class in one file (shown here by registering one in a test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from seti_fastai.config import build_config
from seti_fastai.data.cadence import CADENCE_SHAPE, N_CHANNELS, N_TIMES, ON_PANELS
from seti_fastai.data.layouts import LAYOUTS, ImageRecipe, Layout, register
from seti_fastai.errors import ConfigError
from seti_fastai.learn.augment import AugRecipe
from seti_fastai.learn.show import cadence_columns
from seti_fastai.learn.transforms import CadenceLoader


@pytest.mark.parametrize(
    ("panels", "layout", "source", "mixes"),
    [
        ("on", "stack", (0, 2, 4), False),
        ("all", "stack", (0, 1, 2, 3, 4, 5), True),
        ("on", "channels", (0, 2, 4), False),
        ("all", "channels", (0, 1, 2, 3, 4, 5), False),
        ("on", "diff", (0, 1, 2, 3, 4, 5), False),
        ("on", "dedoppler", (0, 1, 2, 3, 4, 5), True),
    ],
)
def test_recipe_knows_its_panels_and_whether_it_mixes_on_and_off(panels, layout, source, mixes):
    recipe = ImageRecipe(panels, layout)
    assert recipe.source_panels == source and recipe.mixes_on_and_off is mixes
    image = recipe.to_image(np.random.default_rng(0).normal(size=CADENCE_SHAPE).astype(np.float32))
    assert image.shape == recipe.shape and recipe.in_chans == image.shape[0] and image.flags.c_contiguous
    subset = np.random.default_rng(1).normal(size=(len(source), N_TIMES, N_CHANNELS)).astype(np.float32)
    assert recipe.to_image(subset).shape == recipe.shape  # just the source panels, as the loader reads them
    assert AugRecipe.from_config(build_config(overrides=dict(panels=panels, layout=layout)), recipe).time_shift is (
        not mixes
    )


def test_recipe_is_resolved_from_the_config_and_refuses_unknown_values():
    cfg = build_config(
        overrides=dict(panels="all", layout="channels", standardize=True, resize_mode="area", background="none")
    )
    assert ImageRecipe.from_config(cfg) == ImageRecipe("all", "channels", True, "none", "area")
    with pytest.raises(ConfigError, match="layout must be one of stack, channels, diff, dedoppler; got 'rows'"):
        build_config(overrides=dict(layout="rows"))
    with pytest.raises(ConfigError, match="background must be one of none, subtract"):
        ImageRecipe(background="remove")
    with pytest.raises(ValueError, match="needs 6 panels or its own 3; got 2"):
        ImageRecipe().to_image(np.zeros((2, N_TIMES, N_CHANNELS), np.float32))


class OnMean(Layout):
    """A layout made in a test: the mean of the ON panels, one 273-row channel."""

    name = "on-mean"
    help = "the mean of the ON panels"

    def source_panels(self, panels):
        return ON_PANELS

    def shape(self, panels, rows=N_TIMES):
        return (1, rows, N_CHANNELS)

    def build(self, cadence):
        return np.ascontiguousarray(cadence.mean(axis=0, keepdims=True))

    def columns(self, image, panels, rows=N_TIMES):
        return [("ON mean", [image[0]])]


@pytest.fixture
def on_mean_layout():
    register(OnMean)
    yield LAYOUTS["on-mean"]
    del LAYOUTS["on-mean"]


def test_a_new_layout_is_one_registered_class(on_mean_layout, synth_data, tmp_path):
    """Registering a layout is all it takes: the config accepts it, the loader builds it, show draws it."""
    cfg = build_config(overrides=tiny_overrides(synth_data[0], tmp_path, layout="on-mean"))
    recipe = ImageRecipe.from_config(cfg)
    assert recipe.shape == (1, N_TIMES, N_CHANNELS) and recipe.source_panels == ON_PANELS
    path = next((synth_data[0] / "train").rglob("*.npy"))
    image = CadenceLoader(recipe)(str(path))
    cadence = np.load(path).astype(np.float32)
    torch.testing.assert_close(image[0], torch.from_numpy(cadence[list(ON_PANELS)].mean(0)))
    assert [name for name, _ in cadence_columns(image.numpy(), "on", "on-mean")] == ["ON mean"]
