"""The npe2 manifest: widgets, the Layers > Segment command, the readers and the sample data."""

from __future__ import annotations

import json

import numpy as np

from helpers import WIDGET_NAME, messages, rectangles
from napari_mutualseg._napari import reader, sample_data


def test_manifest_is_valid_and_importable():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-mutualseg")
    assert manifest.name == "napari-mutualseg"
    manifest.validate_imports()  # every python_name resolves
    contributions = manifest.contributions
    widgets = {w.display_name: w for w in contributions.widgets}
    assert WIDGET_NAME in widgets
    assert "Boxes → ellipse supervision" in widgets
    titles = {c.id: c.title for c in contributions.commands}
    segment = [item.command for item in contributions.menus["napari/layers/segment"]]
    assert any(titles[c] == "Boxes → ellipse supervision" for c in segment)
    samples = {s.key: s for s in contributions.sample_data}
    assert "bbbc039" in samples
    images, boxes = contributions.readers
    assert "*.tif" in images.filename_patterns and images.accepts_directories  # OME-Zarr
    # Fiji, QuPath, box tables; CSVs named as boxes only, so that opening any other CSV
    # (points, tables) does not ask which reader to use
    assert {"*.roi", "*.zip", "*.geojson", "*.json", "*box*.csv"} == set(boxes.filename_patterns)


def test_sample_data_layers():
    from napari_mutualseg.sample import load_sample

    sample = load_sample()
    (image, _image_meta, image_kind), (rects, box_meta, box_kind) = sample_data.make_sample_data()
    assert image_kind == "image" and box_kind == "shapes"
    assert image.shape == sample.image.shape
    assert box_meta["name"] == "boxes" and box_meta["shape_type"] == "rectangle"
    assert len(rects) == len(sample.boxes)
    # a half-open pixel box y0..y1 has edges half a pixel outside its first and last pixel
    y0, x0, y1, x1 = sample.boxes[0]
    np.testing.assert_allclose(rects[0].min(0), (y0 - 0.5, x0 - 0.5))
    np.testing.assert_allclose(rects[0].max(0), (y1 - 0.5, x1 - 0.5))


def test_sample_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mutualseg", "bbbc039")
    names = [layer.name for layer in viewer.layers]
    assert names[-1] == "boxes"
    boxes = viewer.layers["boxes"]
    assert set(boxes.shape_type) == {"rectangle"}
    assert viewer.layers[names[0]].data.ndim == 2


def test_preferences_are_the_panels_settings():
    """The starting settings in napari's Preferences are rows of the panel's one table:
    the same names and upper limits, 0 / "auto" meaning the recommended value."""
    from npe2 import PluginManifest

    from napari_mutualseg._napari.settings import PREFERENCES, SETTINGS

    rows = {s.name: s for s in SETTINGS}
    manifest = PluginManifest.from_distribution("napari-mutualseg")
    properties = manifest.contributions.configurations[PREFERENCES].properties
    assert {"device", "rounds", "patch_size", "show_learning"} <= set(properties)
    for name, prop in properties.items():
        row = rows[name]
        assert prop.title == row.label
        if row.kind is int:
            assert (prop.type, prop.minimum, prop.maximum, prop.default) == (
                "integer",
                0,
                row.maximum,
                0,
            )
        elif row.kind is bool:
            assert (prop.type, prop.default) == ("boolean", False)
        else:
            assert prop.default == "auto" and set(prop.enum) == {"auto", "cuda", "mps", "cpu"}


def test_panel_starts_with_the_preferences(make_napari_viewer, preferences, notes):
    from napari_mutualseg.config import TrainConfig

    preferences.starting_settings.rounds = 7
    preferences.starting_settings.device = "cpu"
    preferences.starting_settings.show_learning = True
    preferences.starting_settings.patch_size = 8  # below the least a network takes
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mutualseg", WIDGET_NAME)
    recommended = TrainConfig.recommended("cpu")
    assert widget.settings.rounds == 7 and widget.settings.device == "cpu"
    assert widget.settings.show_learning is True
    assert widget.settings.patch_size == recommended.patch_size
    assert widget.settings.steps_per_round == recommended.steps_per_round  # left at 0
    assert widget.training.form.editors["rounds"].value() == 7
    [warning] = [str(n.message) for n in notes if "Preferences" in str(n.message)]
    assert "patch_size" in warning and "8" in warning
    widget.shutdown(timeout=30)


def test_box_tables_open_on_the_image_they_were_drawn_on(make_napari_viewer, tmp_path):
    """Boxes saved as napari's Shapes CSV (File > Save Selected Layers) open on the image
    they were drawn on: napari's own reader lays them in pixels, at twice their size on an
    image of 0.5 µm pixels. A plain y0,x0,y1,x1 table and QuPath's objects saved as .json
    open so too; other CSVs and JSON are left to other readers."""
    import napari

    from napari_mutualseg._napari.prepare import prepare_supervision
    from napari_mutualseg.box_tables import write_box_table

    viewer = make_napari_viewer()
    rows = [(4, 6, 12, 16), (20, 24, 28, 34)]
    image = viewer.add_image(np.zeros((32, 40), np.float32), scale=(0.5, 0.5), units="um")
    drawn = viewer.add_shapes(rectangles(rows), shape_type="rectangle", scale=(0.5, 0.5))
    napari.save_layers(str(tmp_path / "boxes.csv"), [drawn])
    write_box_table(tmp_path / "plain_boxes.csv", rows)
    (tmp_path / "cells.csv").write_text("label,area_px\n1,80\n")
    # QuPath's objects saved as .json (its own name for GeoJSON in scripts and older releases)
    ring = [[x, y] for x, y in ((24, 20), (34, 20), (34, 28), (24, 28), (24, 20))]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation"},
    }
    (tmp_path / "qupath.json").write_text(json.dumps([feature]))
    (tmp_path / "other.json").write_text("{}")
    for name in ("boxes.csv", "plain_boxes.csv"):
        viewer.layers.selection.active = image
        [opened] = viewer.open(tmp_path / name, plugin="napari-mutualseg")
        np.testing.assert_allclose(opened.scale, image.scale)
        [supervision] = prepare_supervision(image, opened).supervisions
        assert [b.pixel_range() for b in supervision.boxes] == rows
    [opened] = viewer.open(tmp_path / "qupath.json", plugin="napari-mutualseg")
    [supervision] = prepare_supervision(image, opened).supervisions
    assert [b.pixel_range() for b in supervision.boxes] == rows[1:]
    for name in ("cells.csv", "other.json"):
        assert reader.get_box_reader(str(tmp_path / name)) is None


def test_a_file_without_axes_says_what_to_do_in_napari(tmp_path, notes):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((5, 8, 10), np.uint16))
    [(data, _, kind)] = reader.read_layers(str(tmp_path / "plain.tif"))
    assert kind == "image" and data.shape == (5, 8, 10)
    [said] = messages(notes, "warning")
    assert "(5, 8, 10)" in said and "pick it under Image and set Axes" in said
    assert "--axes" not in said and "axes=" not in said  # the command line's and Python's


def test_the_menu_command_without_boxes_says_how_to_draw_them(notes):
    from napari.layers import Image

    from napari_mutualseg._napari.commands import boxes_to_supervision

    assert boxes_to_supervision(Image(np.zeros((16, 16), np.float32)), None) is None
    [said] = messages(notes, "error")
    assert "File > New Layer > Shapes" in said and "New boxes layer" not in said
