"""The widget with the images microscopes make: channels, z, time, RGB; axes never guessed
silently."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import disc_image, messages, rectangles
from napari_mutualseg._napari.axes import layer_axes
from napari_mutualseg._napari.layers import CLASS_COLORS
from napari_mutualseg.supervision import CELL, IGNORE


def two_channels():
    """(C, Y, X): discs in channel 1, a distracting pattern in channel 0; the disc boxes."""
    nuclei, rows = disc_image()
    rng = np.random.default_rng(3)
    distract = rng.random(nuclei.shape).astype(np.float32)
    return np.stack([distract, nuclei]), rows


def test_a_channel_image_trains_on_the_picked_channel_and_predicts_2d_cells(viewer_widget):
    viewer, widget = viewer_widget
    data, rows = two_channels()
    image = viewer.add_image(data, name="cyx")
    widget.image_layer = image
    assert widget.data.axes.placeholderText() == "ZYX (assumed)"  # said, not hidden
    widget.image_axes = "CYX"
    assert tuple(image.axis_labels) == ("c", "y", "x")  # the layer carries its axes
    assert widget.data.axes.text() == "CYX"
    boxes = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="b")  # 2D boxes
    widget.boxes_layer = boxes
    widget.settings.update(rounds=1, channels="1")
    sup = widget.generate_supervision()
    assert sup.data.shape == data.shape[1:]  # one plane, not two "planes" of channels
    assert (sup.data == CELL).sum() > 0
    widget.train(block=True)
    assert widget.pair is not None and widget.pair.in_channels == 1
    assert list(widget.pair.settings["channels"]) == [1]
    cells = viewer.layers["cyx cells"]
    assert cells.data.shape == data.shape[1:]
    widget.predict(image, block=True)
    assert viewer.layers["cyx cells (no boxes)"].data.shape == data.shape[1:]


def test_both_channels_as_input_and_a_wrong_channel_count_is_explained(viewer_widget, notes):
    viewer, widget = viewer_widget
    data, rows = two_channels()
    image = viewer.add_image(data, name="cyx", axis_labels=("c", "y", "x"))
    widget.image_layer = image
    assert widget.image_axes == "CYX"  # read from the layer, no field to fill
    boxes = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="b")
    widget.boxes_layer = boxes
    widget.settings.rounds = 1
    widget.train(block=True)
    assert widget.pair.in_channels == 2
    gray = viewer.add_image(data[1], name="one channel")
    assert widget.predict(gray, block=True) is None  # started, then failed
    assert "trained on 2 channels" in widget.last_error
    assert any("trained on 2 channels" in m for m in messages(notes, "error"))
    assert "one channel cells" not in [layer.name for layer in viewer.layers]


def test_unnamed_3d_image_is_a_stack_and_the_user_is_told(viewer_widget, notes):
    viewer, widget = viewer_widget
    a, rows = disc_image()
    stack = viewer.add_image(np.stack([a, a]), name="stack")
    widget.image_layer = stack
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles(rectangles(rows, plane=1))
    sup = widget.generate_supervision()
    assert sup.data.shape == stack.data.shape
    assert (sup.data[0] == IGNORE).all() and (sup.data[1] == CELL).any()
    assert any("taken as a stack of 2D planes" in m for m in messages(notes, "warning"))


def test_time_series_of_z_stacks_boxes_land_on_their_plane(viewer_widget, notes):
    viewer, widget = viewer_widget
    a, rows = disc_image()
    data = np.zeros((2, 3, *a.shape), np.float32)
    data[1, 2] = a
    movie = viewer.add_image(data, name="movie")
    widget.image_layer = movie
    boxes = widget.new_boxes_layer()
    assert boxes.ndim == 4
    boxes.add_rectangles([np.column_stack([np.full(4, 1.0), r]) for r in rectangles(rows, 2)])
    assert widget.generate_supervision() is None  # 4 axes without names: asked, not guessed
    assert widget.image_axes == ""  # still to be said; reading it does not fail
    assert any("set Axes" in m for m in messages(notes, "error"))
    with pytest.raises(ValueError, match="channel axis must come first"):
        widget.image_axes = "TCYX"
    widget.image_axes = "TZYX"
    sup = widget.generate_supervision()
    assert sup.data.shape == data.shape
    assert (sup.data[1, 2] == CELL).any() and (sup.data[0] == IGNORE).all()
    assert (sup.data[1, :2] == IGNORE).all()


def test_boxes_drawn_on_any_channel_of_a_channel_z_stack_train_that_z_plane(viewer_widget):
    viewer, widget = viewer_widget
    a, rows = disc_image()
    data = np.zeros((2, 3, *a.shape), np.float32)
    data[:, 1] = a
    image = viewer.add_image(data, name="czyx", axis_labels=("c", "z", "y", "x"))
    widget.image_layer = image
    boxes = widget.new_boxes_layer()
    # drawn while channel 1 and z-plane 1 were shown
    boxes.add_rectangles([np.column_stack([np.full((4, 2), (1.0, 1.0)), r]) for r in
                          rectangles(rows)])  # fmt: skip
    sup = widget.generate_supervision()
    assert sup.data.shape == data.shape[1:]  # (Z, Y, X): the channels share one supervision
    assert (sup.data[1] == CELL).any() and (sup.data[0] == IGNORE).all()
    widget.settings.rounds = 1
    widget.train(block=True)
    assert viewer.layers["czyx cells"].data.shape == data.shape[1:]


def test_rgb_image_is_accepted_as_colours_or_gray(viewer_widget):
    viewer, widget = viewer_widget
    a, rows = disc_image()
    rgb = (np.clip(np.stack([a, a * 0.5, a * 0.2], axis=-1), 0, 1) * 255).astype(np.uint8)
    image = viewer.add_image(rgb, name="he", rgb=True)
    assert layer_axes(image).rgb and layer_axes(image).axes == "YX"
    widget.image_layer = image
    boxes = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="b")
    widget.boxes_layer = boxes
    widget.settings.update(rounds=1, rgb="gray")
    widget.train(block=True)
    assert widget.pair.in_channels == 1
    assert viewer.layers["he cells"].data.shape == rgb.shape[:2]


def test_a_dask_layer_larger_than_the_whole_image_limit_goes_block_by_block(scene, monkeypatch):
    import dask.array as da

    from napari_mutualseg import blockwise, segmenter

    viewer, widget, image, _boxes = scene
    widget.settings.rounds = 1
    widget.train(block=True)
    lazy = viewer.add_image(da.from_array(np.asarray(image.data), chunks=32), name="lazy")
    monkeypatch.setattr(segmenter, "AUTO_BLOCKWISE_PIXELS", 32 * 32)  # as a slide scan would
    calls = []
    by_blocks = blockwise.segment_blockwise
    monkeypatch.setattr(
        segmenter,
        "segment_blockwise",
        lambda *a, **k: calls.append(k) or by_blocks(*a, **k),
    )
    widget.predict(lazy, block=True)
    cells = viewer.layers["lazy cells"]
    assert calls and calls[0]["out"].shape == cells.data.shape == image.data.shape
    assert widget.controller.predictions[str(lazy.unique_id)].spots == []


def test_a_predicted_z_stack_is_linked_into_3d_cells_with_their_table(second_image):
    viewer, widget, _image, other = second_image
    flat = viewer.layers["other cells"].data
    assert flat.max() > 0  # the pair finds the discs
    stack = viewer.add_image(np.stack([other.data] * 3), name="stack")
    widget.predict(stack, block=True)
    cells = viewer.layers["stack cells"].data
    assert cells.shape == (3, *flat.shape)
    # one label per disc through z, not one per disc and plane
    assert len(np.unique(cells[cells > 0])) == len(np.unique(flat[flat > 0]))
    table = viewer.layers["stack cells"].features
    assert "volume_px" in table and len(table) == len(np.unique(flat[flat > 0]))
    spots = widget.controller.predictions[str(stack.unique_id)].spots
    assert all(s.label in set(np.unique(cells)) for _, s in spots)


def test_a_file_opens_with_its_axes_and_pixel_size(viewer_widget, tmp_path, notes):
    import tifffile

    viewer, widget = viewer_widget
    data, _rows = two_channels()
    path = tmp_path / "two.tif"
    tifffile.imwrite(
        path, data, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": "CYX", "unit": "um"},
    )  # fmt: skip
    [layer] = viewer.open(path, plugin="napari-mutualseg")
    assert tuple(layer.axis_labels) == ("c", "y", "x")
    np.testing.assert_allclose(layer.scale[-2:], (0.5, 0.5))
    # in µm for napari's scale bar and cursor, and the boxes drawn on it too
    assert tuple(map(str, layer.units)) == ("pixel", "micrometer", "micrometer")
    widget.image_layer = layer
    assert widget.image_axes == "CYX"
    assert widget.new_boxes_layer().units == layer.units
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data)  # no axes written: opened as stored, the user is told
    [unnamed] = viewer.open(plain, plugin="napari-mutualseg")
    assert unnamed.data.shape == data.shape
    assert sum("set Axes" in m for m in messages(notes, "warning")) == 1
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a TIFF")  # unreadable: napari says why, no advice on axes
    with pytest.raises(Exception, match="Cannot read"):
        viewer.open(broken, plugin="napari-mutualseg")
    assert sum("set Axes" in m for m in messages(notes, "warning")) == 1


def test_opening_a_file_says_what_it_left_unsaid(make_napari_viewer, tmp_path, notes):
    import tifffile

    viewer = make_napari_viewer()
    path = tmp_path / "screen.tif"
    tifffile.imwrite(path, np.zeros((20, 30), np.uint8), resolution=(72, 72), resolutionunit=2)
    [layer] = viewer.open(path, plugin="napari-mutualseg")
    np.testing.assert_allclose(layer.scale, (1, 1))  # 72 dpi is no pixel size
    [said] = messages(notes, "info")
    assert said.startswith("screen.tif: 20 x 30 px") and "72 dpi" in said and "pixel_size=" in said


def test_label_files_of_the_package_open_as_labels(make_napari_viewer, tmp_path):
    from napari_mutualseg.io import write_labels
    from napari_mutualseg.ome import PixelSize

    viewer = make_napari_viewer()
    cells = np.zeros((20, 30), np.int32)
    cells[2:8, 3:9], cells[10:15, 12:20] = 1, 2
    sup = np.where(cells > 0, 1, 0).astype(np.uint8)
    sup[0] = 255
    pixel = PixelSize(0.5, 0.5, "µm")
    write_labels(tmp_path / "x_cells.tif", cells, pixel_size=pixel)
    write_labels(tmp_path / "x supervision.tif", sup, kind="supervision")
    [labels] = viewer.open(tmp_path / "x_cells.tif", plugin="napari-mutualseg")
    assert labels._type_string == "labels" and labels.name == "x_cells"
    np.testing.assert_array_equal(labels.data, cells)
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    [painted] = viewer.open(tmp_path / "x supervision.tif", plugin="napari-mutualseg")
    assert painted._type_string == "labels"
    # in the class colours the plugin shows supervisions in: ignore (255) is grey, not random
    np.testing.assert_allclose(painted.colormap.map(255), CLASS_COLORS[255], atol=1e-6)


def test_channels_named_in_the_file_are_picked_by_name(viewer_widget, tmp_path, notes):
    import tifffile

    viewer, widget = viewer_widget
    data, rows = two_channels()  # the discs are in channel 1, "GFP"
    path = tmp_path / "named.ome.tif"
    tifffile.imwrite(
        path, data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}}
    )
    [layer] = viewer.open(path, plugin="napari-mutualseg")
    assert tuple(layer.metadata["channel_names"]) == ("DAPI", "GFP")
    widget.image_layer = layer
    widget.boxes_layer = viewer.add_shapes(rectangles(rows), shape_type="rectangle", name="b")
    widget.settings.update(rounds=1, channels="GFP")
    widget.train(block=True)
    assert messages(notes, "error") == []
    assert widget.pair is not None and widget.pair.in_channels == 1
    widget.predict(layer, block=True)
    assert messages(notes, "error") == []
    table = viewer.layers["named cells (no boxes)"].features
    # measured in every channel, each called by its name
    assert {"mean_intensity_DAPI", "mean_intensity_GFP"} <= set(table.columns)


def test_messages_name_the_layer_and_plane_and_give_the_panels_advice(scene, notes):
    viewer, widget, image, _boxes = scene
    widget.settings.rounds = 1
    widget.train(block=True)
    nan_stack = np.stack([image.data] * 3)
    nan_stack[1, 5, 5] = np.nan
    widget.predict(viewer.add_image(nan_stack, name="nuclei"), block=True)
    widget.predict(viewer.add_image(np.zeros((32, 32)), name="empty"), block=True)
    rgb = (np.stack([image.data] * 3, axis=-1).clip(0, 1) * 255).astype(np.uint8)
    widget.predict(viewer.add_image(rgb, name="he", rgb=True), block=True)
    errors = messages(notes, "error")
    # the planes are normalised together: the stack's percentiles meet the NaN first
    assert any(m.startswith("'nuclei' contains NaN") for m in errors)
    assert any(m.startswith("'empty' is constant") for m in errors)
    [channels] = [m for m in errors if m.startswith("'he' gives the networks 3 channels")]
    assert "Channels setting" in channels and "RGB images as" in channels
    assert not any("plane is" in m or "--" in m or "in Python" in m for m in errors)


def test_a_constant_channel_in_training_is_left_out_with_the_channels_setting(
    viewer_widget, notes
):
    viewer, widget = viewer_widget
    data, rows = two_channels()
    data[0] = 0.5  # a channel with nothing in it
    image = viewer.add_image(data, name="cyx", axis_labels=("c", "y", "x"))
    widget.image_layer = image
    widget.boxes_layer = viewer.add_shapes(rectangles(rows), shape_type="rectangle")
    widget.train(block=True)
    [error] = messages(notes, "error")
    assert "channel 0 of 'cyx' is constant" in error
    assert "(the Channels setting)" in error and "--channel" not in error


def test_axes_typed_in_the_field_name_an_unnamed_image(viewer_widget, qtbot, notes):
    from qtpy.QtCore import Qt

    viewer, widget = viewer_widget
    a, rows = disc_image()
    field = widget.data.axes

    def type_axes(text):
        field.clear()
        qtbot.keyClicks(field, text)
        qtbot.keyClick(field, Qt.Key.Key_Return)

    movie = viewer.add_image(np.zeros((2, 3, *a.shape), np.float32), name="movie")
    widget.image_layer = movie
    assert field.placeholderText() == "needed, e.g. CZYX"
    type_axes("TZYX")  # four axes without names: typing them is how they are named
    assert tuple(movie.axis_labels) == ("t", "z", "y", "x")
    assert field.text() == "TZYX"

    stack = viewer.add_image(np.stack([a, a]), name="stack")
    widget.image_layer = stack
    assert field.placeholderText() == "ZYX (assumed)"
    type_axes("ZYX")  # confirming what was assumed names it: no more warnings
    assert tuple(stack.axis_labels) == ("z", "y", "x")
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles(rectangles(rows, plane=1))
    assert widget.generate_supervision() is not None
    assert not any("taken as a stack" in m for m in messages(notes))
    assert messages(notes, "error") == []


def test_a_blank_plane_of_a_stack_is_left_empty_and_said(scene, notes):
    viewer, widget, image, _boxes = scene
    widget.settings.rounds = 1
    widget.train(block=True)
    cells = np.asarray(image.data)
    padded = np.stack([np.zeros_like(cells), cells, cells])
    widget.predict(viewer.add_image(padded, name="padded", axis_labels=tuple("tyx")), block=True)
    labels = viewer.layers["padded cells"].data
    assert labels.shape == padded.shape and (labels[0] == 0).all()
    assert messages(notes, "error") == []
    [note] = [m for m in messages(notes, "warning") if "constant" in m]
    assert note.startswith("'padded': time point 0 is constant")
    blank = viewer.add_image(np.zeros((2, 32, 32)), name="blank", axis_labels=tuple("zyx"))
    widget.predict(blank, block=True)  # nothing but blank planes: the clear error
    assert any(m.startswith("'blank' is constant") for m in messages(notes, "error"))
    flat = np.stack([np.zeros((32, 32)), np.ones((32, 32))])  # each plane blank on its own
    widget.predict(viewer.add_image(flat, name="flat", axis_labels=tuple("zyx")), block=True)
    assert any(m.startswith("Every plane of 'flat' is constant") for m in messages(notes, "error"))
    assert "blank cells" not in viewer.layers and "flat cells" not in viewer.layers


def test_cells_trained_on_two_planes_of_a_stack_are_cells_of_their_own(viewer_widget, monkeypatch):
    """Each trained plane numbers its cells from 1: on the stack, and in its table, a cell
    of plane 0 and one of plane 2 must not be one object between them."""
    from napari_mutualseg import training
    from test_widget import fake_report

    viewer, widget = viewer_widget
    a, rows_a = disc_image(centres=((16, 16),))
    b, rows_b = disc_image(centres=((46, 46),), seed=1)
    stack = viewer.add_image(np.stack([a, a * 0 + 0.1, b]), name="stack")
    widget.image_layer = stack
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles(rectangles(rows_a, plane=0) + rectangles(rows_b, plane=2))

    class OneCellEach(training.MutualTrainer):
        def __iter__(self):
            report = fake_report(1, rounds=1)
            report.instances = [(a > 0.5).astype(np.int32), (b > 0.5).astype(np.int32)]
            for name in ("classes_a", "classes_b", "labels_a", "labels_b", "disagreement"):
                setattr(report, name, getattr(report, name) * 2)
            yield report

    monkeypatch.setattr(training, "MutualTrainer", OneCellEach)
    widget.train(block=True)
    cells = viewer.layers["stack cells"]
    first, last = (int(cells.data[0, 16, 16]), int(cells.data[2, 46, 46]))
    assert first and last and first != last
    table = cells.features
    assert sorted(table["label"]) == sorted([first, last])
    assert sorted(table["centroid_z_px"]) == [0, 2]
    # the cell to check is selected by the label it has on the stack
    spot = widget.correct.next_cell(stack)
    assert spot.label in (first, last)
    assert cells.selected_label == spot.label


def test_the_planes_of_a_layer_carry_its_pixel_size():
    """The size the core records for a model trained in the panel, and warns of when
    segmenting, is that of the layer's planes: y and x of a z-stack or time series too."""
    from napari.layers import Image

    from napari_mutualseg.ome import PixelSize

    stack = np.zeros((3, 8, 10), np.float32)
    zyx = Image(stack, axis_labels=("z", "y", "x"), scale=(2, 0.5, 0.25), units=("um",) * 3)
    tyx = Image(stack, axis_labels=("t", "y", "x"), scale=(60, 0.5, 0.5), units=("s", "nm", "nm"))
    plain = Image(stack)  # a script's array: scale 1, no units
    axes = layer_axes(zyx)
    assert PixelSize.of(axes.plane(zyx.data, 1)) == PixelSize(0.5, 0.25, "µm")
    assert PixelSize.of(axes.image(zyx.data)) == PixelSize(0.5, 0.25, "µm", z=2)
    assert PixelSize.of(layer_axes(tyx).plane(tyx.data, 2)) == PixelSize(0.5, 0.5, "nm")
    assert layer_axes(plain).plane(plain.data, 0).pixel_size == {}
