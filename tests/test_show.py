"""fastai's show idioms on cadences: show_batch, show_results, plot_top_losses, the confusion matrix, and the types
(TensorCadence, TensorLabel) that make them work without breaking the pipeline."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from fastai.interpret import ClassificationInterpretation, Interpretation

from seti_fastai.config import build_config
from seti_fastai.data.cadence import CADENCE_SHAPE
from seti_fastai.data.layouts import ImageRecipe
from seti_fastai.learn.datablock import get_dls
from seti_fastai.learn.datablock import test_dl as unlabelled_dl  # not collected as a test
from seti_fastai.learn.show import TensorCadence, TensorLabel, cadence_columns, show_batch, show_cadence
from seti_fastai.learn.train import build_learner
from seti_fastai.model.heads import SetiLoss


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def learn(synth_data, tmp_path_factory):
    cfg = build_config(overrides=tiny_overrides(synth_data[0], tmp_path_factory.mktemp("show"), pretrained=False))
    return build_learner(cfg, quiet=True)


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.axison]


def _panel_cadence() -> np.ndarray:
    """A cadence whose panel p holds the value p everywhere: where a panel lands in a picture shows its index."""
    return np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], CADENCE_SHAPE).copy()


@pytest.mark.parametrize(
    ("panels", "layout", "expected"),
    [
        ("on", "stack", {"ON": [0, 2, 4]}),
        ("all", "stack", {"ON": [0, 2, 4], "OFF": [1, 3, 5]}),
        ("on", "channels", {"ON": [0, 2, 4]}),
        ("all", "channels", {"ON": [0, 2, 4], "OFF": [1, 3, 5]}),
    ],
)
def test_columns_put_on_panels_beside_off_panels(panels, layout, expected):
    image = ImageRecipe(panels, layout).to_image(_panel_cadence())
    columns = cadence_columns(image, panels, layout)
    assert {name: [float(r.mean()) for r in rows] for name, rows in columns} == expected
    assert all(r.shape == (273, 256) for _, rows in columns for r in rows)


def test_diff_layout_is_one_on_minus_off_column():
    image = ImageRecipe("on", "diff").to_image(_panel_cadence())
    columns = cadence_columns(image, "on", "diff")
    assert [name for name, _ in columns] == ["ON - OFF"] and len(columns[0][1]) == 3


def test_show_cadence_draws_columns_side_by_side_with_their_names():
    image = TensorCadence(torch.from_numpy(ImageRecipe("all", "channels").to_image(_panel_cadence())))
    ax = show_cadence(image, title="t")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ON", "OFF"] and ax.get_title() == "t"
    drawn = ax.images[0].get_array()
    assert drawn.shape == (3 * 273, 2 * 256 + 24)
    assert float(drawn[0, 0]) == 0.0 and float(drawn[273, 0]) == 2.0 and float(drawn[0, -1]) == 1.0  # ON | OFF


def test_batches_carry_the_show_types_and_train_as_before(learn):
    x, y = learn.dls.train.one_batch()
    assert type(x) is TensorCadence and x.dtype == torch.float32 and x.shape == (8, 2, 819, 256)  # the default layout
    assert (x.cadence_panels, x.cadence_layout) == ("on", "dedoppler")
    assert type(y) is TensorLabel and y.dtype == torch.float32 and y.shape == (8,)
    out = learn.model(torch.Tensor(x))
    per_item = SetiLoss(reduction="none")(out, y.as_subclass(torch.Tensor))
    assert per_item.shape == (8,)
    assert torch.allclose(per_item.mean(), SetiLoss()(out, y.as_subclass(torch.Tensor)))


def test_show_batch_draws_each_cadence_titled_with_its_label(learn):
    dl = learn.dls.valid
    x, y = dl.one_batch()
    dl.show_batch((x, y), max_n=4)
    fig = plt.gcf()
    assert _titles(fig) == [f"label {int(v)}" for v in y[:4]]
    columns = ["ON", "de-Doppler (drift x channel)"]  # the default layout's
    assert all([t.get_text() for t in ax.get_xticklabels()] == columns for ax in fig.axes)


@pytest.mark.parametrize(
    ("panels", "layout", "names"),
    [("all", "stack", ["ON", "OFF"]), ("all", "channels", ["ON", "OFF"]), ("on", "diff", ["ON - OFF"])],
)
def test_show_batch_handles_every_layout(synth_data, tmp_path, panels, layout, names):
    cfg = build_config(overrides=tiny_overrides(synth_data[0], tmp_path, panels=panels, layout=layout))
    get_dls(cfg).valid.show_batch(max_n=2)
    axes = [ax for ax in plt.gcf().axes if ax.axison]
    assert len(axes) == 2 and all([t.get_text() for t in ax.get_xticklabels()] == names for ax in axes)


def test_show_results_titles_label_and_prediction(learn):
    learn.show_results(max_n=4, shuffle=False)
    titles = _titles(plt.gcf())
    probs, targets = learn.get_preds(dl=learn.dls.valid.new(shuffle=False))
    assert titles == [f"label {int(t)} / pred {int(p > 0.5)}" for t, p in zip(targets[:4], probs[:4], strict=True)]
    right = [ax.title.get_color() == "green" for ax in plt.gcf().axes if ax.axison]
    assert right == [int(t) == int(p > 0.5) for t, p in zip(targets[:4], probs[:4], strict=True)]


def test_plot_top_losses_shows_the_largest_losses_with_label_prediction_and_probability(learn):
    interp = Interpretation.from_learner(learn)
    losses, idx = interp.top_losses(3)
    interp.plot_top_losses(3)
    titles = _titles(plt.gcf())
    assert len(titles) == 3
    items = learn.dls.valid.items.iloc[idx.tolist()]
    probs, _ = learn.get_preds(dl=learn.dls.valid.new(shuffle=False))
    for title, loss, target, p in zip(titles, losses, items["target"], probs[idx], strict=True):
        assert title == f"label {target} / pred {int(p > 0.5)}\np {float(p):.2f} / loss {float(loss):.2f}"


def test_confusion_matrix_counts_every_validation_cadence(learn):
    interp = ClassificationInterpretation.from_learner(learn)
    probs, targets = learn.get_preds(dl=learn.dls.valid.new(shuffle=False))
    expected = np.zeros((2, 2), dtype=int)
    for t, p in zip(targets.int().tolist(), (probs > 0.5).int().tolist(), strict=True):
        expected[t, p] += 1
    np.testing.assert_array_equal(interp.confusion_matrix(), expected)
    assert list(interp.vocab) == ["0", "1"]


def test_dispatch_stays_ours_after_fastai_vision_all_is_imported():
    import fastai.vision.all  # noqa: F401  (registers fastai's image methods, after ours)

    x, y = TensorCadence(torch.zeros(1, 1, 819, 256)), TensorLabel(torch.zeros(1))
    method, _ = show_batch._resolve_method_with_cache(args=(x, y, []))
    assert method.__module__ == "seti_fastai.learn.show"


def test_predict_takes_a_path_or_a_string_and_matches_get_preds(learn, synth_data):
    path = sorted((synth_data[0] / "test").rglob("*.npy"))[0]
    label, decoded, prob = learn.predict(path)
    expected, _ = learn.get_preds(dl=unlabelled_dl(learn.dls, [str(path)]))
    assert float(prob) == pytest.approx(float(expected[0]), abs=1e-6)
    assert int(label) == int(decoded) == int(float(prob) > 0.5)
    assert float(learn.predict(str(path))[2]) == pytest.approx(float(prob), abs=1e-6)
