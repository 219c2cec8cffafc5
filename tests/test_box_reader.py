"""Boxes drawn in Fiji or QuPath opened in napari: the reader contribution for ROI sets and
QuPath GeoJSON, laid on the planes and pixels of the image they were drawn on."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from napari_mutualseg._napari import reader
from napari_mutualseg.box_tables import read_box_table


def _roi(left, top, right, bottom, kind="RECT", t=0, z=0, name="cell"):
    """A Fiji rectangle or oval, on ImageJ's hyperstack position ``(z, t)`` (from 1; 0 for
    none)."""
    import roifile

    roi = roifile.ImagejRoi(version=228, name=name)
    roi.roitype = roifile.ROI_TYPE[kind]
    roi.left, roi.top, roi.right, roi.bottom = left, top, right, bottom
    roi.c_position, roi.z_position, roi.t_position = (1 if t or z else 0), z, t
    return roi


def _rotated_roi(name="turned"):
    """A Fiji rotated rectangle as ImageJ saves it: its corners, the ends of its long axis."""
    import roifile

    corners = np.array([[6.0, 4.0], [16.0, 14.0], [12.0, 18.0], [2.0, 8.0]])
    roi = roifile.ImagejRoi.frompoints(corners.astype(np.float32), name=name)
    roi.version = 228
    roi.subtype = roifile.ROI_SUBTYPE.ROTATED_RECT
    (roi.x1, roi.y1), (roi.x2, roi.y2) = corners[[0, 1]].mean(0), corners[[2, 3]].mean(0)
    return roi


def _qupath(*objects):
    """QuPath's *Export objects as GeoJSON*: rectangles ``(x, y, w, h, plane, ellipse)``."""
    features = []
    for x, y, w, h, plane, ellipse in objects:
        if ellipse:
            a = np.linspace(0, 2 * np.pi, 33)[:-1]
            ring = np.c_[x + w / 2 + w / 2 * np.cos(a), y + h / 2 + h / 2 * np.sin(a)].tolist()
        else:
            ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
        geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
        geometry.update({"isEllipse": True} if ellipse else {})
        geometry.update({"plane": {"c": -1, "z": plane[1], "t": plane[0]}} if plane else {})
        features.append(
            {
                "type": "Feature",
                "id": "8e0b3c52-7c1e-4a57-9d1e-2f6f3b2f0b61",
                "geometry": geometry,
                "properties": {"objectType": "annotation", "isLocked": False},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _image(shape, axes, scale=None):
    from napari.layers import Image

    labels = tuple(axes.lower())
    return Image(np.zeros(shape, np.float32), axis_labels=labels, scale=scale, name="cells")


def _planes(path, image):
    """The boxes the widget reads from the opened layer, per plane of ``image``."""
    from napari.layers import Shapes

    from napari_mutualseg._napari.prepare import prepare_supervision

    data, kwargs, kind = reader.box_layer(path, image)
    assert kind == "shapes"
    record = prepare_supervision(image, Shapes(data, **kwargs))
    return dict(zip(record.planes or [None], (s.boxes for s in record.supervisions), strict=True))


def test_roi_sets_and_qupath_objects_are_read_other_zips_and_geojson_are_not(tmp_path):
    import roifile

    roifile.roiwrite(tmp_path / "RoiSet.zip", [_roi(2, 3, 9, 8, name="a"), _roi(4, 4, 9, 9)])
    _roi(2, 3, 9, 8).tofile(tmp_path / "cell.roi")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("notes.txt", "not ROIs")
    (tmp_path / "cells.geojson").write_text(json.dumps(_qupath((3, 2, 7, 5, None, False))))
    world = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}}]}
    (tmp_path / "map.geojson").write_text(json.dumps(world))
    (tmp_path / "broken.geojson").write_text("{")
    for name in ("RoiSet.zip", "cell.roi", "cells.geojson"):
        assert reader.get_box_reader(str(tmp_path / name)) is reader.read_boxes
    for name in ("other.zip", "map.geojson", "broken.geojson"):
        assert reader.get_box_reader(str(tmp_path / name)) is None  # left to other readers


def test_fiji_boxes_of_a_time_series_lie_on_their_frames(tmp_path):
    import roifile

    # ImageJ gives a TYX hyperstack's ROIs z 1: the first frame's read as plane 0, later
    # ones as (t, 0), which a (t, z, y, x) layer would put on frame 0 of a TYX image
    rois = [_roi(2, 3, 9, 8, t=1, z=1, name="a"), _roi(4, 4, 12, 10, "OVAL", t=3, z=1)]
    roifile.roiwrite(tmp_path / "RoiSet.zip", rois)
    table = read_box_table(tmp_path / "RoiSet.zip")
    image = _image((3, 16, 20), "TYX", scale=(1, 0.5, 0.5))  # a pixel of 0.5 µm
    assert _planes(tmp_path / "RoiSet.zip", image) == {0: table[0], 2: table[(2, 0)]}


def test_qupath_boxes_on_a_stack_with_channels_keep_planes_and_shapes(tmp_path):
    import roifile

    path = tmp_path / "cells.geojson"
    # on the first plane (QuPath writes no plane there), and an ellipse on z 2
    path.write_text(json.dumps(_qupath((3, 2, 7, 5, None, False), (5, 4, 8, 6, (0, 2), True))))
    table = read_box_table(path, first_plane=True)
    image = _image((2, 3, 16, 20), "CZYX", scale=(1, 2, 0.5, 0.5))
    assert _planes(path, image) == {0: table[0], 2: table[2]}
    _, kwargs, _ = reader.box_layer(path, image)
    assert kwargs["ndim"] == 3 and kwargs["shape_type"] == ["rectangle", "ellipse"]
    assert kwargs["name"] == "cells.geojson"
    # a stack's first time point beside a later one, as a time series of stacks gives them
    roifile.roiwrite(
        tmp_path / "RoiSet.zip",
        [_roi(2, 3, 9, 8, t=1, z=2, name="a"), _roi(4, 4, 12, 10, t=2, z=3)],
    )
    table = read_box_table(tmp_path / "RoiSet.zip")
    image = _image((2, 2, 3, 16, 20), "CTZYX")
    assert _planes(tmp_path / "RoiSet.zip", image) == {1: table[1], 5: table[(1, 2)]}


def test_rotated_rectangles_and_ellipses_stay_as_drawn(tmp_path):
    import roifile

    rois = [_roi(2, 3, 9, 8, name="a"), _roi(4, 4, 12, 10, "OVAL", name="b"), _rotated_roi()]
    roifile.roiwrite(tmp_path / "RoiSet.zip", rois)
    (want,) = read_box_table(tmp_path / "RoiSet.zip").values()
    assert want[2].angle != 0
    (got,) = _planes(tmp_path / "RoiSet.zip", _image((24, 24), "YX")).values()
    assert [b.kind for b in got] == ["rectangle", "ellipse", "rectangle"]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.corners, b.corners, atol=1e-9)


def test_boxes_that_fit_no_plane_of_the_image_are_refused(tmp_path):
    import roifile

    roifile.roiwrite(
        tmp_path / "RoiSet.zip", [_roi(2, 3, 9, 8, z=1, t=1, name="a"), _roi(2, 3, 9, 8, z=6, t=1)]
    )
    with pytest.raises(ValueError, match=r"plane 5, but 'cells' has 3 \(ZYX"):
        reader.box_layer(tmp_path / "RoiSet.zip", _image((3, 16, 20), "ZYX"))
    with pytest.raises(ValueError, match=r"plane 5, but 'cells' has 1 \(YX"):
        reader.box_layer(tmp_path / "RoiSet.zip", _image((16, 20), "YX"))  # was all on it
    _roi(2, 3, 9, 8).tofile(tmp_path / "cell.roi")  # no slice
    with pytest.raises(ValueError, match="no slice of its own: Fiji shows it on every slice"):
        reader.box_layer(tmp_path / "cell.roi", _image((3, 16, 20), "ZYX"))
    # without an image: the file's own planes, in pixels
    data, kwargs, _ = reader.box_layer(tmp_path / "RoiSet.zip")
    assert kwargs["ndim"] == 3 and [v[0, 0] for v in data] == [0, 5]
    assert "no image was open" in kwargs["metadata"]["note"]


@pytest.mark.parametrize(
    ("z", "t", "said", "axes", "plane"), [(0, 2, "slice", "TYX", 1), (3, 0, "frame", "ZYX", 2)]
)
def test_fiji_rois_on_every_slice_or_frame_of_a_stack_are_refused(
    tmp_path, z, t, said, axes, plane
):
    import roifile

    # ImageJ's 0 is every slice (frame): such a ROI was put on the first slice of its frame
    # (on the first frame at its slice) without a word
    rois = [_roi(2, 3, 9, 8, z=1, t=1, name="a"), _roi(4, 4, 9, 9, z=z, t=t)]
    roifile.roiwrite(tmp_path / "RoiSet.zip", rois)
    with pytest.raises(ValueError, match=rf"ROI 2 \(1 of 2\) has no {said} of its own"):
        reader.box_layer(tmp_path / "RoiSet.zip", _image((3, 4, 16, 20), "TZYX"))
    # where the image has one slice (frame), that one is the ROI's
    got = _planes(tmp_path / "RoiSet.zip", _image((4, 16, 20), axes))
    assert {k: [b.pixel_range() for b in v] for k, v in got.items()} == {
        0: [(3, 2, 8, 9)],
        plane: [(4, 4, 9, 9)],
    }


def test_roi_set_opens_in_napari_over_its_image(make_napari_viewer, tmp_path):
    import roifile

    from napari_mutualseg._napari.layers import claim, owner_tag
    from napari_mutualseg._napari.prepare import prepare_supervision

    viewer = make_napari_viewer()
    other = viewer.add_image(np.zeros((8, 8), np.float32), name="other")
    image = viewer.add_image(np.zeros((3, 16, 20), np.float32), axis_labels=("t", "y", "x"))
    # the plugin's own map on top, selected: the boxes go to the image the user opened
    claim(viewer.add_image(np.zeros((3, 16, 20)), metadata=owner_tag("disagreement", image)))
    roifile.roiwrite(tmp_path / "RoiSet.zip", [_roi(2, 3, 9, 8, t=3, z=1)])
    [boxes] = viewer.open(tmp_path / "RoiSet.zip", plugin="napari-mutualseg")
    assert boxes.name == "RoiSet.zip" and boxes.ndim == 3
    assert prepare_supervision(image, boxes).planes == [2]
    _roi(2, 3, 9, 8).tofile(tmp_path / "cell.roi")  # no plane: refused on a time series
    viewer.layers.selection.active = other  # the selected image comes first
    [boxes] = viewer.open(tmp_path / "cell.roi", plugin="napari-mutualseg")
    assert boxes.ndim == 2 and prepare_supervision(other, boxes).n_boxes == 1
    # a freehand ROI is named, not opened
    roi = roifile.ImagejRoi.frompoints(np.array([[1, 1], [8, 2], [5, 9]], np.float32))
    roi.tofile(tmp_path / "drawn.roi")
    with pytest.raises(Exception, match="only rectangles and ellipses"):
        viewer.open(tmp_path / "drawn.roi", plugin="napari-mutualseg")


def test_a_fiji_roi_of_a_2d_image_with_channels_lies_on_it(tmp_path):
    # a 2D image's channels are a stack to ImageJ: a ROI drawn on channel 2 has index 2,
    # which was taken for plane 1 and refused ("plane 1, but 'cells' has 1")
    roi = _roi(2, 3, 9, 8)
    roi.position = 2
    roi.tofile(tmp_path / "cell.roi")
    got = _planes(tmp_path / "cell.roi", _image((2, 16, 20), "CYX"))
    assert {k: [b.pixel_range() for b in v] for k, v in got.items()} == {None: [(3, 2, 8, 9)]}


def test_fiji_stack_positions_opened_without_an_image_say_their_channels_are_not_known(
    tmp_path,
):
    roi = _roi(2, 3, 9, 8)
    roi.position = 4  # slice 2 of a 2-channel stack, or slice 4 of one channel
    roi.tofile(tmp_path / "cell.roi")
    data, kwargs, _ = reader.box_layer(tmp_path / "cell.roi")
    assert [v[0, 0] for v in data] == [3]
    assert "read as of an image without channels" in kwargs["metadata"]["note"]
