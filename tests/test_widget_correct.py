"""Check and correct in the widget: disagreement, the next cell to check, fixes, new training."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from helpers import TIMEOUT, WIDGET_NAME, ThresholdNet, disc_image, messages, same
from napari_mutualseg._napari.layers import OWNER_KEY, camera
from napari_mutualseg.boxes import boxes_from_labels, rectangle_vertices
from napari_mutualseg.models import ModelPair, build_unet
from napari_mutualseg.supervision import BACKGROUND, CELL


class Background(ThresholdNet):
    """Sees no cell anywhere, as its peer."""

    def forward(self, x):
        return torch.cat([x * 0 + 8, x * 0 - 8, x * 0 - 8], dim=1)


#: Two discs side by side (their cells touch) and one apart.
TOUCHING = ((20, 20), (20, 35), (46, 46))


@pytest.fixture
def trained(second_image):
    """``second_image`` with the check panel on the second image."""
    viewer, widget, image, other = second_image
    widget.check.image.layer = other
    return viewer, widget, image, other


def test_disagreement_layers_follow_training_and_prediction(trained):
    viewer, widget, _image, other = trained
    for name in ("cells disagreement", "other disagreement"):
        layer = viewer.layers[name]
        assert layer.metadata[OWNER_KEY]["role"] == "disagreement" and not layer.visible
        assert layer.data.min() >= 0 and layer.data.max() <= 1
    # two networks that are one and the same agree everywhere
    pair = widget.pair
    widget.controller.set_pair(ModelPair(pair.model_a, copy.deepcopy(pair.model_a)))
    widget.predict(other, block=True)
    assert not np.asarray(viewer.layers["other disagreement"].data).any()


def test_next_cell_to_check_goes_to_the_most_disputed_first(trained):
    viewer, widget, _image, other = trained
    spots = widget.correct.spots(other)
    assert spots and all(a[1].score >= b[1].score for a, b in itertools.pairwise(spots))
    first = widget.correct.next_cell(other)
    assert first == spots[0][1]
    np.testing.assert_allclose(camera(viewer).center[-2:], first.centroid, atol=1e-6)
    if first.label:
        assert viewer.layers["other cells"].selected_label == first.label
    assert widget.correct.next_cell(other) == spots[1 % len(spots)][1]
    assert "to check" in widget.status.text()


def test_the_cells_to_check_of_a_round_are_found_once(trained, monkeypatch):
    """Finding them takes seconds at 2048²: each press of Next cell on the training image
    searched the round again."""
    from napari_mutualseg._napari import correct

    _viewer, widget, image, _other = trained
    calls, find = [], correct.spots_to_check
    monkeypatch.setattr(correct, "spots_to_check", lambda *a: calls.append(1) or find(*a))
    first, second = widget.correct.next_cell(image), widget.correct.next_cell(image)
    spots = widget.correct.spots(image)
    assert len(calls) == 1 and [first, second] == [s for _, s in spots[:2]]


def test_next_cell_button_searches_a_rounds_cells_in_a_worker(trained, qtbot, notes, monkeypatch):
    """The search froze the viewer for most of a second at 2048² at the first press; the
    button says it is busy meanwhile, then goes to the same cells in the same order. A
    search that fails says so, and the button works again."""
    from napari_mutualseg._napari import correct
    from napari_mutualseg._napari.correct import find_spots

    viewer, widget, image, _other = trained
    check = widget.check
    check.image.layer = image
    with monkeypatch.context() as patch:
        patch.setattr(correct, "find_spots", lambda maps: 1 / 0)
        check.next.click()
        qtbot.waitUntil(check.next.isEnabled, timeout=TIMEOUT)
    assert any("Could not find the cells to check" in m for m in messages(notes, "error"))
    idle = check.next.sizeHint().width()
    check.next.click()
    assert not check.next.isEnabled() and "Finding" in check.next.text()
    assert check.next.sizeHint().width() <= idle  # a wider text widened the dock meanwhile
    qtbot.waitUntil(check.next.isEnabled, timeout=TIMEOUT)
    spots = widget.correct.spots(image)
    assert spots == find_spots(widget.controller.round_maps(image))
    np.testing.assert_allclose(camera(viewer).center[-2:], spots[0][1].centroid, atol=1e-6)
    check.next.click()  # found already: at once
    assert check.next.isEnabled() and check.next.text() == "Next cell to check"
    np.testing.assert_allclose(
        camera(viewer).center[-2:], spots[1 % len(spots)][1].centroid, atol=1e-6
    )


def test_next_cell_to_check_is_on_the_image_just_predicted(thresholded, notes):
    viewer, widget = thresholded
    viewer.add_image(disc_image()[0], name="first")
    viewer.add_image(disc_image(seed=4)[0], name="opened")  # picked next to Predict
    widget.model.predict.click()
    widget.wait()
    assert same(widget.check.image.layer, viewer.layers["opened"])
    widget.check.next.click()
    assert not messages(notes, "warning")
    assert "to check" in widget.status.text()


def test_merge_and_split_a_cell(trained):
    viewer, widget, _image, other = trained
    cells = viewer.layers["other cells"]
    label = int(np.unique(cells.data)[1])
    area = int((cells.data == label).sum())
    new = widget.correct.split(other, label)
    assert (cells.data == new).any() and (cells.data == label).any()
    assert int(np.isin(cells.data, [label, new]).sum()) == area
    table = cells.features  # the table (and what is exported from it) follows
    assert {label, new} <= set(table["label"].tolist())
    assert int(table["area_px"][table["label"].isin([label, new])].sum()) == area
    widget.correct.merge(other, label, new)  # the two halves touch
    assert not (cells.data == new).any() and int((cells.data == label).sum()) == area
    table = cells.features
    assert new not in table["label"].tolist()
    assert int(table["area_px"][table["label"] == label].iloc[0]) == area


def test_merge_and_split_measure_again_only_the_cells_they_change(trained, monkeypatch):
    """Every cell measured again took the main thread seconds per merge or split at real
    sizes; the table is the one a whole measurement gives."""
    from napari_mutualseg._napari import cells as cells_module
    from napari_mutualseg._napari import correct

    viewer, widget, _image, other = trained
    cells = viewer.layers["other cells"]
    ids = [int(i) for i in np.unique(cells.data) if i]
    measured, measure = [], cells_module.measure

    def measuring(labels, *args):
        measured.append(np.shape(labels))
        return measure(labels, *args)

    monkeypatch.setattr(cells_module, "measure", measuring)
    transformed, transform = [], correct.ndi.distance_transform_edt
    monkeypatch.setattr(
        correct.ndi,
        "distance_transform_edt",
        lambda mask: transformed.append(mask.shape) or transform(mask),
    )
    new = widget.correct.split(other, ids[0])
    widget.correct.merge(other, ids[0], new)
    assert measured and cells.data.shape not in measured
    assert transformed and cells.data.shape not in transformed  # split in the cell's box
    whole = cells_module.measure_layer(cells, other)
    table = cells_module.cell_table(cells)
    assert list(table) == list(whole)
    for column, values in whole.items():
        np.testing.assert_allclose(table[column], values, err_msg=column)


def test_proposed_boxes_are_the_predicted_cells(trained, qtbot):
    """Made in a worker (napari built 4,500 rectangles on the main thread for 3-4 s), the
    button saying so meanwhile."""
    viewer, widget, _image, other = trained
    idle = widget.check.propose.sizeHint().width()
    widget.check.propose.click()
    assert not widget.check.propose.isEnabled() and "Proposing" in widget.check.propose.text()
    assert widget.check.propose.sizeHint().width() <= idle
    qtbot.waitUntil(widget.check.propose.isEnabled, timeout=TIMEOUT)
    assert widget.check.propose.text() == "Propose boxes"
    boxes = widget.boxes_layer
    assert same(widget.image_layer, other) and boxes.name == "other boxes"
    expected = boxes_from_labels(np.asarray(viewer.layers["other cells"].data))
    assert len(boxes.data) == len(expected) > 0
    for vertices, box in zip(boxes.data, expected, strict=True):
        np.testing.assert_allclose(vertices, box.corners)


def test_corrected_cells_are_learned_from_and_kept(trained, notes):
    viewer, widget, _image, _other = trained
    widget.settings.steps_per_round = 3  # trusted pixels are kept whatever is learned
    cells = viewer.layers["other cells"]
    corrected = np.asarray(cells.data).copy()
    corrected[corrected == corrected.max()] = 0  # a wrong cell deleted
    corrected[2:9, 2:9] = corrected.max() + 1  # a missed cell painted
    cells.data = corrected
    widget.check.add.click()  # Add to training: training resumes over both images
    widget.wait()
    assert not messages(notes, "error")
    report = widget.last_report
    assert len(report.instances) == 2  # the boxed image and the corrected one
    # the painted cell is trusted: both networks learn it as cell in the round after
    assert (report.labels_a[1][4:7, 4:7] == CELL).all()
    assert (report.labels_b[1][4:7, 4:7] == CELL).all()
    # the person's layer is theirs now; the new result goes beside it
    kept = viewer.layers["other corrections"]
    assert same(kept, cells)
    np.testing.assert_array_equal(kept.data, corrected)
    assert viewer.layers["other cells"].metadata[OWNER_KEY]["role"] == "cells"
    assert widget.history[-1]["round"] == 2


def test_corrections_painted_in_place_with_napari_tools_are_seen(trained, notes):
    viewer, widget, _image, _other = trained
    widget.settings.steps_per_round = 3  # trusted pixels are kept whatever is learned
    cells = viewer.layers["other cells"]
    assert cells.data[16, 44] > 0  # a predicted cell
    cells.fill((16, 44), 0)  # erased with the fill tool: napari changes the array in place
    cells.paint((5, 5), int(cells.data.max()) + 1)  # a missed cell, with the brush
    widget.check.add.click()
    widget.wait()
    assert not messages(notes, "error")
    assert widget.last_report.labels_a[1][16, 44] == BACKGROUND  # learned as erased


def _add_a_missed_cell(viewer, widget) -> None:
    """Paint a cell the prediction of 'other' missed, and train on that correction."""
    widget.settings.steps_per_round = 3
    cells = viewer.layers["other cells"]
    cells.paint((5, 5), int(cells.data.max()) + 1)  # a missed cell, with the brush
    widget.check.add.click()
    widget.wait()


def test_a_corrected_image_closed_since_trains_along_without_a_warning(trained, notes):
    """Correct, add, close the image, go on: it is training data, not a removed result."""
    viewer, widget, _image, _other = trained
    _add_a_missed_cell(viewer, widget)
    for name in [layer.name for layer in viewer.layers if layer.name.startswith("other")]:
        viewer.layers.remove(name)
    widget.train(block=True)
    assert len(widget.last_report.instances) == 2  # the closed image trained along
    assert not messages(notes, "warning") and not messages(notes, "error")


def test_after_training_on_corrections_the_cells_to_check_are_the_new_ones(trained):
    """The newest networks say where to look: the prediction the person corrected is done."""
    from napari_mutualseg.disagreement import spots_to_check

    viewer, widget, _image, other = trained
    _add_a_missed_cell(viewer, widget)
    [(_plane, labels, disagreement)] = widget.controller.round_maps(other)
    newest = spots_to_check(labels, disagreement)
    assert [spot for _, spot in widget.correct.spots(other)] == newest
    first = widget.correct.next_cell(other)
    assert viewer.layers["other cells"].selected_label == first.label


def test_corrections_of_an_image_added_again_keep_the_earlier_ones(trained, notes):
    viewer, widget, _image, _other = trained
    widget.settings.steps_per_round = 3  # trusted pixels are kept whatever is learned
    cells = viewer.layers["other cells"]
    corrected = np.asarray(cells.data).copy()
    corrected[2:9, 2:9] = corrected.max() + 1  # a missed cell painted
    cells.data = corrected
    widget.check.add.click()
    widget.wait()
    # the new result of the image need not show the painted cell; the person fixes another
    again = viewer.layers["other cells"]
    assert again is not cells
    fixed = np.asarray(again.data).copy()
    wrong = int(fixed[44, 46])
    assert wrong
    fixed[fixed == wrong] = 0  # a wrong cell deleted this time
    again.data = fixed
    widget.check.add.click()
    widget.wait()
    assert not messages(notes, "error")
    report = widget.last_report
    for labels in (report.labels_a[1], report.labels_b[1]):
        assert (labels[4:7, 4:7] == CELL).all()  # the first correction is still learned
        assert labels[44, 46] == 0  # and the second one
    assert widget.history[-1]["round"] == 3


def test_nothing_corrected_or_the_boxed_image_gets_advice(trained, notes):
    _viewer, widget, image, _other = trained
    widget.check.add.click()
    widget.check.image.layer = image
    widget.check.add.click()
    errors = messages(notes, "error")
    assert any("Nothing on 'other' was corrected" in m for m in errors)
    assert any("trained from its boxes" in m for m in errors)


def _corrected(viewer, widget, image):
    """``image`` predicted, picked in the check panel, a cell painted on its cells."""
    widget.predict(image, block=True)
    widget.check.image.layer = image
    cells = viewer.layers[f"{image.name} cells"]
    data = np.asarray(cells.data).copy()
    data[..., 2:8, 2:8] = data.max() + 1
    cells.data = data
    return cells


def test_corrections_that_cannot_be_added_say_why_and_stay(thresholded, notes, monkeypatch):
    from napari_mutualseg._napari import writer

    viewer, widget = thresholded
    image = disc_image()[0]
    # a stack whose cells are too large to keep as predicted: predicting it again would not
    # help (its cells 24 KiB)
    monkeypatch.setattr(writer, "KEPT_STACK_BYTES", 16 * 2**10)
    stack = viewer.add_image(np.stack([image] * 3), name="st", axis_labels=("z", "y", "x"))
    _corrected(viewer, widget, stack)
    widget.check.add.click()
    said = messages(notes, "error")[-1]
    assert said.startswith("The cells of 'st' (0 MiB) are too large to tell your corrections")
    assert "Draw boxes on the cells of a few of its planes and train on it" in said
    # an image whose data changed since it was segmented
    flat = viewer.add_image(image, name="flat")
    cells = _corrected(viewer, widget, flat)
    role = cells.metadata[OWNER_KEY]["role"]
    flat.data = np.pad(image, ((0, 16), (0, 16)), constant_values=0.1)
    widget.check.add.click()
    assert (
        "'flat' changed since its cells were found (cells 64 x 64, image now 80 x 80)"
        in (messages(notes, "error")[-1])
    )
    # training cannot start (no models left, no boxes): nothing is added, the cells stay
    flat.data = image
    widget.reset_models()
    widget.check.add.click()
    assert "corrections of 'flat' were not added" in messages(notes, "error")[-1]
    assert not widget.controller.corrected
    assert cells.name == "flat cells" and cells.metadata[OWNER_KEY]["role"] == role
    widget.check.add.click()  # the same cells can be added again once training can start
    assert "corrections of 'flat' were not added" in messages(notes, "error")[-1]


def test_a_loaded_pair_is_refined_by_corrections_alone(viewer_widget, notes):
    viewer, widget = viewer_widget
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    widget.controller.set_pair(ModelPair(build_unet(arch, 0), build_unet(arch, 1)))  # loaded
    image = viewer.add_image(disc_image()[0], name="new")
    _corrected(viewer, widget, image)  # no image with boxes in the viewer
    widget.check.add.click()
    widget.wait()
    assert not messages(notes, "error")
    # numbered from the loaded pair's first round (its labels may settle after it)
    assert [h["round"] for h in widget.history][:1] == [1]
    report = widget.last_report
    assert len(report.instances) == 1  # the corrected image alone
    assert (report.labels_a[0][3:7, 3:7] == CELL).all()  # the painted cell is trusted


def test_next_cell_on_a_prediction_without_cells_says_there_is_nothing_to_check(
    thresholded, notes
):
    """Predicted, but nothing found: not told to predict it first."""
    viewer, widget = thresholded
    widget.controller.set_pair(
        ModelPair(Background(), Background(), settings={"min_size": 4, "rgb": "gray"})
    )
    dim = viewer.add_image(disc_image()[0], name="dim")
    widget.check.image.value = dim
    assert not widget.check.next.isEnabled()  # no cells to check yet; a script is told why
    widget.correct.next_cell(dim)
    assert "predict it (or train on it) first" in messages(notes, "warning")[-1]
    widget.predict(dim, block=True)
    assert not viewer.layers["dim cells"].data.any()
    widget.check.next.click()
    warning = messages(notes, "warning")[-1]
    assert "it has no cells, and no region where the two networks disagree" in warning
    assert "first" not in warning


def test_proposing_boxes_where_no_cell_is_predicted_says_to_draw_them(thresholded):
    """It said "0 boxes proposed: delete the wrong ones"."""
    viewer, widget = thresholded
    widget.controller.set_pair(
        ModelPair(Background(), Background(), settings={"min_size": 4, "rgb": "gray"})
    )
    dim = viewer.add_image(disc_image()[0], name="dim")
    widget.predict(dim, block=True)
    boxes = widget.correct.propose_boxes(dim)
    assert not len(boxes.data) and boxes.name == "dim boxes"
    assert widget.status.text().startswith("No cell is predicted on 'dim', so no box is")


def test_the_cell_to_check_of_a_stack_is_on_the_plane_the_sliders_show(thresholded):
    viewer, widget = thresholded
    first, _ = disc_image()
    second, _ = disc_image(centres=((16, 44), (44, 16), (44, 46)), seed=5)
    stacks = np.stack([np.stack([first] * 2), np.stack([second] * 2)])
    tz = viewer.add_image(stacks, name="tz", axis_labels=("t", "z", "y", "x"))
    widget.predict(tz, block=True)
    viewer.dims.ndisplay = 3  # the camera turns about the cell, not the volume's middle
    said = []
    for _ in widget.correct.spots(tz):
        widget.correct.next_cell(tz)
        said.append(widget.status.text())
        if viewer.dims.point[:2] == (1, 1):
            break
    assert " on time point 0, z-plane 0 (1 of " in said[0]
    assert " on time point 1, z-plane 1 (" in said[-1]
    assert camera(viewer).center[0] == 1


def test_merge_and_split_are_undone_with_napari_undo(thresholded):
    """Merging the wrong cells is undone as a paint stroke is (Ctrl+Z on the layer).

    The next label after 65535 does not fit a uint16 layer (the cells layers are uint16
    where their labels fit): a new cell there takes the smallest free label, and the layer
    keeps its type and its undo."""
    viewer, widget = thresholded
    image = viewer.add_image(disc_image(centres=TOUCHING)[0], name="x")
    widget.predict(image, block=True)
    cells = viewer.layers["x cells"]
    before = np.asarray(cells.data).copy()
    ids = [int(i) for i in np.unique(before) if i]
    widget.correct.merge(image, ids[0], ids[1])
    cells.undo()
    np.testing.assert_array_equal(cells.data, before)
    cells.redo()
    assert not (cells.data == ids[1]).any()
    cells.undo()
    new = widget.correct.split(image, ids[0])
    assert (cells.data == new).any()
    cells.undo()
    np.testing.assert_array_equal(cells.data, before)
    full = np.where(before == ids[1], 65535, before).astype(np.uint16)
    cells.data = full.copy()
    new = widget.correct.split(image, ids[0])
    assert new == ids[1] and cells.data.dtype == np.uint16
    assert (cells.data == new).any() and (cells.data == ids[0]).any()
    np.testing.assert_array_equal(np.isin(cells.data, [ids[0], new]), full == ids[0])
    assert new in cells.features["label"].tolist()
    cells.undo()
    np.testing.assert_array_equal(cells.data, full)


def test_cells_that_do_not_touch_are_not_merged(thresholded):
    """One cell of two pieces is no cell: the last two labels picked (Next cell's among
    them) were merged wherever they lay."""
    from napari_mutualseg._napari.prepare import UserInputError

    viewer, widget = thresholded
    image = viewer.add_image(disc_image(centres=TOUCHING)[0], name="x")
    widget.predict(image, block=True)
    cells = viewer.layers["x cells"]
    before = np.asarray(cells.data).copy()
    side, other, apart = (int(before[c]) for c in TOUCHING)
    with pytest.raises(UserInputError, match=f"Cells {side} and {apart} of 'x cells' do not"):
        widget.correct.merge(image, side, apart)
    np.testing.assert_array_equal(cells.data, before)
    widget.correct.merge(image, side, other)
    assert int((cells.data == side).sum()) == int(np.isin(before, [side, other]).sum())


def test_merge_and_split_on_a_stack_change_the_plane_shown(thresholded):
    """As napari's brush and fill: a z-stack's cells are linked through z, and a split cut
    the linked cell between its planes, the cell on the plane shown unchanged."""
    viewer, widget = thresholded
    plane = disc_image(centres=TOUCHING)[0]
    stack = viewer.add_image(np.stack([plane] * 4), name="st", axis_labels=("z", "y", "x"))
    widget.predict(stack, block=True)
    cells = viewer.layers["st cells"]
    before = np.asarray(cells.data).copy()
    viewer.dims.set_point(0, 2)
    side, other, _ = (int(before[(2, *c)]) for c in TOUCHING)
    new = widget.correct.split(stack, side)
    assert (cells.data[2] == new).any() and (cells.data[2] == side).any()
    cells.undo()  # napari's Ctrl+Z on the layer
    np.testing.assert_array_equal(cells.data, before)
    cells.redo()
    widget.correct.merge(stack, side, new)
    np.testing.assert_array_equal(cells.data, before)
    widget.correct.merge(stack, side, other)
    assert not (cells.data[2] == other).any()
    np.testing.assert_array_equal(np.delete(cells.data, 2, 0), np.delete(before, 2, 0))
    cells.n_edit_dimensions = 3  # napari's "n edit dim": whole 3D cells
    widget.correct.merge(stack, side, other)
    assert not (cells.data == other).any()


def test_next_cell_passes_over_the_cells_merged_away_or_erased(thresholded, notes):
    """Checked already: Next cell went to them, and selected a label no cell had."""
    viewer, widget = thresholded
    image = viewer.add_image(disc_image(centres=TOUCHING)[0], name="x")
    widget.predict(image, block=True)
    cells = viewer.layers["x cells"]
    side, other, apart = (int(cells.data[c]) for c in TOUCHING)
    widget.correct.merge(image, side, other)
    shown = [widget.correct.next_cell(image).label for _ in range(3)]
    assert sorted(shown) == sorted([side, apart, side]) and cells.selected_label != other
    cells.fill(TOUCHING[0], 0)
    cells.fill(TOUCHING[2], 0)
    assert widget.correct.next_cell(image) is None
    assert "Every cell to check on 'x' was changed" in messages(notes, "warning")[-1]


def test_a_panel_opened_again_merges_the_cells_picked_in_the_active_layer(make_napari_viewer):
    """The cells layer active as the panel opened was not followed: Merge asked to pick the
    two cells that were just picked."""
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    widget.controller.set_pair(
        ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4, "rgb": "gray"})
    )
    image = viewer.add_image(disc_image(centres=TOUCHING)[0], name="x")
    widget.predict(image, block=True)
    cells = viewer.layers["x cells"]
    viewer.layers.selection.active = cells
    viewer.window.remove_dock_widget(dock)  # the dock's close button
    _, again = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    side, other, _ = (int(cells.data[c]) for c in TOUCHING)
    cells.selected_label, cells.selected_label = other, side  # napari starts at 1
    again.check.merge.click()
    assert not (cells.data == side).any()


def test_check_buttons_wait_for_the_picked_images_cells(thresholded):
    viewer, widget = thresholded
    check = widget.check
    buttons = (check.next, check.merge, check.split, check.propose, check.add)

    def enabled():
        return [b.isEnabled() for b in buttons]

    assert enabled() == [False] * 5  # no image
    assert all("predict the image" in b.toolTip() for b in buttons)
    image = viewer.add_image(disc_image()[0], name="discs")
    assert same(check.image.layer, image) and enabled() == [False] * 5  # not predicted
    widget.predict(image, block=True)
    assert enabled() == [True] * 5
    check.set_busy(True)  # a job runs: training is not started again
    assert enabled() == [True] * 4 + [False]
    check.set_busy(False)
    del viewer.layers["discs cells"]
    assert enabled() == [False] * 5


def test_a_layer_with_every_label_of_its_type_taken_says_how_to_widen_it():
    from napari_mutualseg._napari.correct import _new_label
    from napari_mutualseg._napari.prepare import UserInputError

    full = np.arange(256, dtype=np.uint8).reshape(16, 16)  # 0 to 255, every one there
    with pytest.raises(UserInputError, match="Convert data type > Convert to int32"):
        _new_label(full, "x cells")
    full[3, 3] = 0  # cell 51 erased: its label is the one free
    assert _new_label(full, "x cells") == 51


def test_an_earlier_box_is_kept_unless_it_meets_what_the_new_correction_says():
    """Looked at in each box alone: a whole-image mask per earlier box cost a millisecond a
    box at 2048² each time an image was added again."""
    from napari_mutualseg._napari.correct import _meets
    from napari_mutualseg.supervision import Box, boxes_mask

    rng = np.random.default_rng(3)
    said = np.zeros((40, 50), bool)
    said[10:14, 20:23] = True
    for _ in range(60):
        box = Box(tuple(rng.uniform(-5, 55, 2)), tuple(rng.uniform(0.5, 9, 2)), rng.uniform(-1, 1))
        assert _meets(box, said) == bool((boxes_mask(said.shape, [box]) & said).any())
    assert _meets(Box((12, 21), (1, 1)), said) and not _meets(Box((30, 40), (5, 5)), said)


def test_cells_to_check_are_described_as_regionprops_describes_them():
    """The cells' areas, centroids and boxes are found at once, not one region object each
    (half a second at 2048²): the same values to the last bit."""
    from skimage.measure import regionprops

    from napari_mutualseg.disagreement import spots_to_check
    from napari_mutualseg.synthetic import synthetic_scene

    _, truth, _ = synthetic_scene((72, 64), 9, seed=2)
    labels = np.where(truth > 0, truth * 3, 0).astype(np.uint16)  # gaps between ids
    dis = np.random.default_rng(0).random(labels.shape).astype(np.float16)
    cells = {s.label: s for s in spots_to_check(labels, dis) if s.kind == "cell"}
    expected = {
        r.label: (int(r.area), tuple(map(float, r.centroid)), tuple(r.bbox))
        for r in regionprops(labels)
    }
    assert {k: (s.area, s.centroid, s.bbox) for k, s in cells.items()} == expected


def test_corrections_kept_by_a_new_prediction_are_added_to_training(trained, notes):
    """Predicted again, the painted cells are kept as '(edited)': those, not the new
    unedited cells, are what Add to training learns from (it said nothing was corrected)."""
    viewer, widget, _image, other = trained
    widget.settings.steps_per_round = 3  # trusted pixels are kept whatever is learned
    cells = viewer.layers["other cells"]
    cells.paint((5, 5), int(cells.data.max()) + 1)  # a missed cell, with the brush
    widget.predict(other, block=True)
    assert same(viewer.layers["other cells (edited)"], cells)
    widget.check.add.click()
    widget.wait()
    assert not messages(notes, "error")
    for labels in (widget.last_report.labels_a[1], widget.last_report.labels_b[1]):
        assert (labels[4:7, 4:7] == CELL).all()
    assert same(viewer.layers["other corrections"], cells)
    assert viewer.layers["other cells"].metadata[OWNER_KEY]["role"] == "cells"
    took = "The corrections in 'other cells (edited)' were added to training"
    assert any(m.startswith(took) for m in messages(notes, "info"))


def test_cells_painted_while_training_are_added_to_training(trained, notes):
    """Cells of a training image painted between rounds are kept as '(edited)' by the next
    round: Add to training learns from them (it said nothing was corrected)."""
    viewer, widget, _image, _other = trained
    _add_a_missed_cell(viewer, widget)
    cells = viewer.layers["other cells"]  # the new round's cells of the corrected image
    assert not cells.data[56:61, 4:9].any()
    cells.paint((58, 6), int(cells.data.max()) + 1)  # another missed cell
    widget.train(block=True)  # the next round
    assert same(viewer.layers["other cells (edited)"], cells)
    widget.check.add.click()
    widget.wait()
    assert not messages(notes, "error")
    for labels in (widget.last_report.labels_a[1], widget.last_report.labels_b[1]):
        assert (labels[57:60, 5:8] == CELL).all()  # the cell painted between rounds
        assert (labels[4:7, 4:7] == CELL).all()  # and the first correction


def test_edited_cells_are_added_once_the_new_prediction_is_deleted(trained):
    """Predicted again, then the new cells deleted to keep the edited ones: those are added
    (Add to training was greyed out)."""
    viewer, widget, _image, other = trained
    cells = viewer.layers["other cells"]
    cells.paint((5, 5), int(cells.data.max()) + 1)  # a missed cell, with the brush
    widget.predict(other, block=True)
    viewer.layers.remove("other cells")  # the new prediction
    assert widget.check.add.isEnabled()
    [sup] = widget.correct.training_item(other).record.supervisions
    assert (sup.classes[4:7, 4:7] == CELL).all() and sup.trusted[4:7, 4:7].all()


def _loaded_pair(widget) -> None:
    """A pair as loaded from a file: tiny, untrained, trainable."""
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    widget.controller.set_pair(ModelPair(build_unet(arch, 0), build_unet(arch, 1)))


@pytest.mark.parametrize("lead", [{"z": 3}, {"t": 2, "z": 2}])
def test_corrections_on_planes_of_a_stack_train_those_planes(viewer_widget, notes, lead):
    """Corrections on a z-stack or time series were refused ("from 2D images only"): each
    plane corrected is learned from, the others left out, and added again with another
    plane corrected, the first plane's corrections stay."""
    from napari_mutualseg._napari.prepare import UserInputError

    viewer, widget = viewer_widget
    _loaded_pair(widget)
    shape = tuple(lead.values())
    planes = [disc_image((48, 48), ((14, 14), (30, 32)), seed=s)[0] for s in range(3)]
    data = np.stack([planes[p % 3] for p in range(int(np.prod(shape)))]).reshape(*shape, 48, 48)
    stack = viewer.add_image(data, name="st", axis_labels=(*lead, "y", "x"))
    widget.predict(stack, block=True)
    widget.check.image.layer = stack
    cells = viewer.layers["st cells"]
    with pytest.raises(UserInputError, match="Nothing on the planes of 'st' was corrected"):
        widget.correct.training_item(stack, rest_trusted=True)  # of no plane in particular
    first, second = (np.unravel_index(p, shape) for p in (1, 2))
    for axis, at in enumerate(first):
        viewer.dims.set_point(axis, at)
    cells.paint((*first, 5, 5), int(cells.data.max()) + 1)  # a missed cell, on plane 1 only
    widget.check.add.click()
    widget.wait()
    assert not messages(notes, "error")
    report = widget.last_report
    assert len(report.instances) == 1  # plane 1 alone
    assert (report.labels_a[0][4:7, 4:7] == CELL).all()
    assert [plane for plane, *_ in widget.controller.round_maps(stack)] == [1]
    assert same(viewer.layers["st corrections"], cells)
    again = viewer.layers["st cells"]
    again.paint((*second, 40, 8), int(again.data.max()) + 1)  # another, on plane 2
    [box] = rectangle_vertices([[20, 20, 30, 30]])  # a missed cell boxed on plane 0
    boxes = viewer.add_shapes([np.column_stack([np.zeros((4, len(shape))), box])])
    record = widget.correct.training_item(stack, boxes=boxes).record
    assert record.planes == [0, 1, 2]
    assert [len(sup.boxes) for sup in record.supervisions] == [1, 0, 0]
    assert (record.supervisions[1].classes[4:7, 4:7] == CELL).all()  # still learned
    assert (record.supervisions[2].classes[39:42, 7:10] == CELL).all()


def test_a_stack_too_large_to_correct_is_said_when_its_cells_are_shown(
    thresholded, notes, monkeypatch
):
    """It was said only once the person had corrected it and pressed Add to training."""
    from napari_mutualseg._napari import writer

    viewer, widget = thresholded
    monkeypatch.setattr(writer, "KEPT_STACK_BYTES", 16 * 2**10)  # its cells 24 KiB
    image = disc_image()[0]
    stack = viewer.add_image(np.stack([image] * 3), name="st", axis_labels=("z", "y", "x"))
    widget.predict(stack, block=True)
    [said] = [m for m in messages(notes, "warning") if "too large" in m]
    assert said.startswith("The cells of 'st' (0 MiB) are too large to tell your corrections")
    widget.predict(viewer.add_image(np.stack([image[:32, :32]] * 3), name="small"), block=True)
    assert len([m for m in messages(notes, "warning") if "too large" in m]) == 1


def test_the_check_buttons_act_on_the_image_cells_layer_picked(thresholded, notes):
    """Merge, Split, Next cell and Propose boxes took the newest cells alone: with the
    '(edited)' layer active they merged in the newest, and once the newest was deleted they
    were greyed out (a script was told to predict the image first)."""
    viewer, widget = thresholded
    image = viewer.add_image(disc_image(centres=TOUCHING)[0], name="x")
    widget.predict(image, block=True)
    edited = viewer.layers["x cells"]
    edited.paint((2, 2), int(edited.data.max()) + 1)  # a missed cell, with the brush
    widget.predict(image, block=True)
    newest = viewer.layers["x cells"]
    assert same(viewer.layers["x cells (edited)"], edited)
    before = np.asarray(newest.data).copy()
    side, other, apart = (int(edited.data[c]) for c in TOUCHING)
    edited.selected_label, edited.selected_label = other, side  # napari starts at 1
    widget.check.merge.click()  # the newest cells active: the person is told what to select
    assert messages(notes, "error")[-1].startswith(
        "Pick the two cells to merge in 'x cells' first (napari's colour picker, or type their "
        "labels one after the other). To merge in another cells layer of 'x', select it"
    )
    viewer.layers.selection.active = edited  # the layer the person works on
    widget.check.merge.click()
    assert not (edited.data == side).any()
    np.testing.assert_array_equal(newest.data, before)
    viewer.layers.remove(newest)  # to keep the edited cells
    viewer.layers.selection.active = image
    check = widget.check
    assert all(b.isEnabled() for b in (check.next, check.merge, check.split, check.propose))
    new = widget.correct.split(image, apart)
    assert (edited.data == new).any()
