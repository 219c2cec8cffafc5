"""The layers the plugin owns: its results and supervision are rewritten, the user's never."""

from __future__ import annotations

import numpy as np
from napari.layers._layer_actions import _duplicate_layer

from helpers import ThresholdNet, disc_image, messages, rectangles, same
from napari_mutualseg._napari.layers import OWNER_KEY, owner_info
from napari_mutualseg.models import ModelPair


def _duplicate(viewer, layer):
    """Layers > Duplicate Layer on ``layer``: the copy."""
    viewer.layers.selection = {layer}
    _duplicate_layer(viewer.layers)
    return viewer.layers[f"{layer.name} copy"]


def test_a_duplicated_result_layer_is_the_users(viewer_widget):
    viewer, widget = viewer_widget
    widget.controller.set_pair(ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4}))
    image = viewer.add_image(disc_image()[0], name="x")
    widget.predict(image, block=True)
    copies = {}
    for name in ("x cells", "x disagreement"):
        original = viewer.layers[name]
        copy = _duplicate(viewer, original)
        copy.data = np.full(copy.data.shape, 7, copy.data.dtype)  # the person's edit
        copies[name] = copy
        viewer.layers.remove(original)
    widget.predict(image, block=True)
    for name, copy in copies.items():
        assert (copy.data == 7).all(), f"the copy of '{name}' was overwritten"
        assert not same(viewer.layers[name], copy)  # the new result went beside it
    assert (viewer.layers["x cells"].data > 0).any()
    # a tag naming another layer (one saved in another session) is not the plugin's either
    cells = viewer.layers["x cells"]
    kept = viewer.add_labels(np.zeros_like(cells.data), name="kept", metadata=dict(cells.metadata))
    viewer.layers.remove(cells)
    widget.predict(image, block=True)
    assert not kept.data.any() and not same(viewer.layers["x cells"], kept)


def test_a_duplicated_supervision_layer_is_the_users(scene, make_napari_viewer):
    viewer, widget, _image, boxes = scene
    sup = widget.generate_supervision()
    copy = _duplicate(viewer, sup)
    copy.data = np.full(copy.data.shape, 2, copy.data.dtype)
    viewer.layers.remove(sup)
    again = widget.generate_supervision()
    assert not same(again, copy) and (copy.data == 2).all()
    assert again.metadata[OWNER_KEY]["role"] == "supervision"
    # the menu command's layer, duplicated before the plugin looked at it
    menu_viewer = make_napari_viewer()
    img = menu_viewer.add_image(disc_image()[0], name="img")
    shapes = menu_viewer.add_shapes(boxes.data, shape_type="rectangle", name="boxes")
    _, gui = menu_viewer.window.add_plugin_dock_widget(
        "napari-mutualseg", "Boxes → ellipse supervision"
    )
    gui.image.value, gui.boxes.value = img, shapes
    gui()
    made = menu_viewer.layers["img supervision"]
    copy = _duplicate(menu_viewer, made)
    copy.data = np.full(copy.data.shape, 2, copy.data.dtype)
    menu_viewer.layers.remove(made)
    gui()
    assert (copy.data == 2).all() and not same(menu_viewer.layers["img supervision"], copy)


def test_result_layers_are_in_the_images_units(viewer_widget):
    viewer, widget = viewer_widget
    image, rows = disc_image()
    layer = viewer.add_image(image, name="cells", scale=(0.5, 0.5), units="micrometer")
    widget.image_layer = layer
    boxes = widget.new_boxes_layer()
    boxes.add_rectangles(rectangles(rows))
    supervision = widget.generate_supervision()
    assert supervision is not None
    assert [str(u) for u in supervision.units] == ["micrometer"] * 2
    np.testing.assert_allclose(supervision.scale, layer.scale)


def test_cells_a_person_edited_are_kept_when_predicted_again(thresholded, notes):
    """A new prediction never writes over a person's strokes: the edited layer becomes
    theirs, and no stroke is undone or redone into the new cells."""
    import torch

    class Background(ThresholdNet):  # sees no cell anywhere
        def forward(self, x):
            return torch.cat([x * 0 + 8, x * 0 - 8, x * 0 - 8], dim=1)

    viewer, widget = thresholded
    image = viewer.add_image(disc_image()[0], name="x")
    widget.predict(image, block=True)
    cells = viewer.layers["x cells"]
    square = np.nonzero(np.ones((10, 10), bool))
    cells.data_setitem((square[0] + 10, square[1] + 10), 9)  # a paint stroke
    painted = np.asarray(cells.data).copy()
    widget.controller.set_pair(ModelPair(Background(), Background(), settings={"min_size": 4}))
    widget.predict(image, block=True)
    np.testing.assert_array_equal(cells.data, painted)
    assert cells.name == "x cells (edited)" and owner_info(cells)["role"] == "corrections"
    new = viewer.layers["x cells"]
    assert not new.data.any()
    warning = messages(notes, "warning")[0]
    assert warning.startswith("'x cells' holds your edits, so it is kept as 'x cells (edited)'")
    # a stroke undone is no edit: the layer is written in place, and redo brings nothing back
    new.data_setitem((square[0] + 10, square[1] + 10), 9)
    new.undo()
    widget.predict(image, block=True)
    assert same(viewer.layers["x cells"], new) and len(viewer.layers) == 4
    new.redo()
    assert not new.data.any()


def test_edited_cells_kept_by_a_new_prediction_take_what_they_were_compared_with(
    thresholded, qtbot
):
    """The cells the plugin wrote into a layer a person edited go with that layer when it is
    handed over to them (its corrections are told from them), and are let go with it."""
    import gc
    import weakref

    viewer, widget = thresholded
    image = viewer.add_image(disc_image()[0], name="x")
    widget.predict(image, block=True)
    cells = viewer.layers["x cells"]
    written = np.asarray(cells.data).copy()
    cells.paint((5, 5), int(written.max()) + 1)
    widget.predict(image, block=True)
    layer, before = widget.correct.corrected_layer(image)
    assert same(layer, cells) and cells.name == "x cells (edited)"
    np.testing.assert_array_equal(before, written)
    kept = weakref.ref(before)
    del layer, before
    viewer.layers.remove(cells)
    del cells
    # napari's layer controls hold the layer until Qt deletes them (deleteLater)
    qtbot.waitUntil(lambda: gc.collect() is not None and kept() is None)
    layer, before = widget.correct.corrected_layer(image)  # the newest, unedited
    assert same(layer, viewer.layers["x cells"])
    np.testing.assert_array_equal(before, layer.data)


def test_a_prediction_adds_its_layers_one_event_loop_turn_apart(thresholded):
    """Adding a layer takes the main thread a few tenths of a second at real sizes: the cells
    and the disagreement of a prediction, added in one turn, froze the viewer for both."""
    viewer, widget = thresholded
    image = viewer.add_image(disc_image()[0], name="x")
    said, seen = [], []
    widget.controller.message.connect(said.append)

    def inserted(event):
        if event.value.name == "x disagreement":
            # the turn that added the cells ends by saying how many: said already, the
            # disagreement came in a later turn (a timer's order against the writer's is not
            # fixed: a zero timer of the test's own told it only mostly)
            seen.append(any(m.startswith("'x cells': ") for m in said))

    viewer.layers.events.inserted.connect(inserted)
    widget.predict(image, block=True)
    assert seen == [True]
    assert viewer.layers["x disagreement"].data.shape == image.data.shape
    # other pixels in the image by the next turn: no disagreement is laid over them
    viewer.layers.remove("x cells")
    viewer.layers.remove("x disagreement")
    viewer.layers.events.inserted.disconnect(inserted)
    viewer.layers.events.inserted.connect(
        lambda event: (
            setattr(image, "data", disc_image(seed=3)[0])
            if event.value.name == "x cells"
            else None
        )
    )
    widget.predict(image, block=True)
    assert "x cells" in viewer.layers and "x disagreement" not in viewer.layers
