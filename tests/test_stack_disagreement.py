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


class _Eager(ThresholdNet):
    """A peer that sees cells at a lower threshold: A and B disagree on the dim discs."""

    def forward(self, x):
        return super().forward(x + 0.3)


def _write(path, letters):
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    stack = (uneven_stack() * 1000).astype(np.uint16)
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": letters})
    return path


@pytest.mark.parametrize("letters", ["ZYX", "TYX"])
def test_a_stacks_disagreement_map_and_cells_to_check_go_with_its_linked_cells(tmp_path, letters):
    import csv

    import tifffile

    from napari_mutualseg.image_task import process_image, read_labels
    from napari_mutualseg.io import written_as
    from napari_mutualseg.jobs import BatchOptions, plan_jobs

    pair = ModelPair(ThresholdNet(), _Eager(), settings={"min_size": 4})
    path = _write(tmp_path / "in" / "stack.tif", letters)
    plain = BatchOptions(tile_size=64, overlap=16, track=True)
    options = BatchOptions(tile_size=64, overlap=16, track=True, disagreement=True)
    [job] = plan_jobs([path], tmp_path / "maps", options)
    [alone] = plan_jobs([path], tmp_path / "plain", plain)
    result = process_image(pair, job, options)
    assert result.status == "done", result.reason
    assert process_image(pair, alone, plain).status == "done"
    labels = read_labels(job.labels)
    np.testing.assert_array_equal(labels, read_labels(alone.labels))  # as without maps
    tif, table = job.disagreement
    assert written_as(tif) == "disagreement"
    with tifffile.TiffFile(tif) as f:  # a stack for Fiji, on the labels' planes
        assert f.series[0].axes == letters
        disagreement = f.asarray()
    image = AxisImage.from_file(path)
    expected = [
        np.round(p.disagreement.astype(np.float32) * 255) for p in pair.predict_planes(image)
    ]
    np.testing.assert_array_equal(disagreement, np.stack(expected).astype(np.uint8))
    assert disagreement.any()
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    axis = letters[0].lower()
    assert list(rows[0])[:2] == [axis, "rank"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)  # most disputed first, over all planes
    # every cell of every plane once, by the label it has in the labels file
    cells = {(int(r[axis]), int(r["label"])) for r in rows if r["kind"] == "cell"}
    assert cells == {(p, int(k)) for p, plane in enumerate(labels) for k in np.unique(plane) if k}


def test_a_stack_with_maps_stopped_between_planes_leaves_nothing(pair, tmp_path):
    from napari_mutualseg.image_task import process_image
    from napari_mutualseg.jobs import BatchOptions, plan_jobs

    options = BatchOptions(tile_size=64, overlap=16, disagreement=True)
    [job] = plan_jobs([_write(tmp_path / "in" / "stack.tif", "ZYX")], tmp_path / "out", options)
    assert process_image(pair, job, options, stop=lambda: True).status == "not done"
    assert not any(p.exists() for p in (*job.outputs, job.record))
