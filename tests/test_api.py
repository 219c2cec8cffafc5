"""The Python API as a notebook uses it: what its objects print, and the inputs it takes."""

import warnings

import numpy as np
import pytest

from helpers import TINY, ThresholdNet, disc_image
from napari_mutualseg.disagreement import Prediction, Spot
from napari_mutualseg.segmenter import NoCellsWarning
from napari_mutualseg.supervision import make_supervision
from napari_mutualseg.training import MutualTrainer, TrainConfig

# tiny networks train faster on one torch thread (conftest.py)


@pytest.fixture(scope="module")
def trained():
    image, boxes = disc_image()
    trainer = MutualTrainer(
        image,
        make_supervision(image.shape, boxes),
        TrainConfig(**{**TINY, "rounds": 1, "steps_per_round": 1}),
    )
    return trainer, list(trainer)


def test_reports_trainer_and_pair_print_what_they_are_in_a_line(trained):
    trainer, reports = trained
    report = repr(reports[-1])
    assert report.startswith("RoundReport(round=1, rounds=1, loss_a=")
    assert "planes=[64 x 64]" in report and "array" not in report
    assert repr(trainer).startswith("MutualTrainer(1 plane (64 x 64), 1 of up to 1 rounds done")
    pair = repr(trainer.pair)
    assert pair.startswith("ModelPair(two U-Nets of depth 2, width 4; input 1 channel")
    assert "1 round trained; on cpu" in pair and "Conv2d" not in pair


def test_channels_last_without_axes_is_refused_with_the_axes_to_give(trained):
    trainer, _ = trained
    image, boxes = disc_image()
    sup = make_supervision(image.shape, boxes)
    two = np.stack([image, image], axis=-1)  # (Y, X, C) float: read as 64 planes of 64 x 2
    with pytest.raises(ValueError, match=r"last axis \(2\) is too short to be x.*axes='YXC'"):
        MutualTrainer(two, sup, TrainConfig(**TINY))
    with pytest.raises(ValueError, match=r"last axis \(2\) is too short to be x.*axes='YXC'"):
        trainer.pair.segment(two)
    stack = np.stack([image, image, image])
    with pytest.raises(ValueError, match=r"stack of 3 planes \(ZYX\).*from_array\(image, 'CYX'\)"):
        MutualTrainer(stack, sup, TrainConfig(**TINY))


@pytest.mark.parametrize("given", ["classes", "boxes"])
def test_what_is_no_supervision_is_refused_with_how_to_make_one(given):
    image, boxes = disc_image()
    wrong = make_supervision(image.shape, boxes).classes if given == "classes" else boxes
    with pytest.raises(TypeError, match=r"not a Supervision: .*make_supervision\(image\.shape"):
        MutualTrainer(image, wrong, TrainConfig(**TINY))


@pytest.mark.filterwarnings("ignore::napari_mutualseg.segmenter.NoCellsWarning")
def test_labels_given_for_the_image_are_warned_of(trained):
    trainer, _ = trained
    image, boxes = disc_image()
    sup = make_supervision(image.shape, boxes)
    with pytest.warns(UserWarning, match="looks like labels or a mask"):
        MutualTrainer(sup.instances.astype(np.int32), sup, TrainConfig(**TINY))
    with pytest.warns(UserWarning, match="image looks like labels or a mask"):
        trainer.pair.segment(sup.instances.astype(np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", NoCellsWarning)  # a pair trained a step finds none
        trainer.pair.segment((image * 1000).astype(np.uint16))  # intensities: no warning


def test_predict_given_a_stack_points_to_predict_planes(trained):
    trainer, _ = trained
    image, _ = disc_image()
    stack = np.stack([image, image])
    with pytest.raises(ValueError, match=r"2 planes; predict takes one \(predict_planes predicts"):
        trainer.pair.predict(stack, axes="ZYX")
    with pytest.raises(ValueError, match=r"predict_proba takes one \(segment takes stacks"):
        trainer.pair.predict_proba(stack, axes="ZYX")


def test_a_warning_about_the_image_names_the_line_that_segments_or_predicts_it():
    """predict and predict_proba named a line of their own: Python's default filter then
    showed the warning once per session, whichever image a later call was given."""
    from napari_mutualseg.images import AxisImage
    from napari_mutualseg.models import ModelPair

    pair = ModelPair(ThresholdNet(), ThresholdNet(), channel_names=("DAPI",))
    image, _ = disc_image()
    gfp = AxisImage.from_array(image[None], "CYX", channel_names=["GFP"])
    calls = {
        "segment": pair.segment,
        "predict": pair.predict,
        "predict_proba": pair.predict_proba,
        "predict_planes": lambda image: list(pair.predict_planes(image)),
    }
    mask = np.zeros((64, 64), np.uint16)
    for i in range(1, 9):
        mask[i * 6 : i * 6 + 4, 5:20] = i
    with pytest.warns(UserWarning, match="looks like labels or a mask") as told:
        MutualTrainer(mask, make_supervision(mask.shape, [(5, 5, 20, 20)]), TINY)
    assert told[0].filename == __file__, "MutualTrainer"
    for method, call in calls.items():
        with pytest.warns(UserWarning, match="trained on DAPI and are given GFP") as told:
            call(gfp)
        assert told[0].filename == __file__, method
        with pytest.warns(UserWarning, match="looks like labels or a mask") as told:
            call(mask)
        assert told[0].filename == __file__, method


def test_an_image_without_cells_is_warned_of_at_the_line_that_segments_it():
    """An image of another kind, or a blank field, gave all-zero labels without a word."""
    from napari_mutualseg.models import ModelPair

    pair = ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})
    blank = np.full((64, 64), 0.1, np.float32)
    blank[30, 30] = 1  # one bright pixel: no cell of 4 pixels
    calls = {
        "segment": pair.segment,
        "predict": pair.predict,
        "predict_planes": lambda image: list(pair.predict_planes(image)),
    }
    for method, call in calls.items():
        with pytest.warns(NoCellsWarning, match="No cells found in image: .*check their channels"):
            call(blank)
        with warnings.catch_warnings(record=True) as told:
            warnings.simplefilter("always")
            call(blank)
        assert [w.filename for w in told] == [__file__], method


def test_a_stack_with_planes_without_cells_is_warned_of_once():
    from napari_mutualseg.models import ModelPair

    pair = ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})
    image, _ = disc_image()
    dim = disc_image(seed=1)[0] * 0.05  # cells far below the stack's range
    flat = np.full_like(image, 0.1)  # nothing to segment: not counted
    stack = np.stack([image, dim, flat, dim])
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        labels = pair.segment(stack, axes="ZYX", link=False)
    assert [int(plane.max()) for plane in labels] == [4, 0, 0, 0]
    assert [w.category for w in told] == [NoCellsWarning]
    assert str(told[0].message).startswith(
        "No cells found in 2 of the 3 planes of image (z001, z003): if they hold cells"
    )
    with pytest.warns(NoCellsWarning, match=r"in image \(in any of its 2 planes\)"):
        pair.segment(np.stack([dim, flat, dim]), axes="ZYX")


def test_a_prediction_prints_its_counts_not_its_arrays():
    labels = np.zeros((8, 10), np.int32)
    labels[1:4, 1:4], labels[5:7, 5:9] = 1, 2
    spot = Spot("cell", 2, 0.5, 8, (5.5, 6.5), (5, 5, 7, 9))
    region = Spot("region", 0, 0.4, 3, (1.0, 8.0), (0, 7, 3, 9))
    disagreement = np.full(labels.shape, 0.25, np.float16)
    prediction = Prediction(
        np.zeros((3, 8, 10)), labels, disagreement, np.zeros(3), [spot, region]
    )
    assert repr(prediction) == (
        "Prediction(8 x 10 px, 2 cells; to check: 1 cell, 1 region; mean disagreement 0.250)"
    )


def test_settings_as_a_dict_and_an_empty_image(trained):
    trainer, _ = trained
    image, boxes = disc_image()
    sup = make_supervision(image.shape, boxes)
    assert MutualTrainer(image, sup, {**TINY, "rounds": 1}).config == TrainConfig(
        **{**TINY, "rounds": 1}
    )
    with pytest.raises(TypeError, match="did you mean 'rounds'"):
        MutualTrainer(image, sup, {"round": 1})
    with pytest.raises(ValueError, match=r"too small \(\(0, 0\)\); it needs at least 8x8"):
        trainer.pair.segment(np.zeros((0, 0), np.float32))


def test_the_sample_prints_what_it_holds():
    from napari_mutualseg.sample import load_sample

    assert repr(load_sample()) == (
        "Sample(BBBC039 IXMtest_G13_s9: image 520 x 696 uint16, 73 boxes, 73 cells in the "
        "ground truth)"
    )


def test_supervisions_and_images_print_what_they_are():
    image, boxes = disc_image()
    sup = make_supervision(image.shape, boxes)
    said = repr(sup)
    assert said.startswith("Supervision(64 x 64 px, 4 boxes: ") and "% cell" in said
    assert "array" not in said and "Box(" not in said
    from napari_mutualseg.images import AxisImage

    stack = AxisImage.from_array(np.stack([image, image]), "ZYX", name="cells.tif")
    assert (
        repr(stack)
        == "AxisImage(cells.tif: 64 x 64 px, 2 z-planes, axes ZYX; float32 numpy pixels)"
    )


def test_the_package_map_names_only_what_its_modules_hold():
    import importlib
    import re

    import napari_mutualseg

    named = re.findall(r"``(\w+)\.(\w+)(?:\.(\w+))?", napari_mutualseg.__doc__)
    assert len(named) > 10
    for module, name, attribute in named:
        found = getattr(importlib.import_module(f"napari_mutualseg.{module}"), name)
        if attribute:
            getattr(found, attribute)
