"""Where A and B disagree on z-stacks and time series: every face sees the cells that
``segment`` finds, each plane normalised with the whole stack's percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import ThresholdNet, disc_image
from napari_mutualseg.images import AxisImage
from napari_mutualseg.models import ModelPair


@pytest.fixture
def pair():
    return ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})


def uneven_stack():
    """Three planes of discs, the last dim: on its own it is as bright as the others."""
    a, _ = disc_image()
    b, _ = disc_image(centres=((16, 16), (44, 48)), seed=1)
    return np.stack([a, b, a * 0.3]).astype(np.float32)


def _finish(worker):
    try:
        while True:
            next(worker)
    except StopIteration as end:
        return end.value


@pytest.mark.parametrize("letters", ["ZYX", "TYX"])
def test_the_panels_cells_of_a_stack_are_those_of_segment(pair, letters):
    from napari_mutualseg._napari.axes import LayerAxes
    from napari_mutualseg._napari.workers import PredictionResult, run_prediction

    stack = uneven_stack()
    panel = _finish(run_prediction(pair, stack, LayerAxes(letters, stack.shape), 64, "s", True))
    assert isinstance(panel, PredictionResult)
    expected = pair.segment(AxisImage.from_array(stack, letters), track=True)
    assert not expected[2].any()  # the dim plane, normalised with the stack's percentiles
    np.testing.assert_array_equal(panel.labels, expected)
    assert {s.label for _, s in panel.spots if s.kind == "cell"} == set(
        np.unique(expected[expected > 0])
    )


def test_predict_planes_gives_each_plane_the_cells_segment_finds(pair):
    stack = uneven_stack()
    image = AxisImage.from_array(stack, "ZYX")
    planes = list(pair.predict_planes(image))
    unlinked = pair.segment(image, link=False)
    assert len(planes) == 3
    for z, prediction in enumerate(planes):
        np.testing.assert_array_equal(prediction.labels > 0, unlinked[z] > 0)
        assert prediction.disagreement.shape == stack.shape[1:]
    # one plane: as predict
    one = next(pair.predict_planes(stack[0]))
    np.testing.assert_array_equal(one.labels, pair.predict(stack[0]).labels)


def test_a_flat_plane_of_a_stack_has_no_cells_in_segment_as_in_predict_planes(pair):
    a, _ = disc_image()
    stack = AxisImage.from_array(np.stack([a, np.full_like(a, 1.0)]), "ZYX")
    labels = pair.segment(stack, link=False)
    assert labels[0].any() and not labels[1].any()  # not one cell the size of the plane
    assert not list(pair.predict_planes(stack))[1].labels.any()
