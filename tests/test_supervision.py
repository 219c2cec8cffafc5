"""Boxes -> ellipse supervision: geometry, overlaps, region mode and input checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from napari_mutualseg.boxes import REGION_MIN_BOXES, region_boxes, usable_boxes
from napari_mutualseg.supervision import (
    BACKGROUND,
    BOUNDARY,
    CELL,
    IGNORE,
    Box,
    Supervision,
    boxes_by_plane,
    boxes_from_shapes,
    check_class_map,
    make_supervision,
)


def ellipse_mask(shape, cy, cx, ry, rx):
    """Explicit formula: pixel centre (i, j) inside the axis-aligned ellipse."""
    i, j = np.indices(shape)
    return ((i - cy) / ry) ** 2 + ((j - cx) / rx) ** 2 <= 1


def rotated_vertices(center, half_long, half_short, angle):
    """Corners of a rectangle whose long axis is rotated ``angle`` from the y axis."""
    d0 = np.array([math.cos(angle), math.sin(angle)])
    d1 = np.array([-math.sin(angle), math.cos(angle)])
    c = np.asarray(center, float)
    return np.array(
        [
            c + s0 * half_long * d0 + s1 * half_short * d1
            for s0, s1 in ((-1, -1), (-1, 1), (1, 1), (1, -1))
        ]
    )


# ---------------------------------------------------------------------- Box


def test_from_corners_is_half_open_pixel_range():
    box = Box.from_corners(4, 3, 15, 20)
    assert box.center == (9.0, 11.0)
    assert box.half_sizes == (5.5, 8.5)
    assert box.angle == 0.0
    assert box.slices((100, 100)) == (slice(4, 15), slice(3, 20))
    # Clipped to the image.
    assert box.slices((10, 12)) == (slice(4, 10), slice(3, 12))
    sl, u, v = box.local_coords((100, 100))
    assert sl == box.slices((100, 100))
    assert u.shape == v.shape == (11, 17)
    # Every pixel centre of the range lies inside the box, none on or past its edge.
    assert np.abs(u).max() < 1 and np.abs(v).max() < 1
    np.testing.assert_allclose(u[:, 0], (np.arange(4, 15) - 9.0) / 5.5)
    np.testing.assert_allclose(v[0], (np.arange(3, 20) - 11.0) / 8.5)


def test_an_unrotated_box_has_the_coordinates_of_a_rotation_by_zero_to_the_last_bit():
    # unrotated boxes skip the rotation; every mask, ellipse and tie between boxes is read
    # from these numbers, so they must be the rotation's exactly, also past the border
    rng = np.random.default_rng(0)
    for _ in range(200):
        box = Box(tuple(rng.uniform(-5, 45, 2)), tuple(rng.uniform(0.5, 12, 2)))
        sl, u, v = box.local_coords((40, 33))
        dy = np.arange(sl[0].start, sl[0].stop, dtype=np.float64)[:, None] - box.center[0]
        dx = np.arange(sl[1].start, sl[1].stop, dtype=np.float64)[None, :] - box.center[1]
        c, s = math.cos(0.0), math.sin(0.0)
        for got, want in (
            (u, (dy * c + dx * s) / box.half_sizes[0]),
            (v, (dx * c - dy * s) / box.half_sizes[1]),
        ):
            assert got.shape == want.shape and got.dtype == np.float64
            np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))


def test_from_vertices_axis_aligned_matches_corners_in_any_order():
    verts = np.array([[3.5, 2.5], [3.5, 19.5], [14.5, 19.5], [14.5, 2.5]])
    expected = Box.from_corners(4, 3, 15, 20)
    for order in ([0, 1, 2, 3], [2, 0, 3, 1], [1, 3, 0, 2]):
        box = Box.from_vertices(verts[order])
        assert box.angle == 0.0
        np.testing.assert_allclose(box.center, expected.center)
        np.testing.assert_allclose(box.half_sizes, expected.half_sizes)


def test_from_vertices_rotated_recovers_angle_and_sizes():
    verts = rotated_vertices((20, 30), 10, 3, math.radians(30))
    box = Box.from_vertices(verts[[3, 1, 0, 2]])
    np.testing.assert_allclose(box.center, (20, 30))
    np.testing.assert_allclose(box.half_sizes, (10, 3))
    assert box.angle == pytest.approx(math.radians(30))
    np.testing.assert_allclose(np.sort(box.corners, axis=0), np.sort(verts, axis=0), atol=1e-9)
    # The first axis is the edge nearest the y axis: at -70 degrees that is the short edge.
    box = Box.from_vertices(rotated_vertices((0, 0), 10, 3, math.radians(-70)))
    assert box.angle == pytest.approx(math.radians(20))
    np.testing.assert_allclose(box.half_sizes, (3, 10))


def test_from_vertices_rejects_non_rectangle():
    kite = np.array([[0, 5], [4, 10], [12, 5], [4, 0]], float)
    with pytest.raises(ValueError, match="rectangle"):
        Box.from_vertices(kite)
    parallelogram = np.array([[0, 0], [0, 10], [5, 13], [5, 3]], float)
    with pytest.raises(ValueError, match="non-rectangular"):
        Box.from_vertices(parallelogram)
    with pytest.raises(ValueError, match="4 vertices"):
        Box.from_vertices(np.zeros((5, 2)))


def test_box_validates_fields():
    with pytest.raises(ValueError, match="kind"):
        Box((0, 0), (2, 2), kind="polygon")
    with pytest.raises(ValueError, match="negative"):
        Box((0, 0), (-1, 2))
    with pytest.raises(ValueError, match="inverted"):
        Box.from_corners(10, 0, 5, 5)
    assert Box((1, 2), (3, 4)) == Box((1.0, 2.0), (3.0, 4.0))


# ---------------------------------------------------------------------- shapes


def test_boxes_from_shapes_table_and_vertices():
    rows = np.array([[4, 3, 15, 20], [0, 0, 2, 2]])
    boxes = boxes_from_shapes(rows)
    assert boxes == [Box.from_corners(4, 3, 15, 20), Box.from_corners(0, 0, 2, 2)]
    verts = [np.array([[3.5, 2.5], [3.5, 19.5], [14.5, 19.5], [14.5, 2.5]])]
    (box,) = boxes_from_shapes(verts, ["ellipse"])
    assert box.kind == "ellipse"
    np.testing.assert_allclose(box.center, (9, 11))
    assert boxes_from_shapes(verts)[0].kind == "rectangle"


@pytest.mark.parametrize("kind", ["polygon", "path", "line"])
def test_boxes_from_shapes_rejects_other_shape_types(kind):
    verts = [np.array([[0, 0], [0, 5], [5, 5], [5, 0]], float)] * 2
    with pytest.raises(ValueError, match=r"Shape 1 is a .*only rectangles and ellipses are boxes"):
        boxes_from_shapes(verts, ["rectangle", kind])


def test_boxes_by_plane_groups_and_checks_planes():
    def rect(plane, y0, x0, y1, x1):
        return np.array(
            [[plane, y0, x0], [plane, y0, x1], [plane, y1, x1], [plane, y1, x0]], float
        )

    data = [rect(2, 0.5, 0.5, 8, 5), rect(0, 1, 1, 4, 4), rect(2, 10, 10, 14, 20)]
    out = boxes_by_plane(data, ["rectangle", "ellipse", "rectangle"])
    assert list(out) == [0, 2]
    assert [b.kind for b in out[0]] == ["ellipse"]
    assert len(out[2]) == 2
    np.testing.assert_allclose(out[2][1].center, (12, 15))
    bad = rect(2, 0, 0, 5, 5)
    bad[1, 0] = 3
    with pytest.raises(ValueError, match="one plane"):
        boxes_by_plane([bad])
    with pytest.raises(ValueError, match=r"\(plane, y, x\)"):
        boxes_by_plane([np.zeros((4, 2))])
    with pytest.raises(ValueError, match="only rectangles and ellipses"):
        boxes_by_plane([rect(0, 0, 0, 5, 5)], ["polygon"])


# ---------------------------------------------------------------------- supervision


def test_single_box_ellipse_edge_interior_corners():
    shape = (22, 26)
    box = Box.from_corners(4, 3, 15, 20)
    sup = make_supervision(shape, [box])
    assert isinstance(sup, Supervision)
    assert sup.classes.dtype == np.uint8 and sup.instances.dtype == np.int32
    assert sup.region is None and sup.boxes == [box]
    inside = ellipse_mask(shape, 9.0, 11.0, 5.5, 8.5)
    np.testing.assert_array_equal(sup.instances, inside.astype(np.int32))
    # Edge: ellipse pixels with a 4-neighbour outside the ellipse.
    edge = inside & ~ndi.binary_erosion(inside, border_value=1)
    np.testing.assert_array_equal(sup.classes == BOUNDARY, edge)
    np.testing.assert_array_equal(sup.classes == CELL, inside & ~edge)
    np.testing.assert_array_equal(sup.classes == BACKGROUND, ~inside)
    # The box corners lie outside its ellipse: background.
    for corner in [(4, 3), (4, 19), (14, 3), (14, 19)]:
        assert sup.classes[corner] == BACKGROUND
    # Extreme points of the ellipse lie on the edge, the centre inside.
    assert sup.classes[9, 3] == BOUNDARY and sup.classes[4, 11] == BOUNDARY
    assert sup.classes[9, 11] == CELL
    assert not (sup.classes == IGNORE).any()


def test_overlapping_boxes_get_dividing_line():
    shape = (30, 45)
    boxes = [Box.from_corners(5, 5, 25, 25), Box.from_corners(5, 18, 25, 38)]
    sup = make_supervision(shape, boxes)
    inst = sup.instances
    assert set(np.unique(inst)) == {0, 1, 2}
    # Each owned pixel goes to the ellipse it is deepest in.
    i, j = np.indices(shape)
    d = np.stack([((i - 14.5) / 10) ** 2 + ((j - cx) / 10) ** 2 for cx in (14.5, 27.5)])
    inside = d <= 1
    expected = np.where(d[0] <= d[1], 1, 2)
    expected[inside[0] & ~inside[1]] = 1
    expected[inside[1] & ~inside[0]] = 2
    expected[~inside.any(0)] = 0
    np.testing.assert_array_equal(inst, expected)
    assert inst[15, 20] == 1 and inst[15, 22] == 2  # centres at x = 14.5 and 27.5
    # Where the owners meet, both sides are boundary ...
    touch1 = (inst == 1) & ndi.binary_dilation(inst == 2)
    touch2 = (inst == 2) & ndi.binary_dilation(inst == 1)
    assert touch1.sum() > 5 and touch2.sum() > 5
    assert (sup.classes[touch1 | touch2] == BOUNDARY).all()
    # ... so the two cells' interiors never touch, not even diagonally.
    cell1 = (sup.classes == CELL) & (inst == 1)
    cell2 = (sup.classes == CELL) & (inst == 2)
    assert cell1.any() and cell2.any()
    assert not (ndi.binary_dilation(cell1, np.ones((3, 3), bool)) & cell2).any()


def test_rotated_rectangle_gives_rotated_ellipse():
    center, long, short = (25.0, 25.0), 15.0, 5.0
    verts = rotated_vertices(center, long, short, math.pi / 4)[[2, 0, 3, 1]]
    (box,) = boxes_from_shapes([verts], ["rectangle"])
    assert abs(box.angle) == pytest.approx(math.pi / 4)
    assert sorted(box.half_sizes) == pytest.approx([short, long])
    sup = make_supervision((50, 50), [box])
    inst = sup.instances
    # Along the long diagonal (y = x) 10 px from the centre is inside, along the short
    # diagonal (y = -x) it is outside.
    assert inst[25 + 7, 25 + 7] == 1 and inst[25 - 7, 25 - 7] == 1
    assert inst[25 - 7, 25 + 7] == 0 and inst[25 + 7, 25 - 7] == 0
    i, j = np.indices((50, 50))
    a = ((i - 25) + (j - 25)) / math.sqrt(2)
    b = ((j - 25) - (i - 25)) / math.sqrt(2)
    expected = (a / long) ** 2 + (b / short) ** 2 <= 1
    # Pixels within float noise of the ellipse may go either way.
    near = np.abs((a / long) ** 2 + (b / short) ** 2 - 1) < 1e-9
    np.testing.assert_array_equal((inst > 0)[~near], expected[~near])
    assert sup.classes[25, 25] == CELL


def test_ellipse_shape_kind_gives_same_ellipse():
    verts = np.array([[3.5, 2.5], [3.5, 19.5], [14.5, 19.5], [14.5, 2.5]])
    ell = make_supervision((20, 24), boxes_from_shapes([verts], "ellipse"))
    rect = make_supervision((20, 24), boxes_from_shapes([verts], "rectangle"))
    assert ell.boxes[0].kind == "ellipse"
    np.testing.assert_array_equal(ell.classes, rect.classes)
    np.testing.assert_array_equal(ell.instances, ellipse_mask((20, 24), 9, 11, 5.5, 8.5))


def test_region_mode_ignores_outside_region_but_keeps_ellipses():
    shape = (30, 40)
    region = np.zeros(shape, bool)
    region[:, :20] = True
    boxes = [Box.from_corners(5, 2, 15, 14), Box.from_corners(10, 15, 24, 30)]
    sup = make_supervision(shape, boxes, region=region)
    inside = sup.instances > 0
    assert (sup.classes[~region & ~inside] == IGNORE).all()
    assert (sup.classes[region & ~inside] == BACKGROUND).all()
    # The second ellipse reaches outside the region and stays labelled there.
    assert ((sup.instances == 2) & ~region).any()
    assert np.isin(sup.classes[inside], (CELL, BOUNDARY)).all()
    assert sup.region is not None and sup.region.dtype == bool
    with pytest.raises(ValueError, match=r"region mask has shape \(30, 20\)"):
        make_supervision(shape, boxes, region=region[:, :20])


def test_edge_width_thickens_boundary_inwards():
    shape = (40, 40)
    boxes = [Box.from_corners(5, 5, 35, 33)]
    thin = make_supervision(shape, boxes)
    thick = make_supervision(shape, boxes, edge_width=3)
    np.testing.assert_array_equal(thin.instances, thick.instances)
    assert ((thin.classes == BOUNDARY) <= (thick.classes == BOUNDARY)).all()
    assert (thick.classes == BOUNDARY).sum() > 2.5 * (thin.classes == BOUNDARY).sum()
    assert thick.classes[20, 7] == BOUNDARY and thick.classes[20, 9] == CELL
    with pytest.raises(ValueError, match="edge_width"):
        make_supervision(shape, boxes, edge_width=0)


def test_accepts_table_rows_and_shapes():
    rows = np.array([[4, 3, 15, 20]])
    a = make_supervision((20, 24), rows)
    b = make_supervision((20, 24), [Box.from_corners(4, 3, 15, 20)])
    np.testing.assert_array_equal(a.classes, b.classes)


# ---------------------------------------------------------------------- bad input


def test_accepts_regionprops_tables_and_data_frames_of_boxes():
    labels = np.zeros((20, 24), np.int32)
    labels[4:15, 3:20] = 7
    expected = make_supervision(labels.shape, [Box.from_corners(4, 3, 15, 20)]).classes
    table = regionprops_table(labels, properties=("label", "bbox", "area"))
    np.testing.assert_array_equal(make_supervision(labels.shape, table).classes, expected)
    pd = pytest.importorskip("pandas")
    for frame in (
        pd.DataFrame(table),
        pd.DataFrame({"y0": [4], "x0": [3], "y1": [15], "x1": [20]}),
    ):
        np.testing.assert_array_equal(make_supervision(labels.shape, frame).classes, expected)
    with pytest.raises(ValueError, match="No boxes"):
        make_supervision(labels.shape, pd.DataFrame(columns=["y0", "x0", "y1", "x1"]))
    with pytest.raises(ValueError, match=r"needs the columns y0, x0, y1, x1 .* this one has a"):
        make_supervision(labels.shape, {"a": [1]})
    stack = regionprops_table(np.stack([labels, labels]), properties=("bbox",))
    with pytest.raises(ValueError, match="regionprops table of a 3D image"):
        make_supervision(labels.shape, stack)


def test_an_image_given_for_its_shape_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"takes the image's shape .* pass image\.shape"):
        make_supervision(np.zeros((20, 24)), [Box.from_corners(4, 3, 15, 20)])


def test_no_boxes():
    with pytest.raises(ValueError, match="give at least one box around a cell"):
        make_supervision((10, 10), [])
    with pytest.raises(ValueError, match="give at least one box"):
        make_supervision((10, 10), np.zeros((0, 4)))


def test_box_wholly_outside_names_it():
    boxes = [Box.from_corners(1, 1, 5, 5), Box.from_corners(20, 30, 25, 40)]
    with pytest.raises(
        ValueError, match=r"Box 1 \(y0, x0, y1, x1 = \(20, 30, 25, 40\)\).*outside"
    ):
        make_supervision((10, 10), boxes)


def test_an_inverted_box_is_named_once_with_the_order_of_its_numbers():
    with pytest.raises(
        ValueError, match=r"^Box 1: y0, x0, y1, x1 = \(30, 40, 5, 6\) is inverted.*COCO"
    ):
        make_supervision((60, 60), np.array([[1, 2, 9, 9], [30, 40, 5, 6]]))


def test_a_box_in_x_y_order_is_told_to_swap_its_columns():
    with pytest.raises(ValueError, match=r"outside.*look like x, y.*swap the columns"):
        make_supervision((20, 60), np.array([[40, 2, 50, 12]]))  # y0, x0 = 2, 40 meant


def test_a_box_that_reaches_the_image_outside_its_ellipse_only_stands_for_no_cell_of_it():
    # a table's box of a cell beyond the image, whose corner reaches it: its cell would get
    # no pixel, and the pixels of its corner would be ignored as those of a box
    cell, beyond = Box.from_corners(10, 10, 20, 20), Box.from_corners(-20, -20, 2, 2)
    assert not beyond.overlaps((40, 40)) and beyond.slices((40, 40)) == (slice(0, 2),) * 2
    with pytest.raises(ValueError, match=r"^Box 1 .* reaches the image .* only outside its ell"):
        make_supervision((40, 40), [cell, beyond])
    assert usable_boxes([cell, beyond], (40, 40)) == (
        [cell],
        ["1 of 2 boxes lie outside the image and were ignored."],
        [0],
    )
    # rotated: its bounds reach the image, the box itself not
    tilted = Box((-6.0, -6.0), (8.0, 2.0), math.pi / 4)
    assert tilted.slices((40, 40)) == (slice(0, 2), slice(0, 2))
    assert not tilted.overlaps((40, 40))


def test_box_partly_outside_warns_and_is_clipped():
    boxes = [Box.from_corners(1, 1, 5, 5), Box.from_corners(-3, 6, 6, 14)]
    with pytest.warns(UserWarning, match=r"box 1\).*clipped"):
        sup = make_supervision((10, 10), boxes)
    assert (sup.instances == 2).any()
    assert sup.instances[0, 9] == 2


def test_box_inside_image_does_not_warn(recwarn):
    make_supervision((10, 10), [Box.from_corners(0, 0, 10, 10)])
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_boxes_are_named_only_in_a_message_about_them(monkeypatch):
    # naming a box formats its numbers: 16,384 boxes at 4096² took a quarter of a second to
    # name for messages that were never shown
    named = []
    describe = Box.describe
    monkeypatch.setattr(Box, "describe", lambda box, k: named.append(k) or describe(box, k))
    make_supervision((40, 40), [Box.from_corners(0, 0, 10, 10), Box.from_corners(5, 5, 20, 30)])
    assert named == []
    with pytest.raises(ValueError, match=r"^Box 1 \(y0, x0, y1, x1 = \(60, 5, 70, 20\)\) lies"):
        make_supervision(
            (40, 40), [Box.from_corners(0, 0, 10, 10), Box.from_corners(60, 5, 70, 20)]
        )
    assert named == [1]


def test_tiny_box_is_rejected():
    with pytest.raises(ValueError, match=r"Box 1 .*1 x 6 pixels.*at least 2"):
        make_supervision((20, 20), [Box.from_corners(1, 1, 5, 5), Box.from_corners(2, 2, 3, 8)])
    # Two pixels is enough.
    make_supervision((20, 20), [Box.from_corners(2, 2, 4, 4)])


@pytest.mark.parametrize("shape", [(10,), (3, 10, 10), (10, 10, 3)])
def test_shape_must_be_2d(shape):
    with pytest.raises(ValueError, match="2D image shape"):
        make_supervision(shape, [Box.from_corners(1, 1, 5, 5)])


def test_many_boxes_are_each_read_on_their_own_pixels_only(monkeypatch):
    # a plate's thousands of boxes cost in proportion to their own area, never a whole image
    # per box: counted in pixels read, not timed on a machine that may be loaded
    rng = np.random.default_rng(0)
    y0, x0 = rng.integers(0, 1000, (2, 1000))
    size = rng.integers(6, 40, (1000, 2))
    rows = np.c_[y0, x0, np.minimum(y0 + size[:, 0], 1024), np.minimum(x0 + size[:, 1], 1024)]
    read = []
    local_coords = Box.local_coords

    def counted(box, shape):
        slices, u, v = local_coords(box, shape)
        read.append(u.size)
        return slices, u, v

    monkeypatch.setattr(Box, "local_coords", counted)
    sup = make_supervision((1024, 1024), rows)
    assert sup.instances.max() >= 990  # a few may be fully covered by larger neighbours
    assert read == [int(np.prod(r[2:] - r[:2])) for r in rows]


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.float32])
def test_check_class_map_gives_uint8_classes(dtype):
    classes = np.array([[BACKGROUND, CELL], [BOUNDARY, IGNORE]])
    out = check_class_map(classes.astype(dtype), (2, 2), "'sup'")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, classes)


@pytest.mark.parametrize(
    ("painted", "listed"), [(3, "[3, 9]"), (254, "[9, 254]"), (-1, "[-1, 9]"), (300, "[9, 300]")]
)
def test_check_class_map_names_every_value_that_is_not_a_class(painted, listed):
    labels = np.zeros((4, 4), np.int32)
    labels[0, 0], labels[1, 1] = painted, 9
    with pytest.raises(ValueError, match=re.escape(f"'sup' contains label values {listed} that")):
        check_class_map(labels, (4, 4), "'sup'")
    with pytest.raises(ValueError, match="has shape"):
        check_class_map(labels, (4, 5), "'sup'")


@pytest.mark.filterwarnings("ignore:.*past the image border")
def test_ellipses_are_those_of_skimage_draw_for_any_box_on_or_past_the_border():
    # skimage.draw.ellipse of the box's pixel centre and half sizes: the same pixels, for
    # boxes of 2 pixels and more, inside, on and past the border, and odd and even sizes.
    from skimage.draw import ellipse

    rng = np.random.default_rng(4)
    for _ in range(150):
        h, w = (int(s) for s in rng.integers(8, 40, 2))
        y0, x0 = int(rng.integers(-6, h - 1)), int(rng.integers(-6, w - 1))
        y1, x1 = y0 + int(rng.integers(2, 25)), x0 + int(rng.integers(2, 25))
        expected = np.zeros((h, w), bool)
        rows, cols = ellipse(
            (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, (y1 - y0) / 2, (x1 - x0) / 2, shape=(h, w)
        )
        expected[rows, cols] = True
        if not expected.any():  # no cell on the image: refused, also a box that reaches it
            with pytest.raises(ValueError, match=r"outside|off the image"):
                make_supervision((h, w), [Box.from_corners(y0, x0, y1, x1)])
            continue
        sup = make_supervision((h, w), [Box.from_corners(y0, x0, y1, x1)])
        np.testing.assert_array_equal(sup.instances > 0, expected, err_msg=str((y0, x0, y1, x1)))


def test_a_cell_boxed_twice_is_counted_once():
    cell = Box.from_corners(10, 10, 30, 34)
    again = Box.from_vertices(cell.corners[::-1] + 0.2)  # drawn from another corner
    other = Box.from_corners(50, 50, 70, 70)
    with pytest.warns(UserWarning, match=r"box 1 repeats box 0"):
        sup = make_supervision((100, 100), [cell, again, other])
    assert sup.boxes == [cell, other]
    assert set(np.unique(sup.instances)) == {0, 1, 2}


def test_a_box_that_gets_no_pixel_is_named_with_the_box_that_took_them(recwarn):
    # near the centre of a larger box, every pixel of a smaller box's ellipse is deeper in
    # the larger one's: its id has no pixel, which the person is told, box numbers as given
    big, small = Box.from_corners(0, 0, 40, 40), Box.from_corners(15, 15, 25, 25)
    other = Box.from_corners(50, 50, 60, 60)
    with pytest.warns(UserWarning, match=r"^1 box\(es\) have no pixel .*\(box 3 inside box 0\)"):
        sup = make_supervision((64, 64), [big, big, other, small])
    assert sup.boxes == [big, other, small]  # ids stay those of the boxes kept
    assert set(np.unique(sup.instances)) == {0, 1, 2}
    # boxes that overlap in part each keep pixels: nothing to say
    recwarn.clear()
    make_supervision((64, 64), [big, Box.from_corners(25, 25, 50, 50)])
    assert not recwarn.list


def test_usable_boxes_leaves_repeats_out_with_a_note():
    cell = Box.from_corners(10, 10, 30, 34)
    near = Box.from_corners(11, 10, 30, 34)  # one pixel off: another drawing, kept
    kept, notes, numbers = usable_boxes(
        [cell, near, cell, Box.from_corners(10, 10, 30, 34)], (64, 64)
    )
    assert kept == [cell, near] and numbers == [0, 1]
    assert notes == ["2 box(es) repeat another box on the same cell and were counted once."]


def test_a_box_around_many_cells_is_taken_for_a_region_with_a_note():
    # QuPath's "all objects" export holds the annotation drawn around the boxed area: as a
    # cell, its ellipse would call the whole area cell
    cells = [Box.from_corners(10 + 12 * i, 10, 20 + 12 * i, 20) for i in range(5)]
    region = Box.from_corners(5, 5, 80, 40)
    kept, notes, _ = usable_boxes([cells[0], region, *cells[1:]], (96, 96))
    assert kept == cells
    assert len(notes) == 1 and notes[0].startswith("box 1 (y0, x0, y1, x1 = (5, 5, 80, 40))")
    assert "holds 5 other boxes: taken for a region around cells" in notes[0]
    # a cell whose box holds a few small neighbours' boxes stays a cell
    big = Box.from_corners(5, 5, 60, 40)
    assert usable_boxes([big, *cells[:4]], (96, 96)) == ([big, *cells[:4]], [], [0, 1, 2, 3, 4])


def test_boxes_left_out_do_not_shift_the_numbers_messages_give():
    # a click-sized box first: the boxes kept are named as the user counts them (a Shapes
    # layer's index, a table's row), not by their place among the boxes kept
    click = Box.from_corners(5, 5, 6, 6)
    outer, inner = Box.from_corners(10, 10, 40, 40), Box.from_corners(20, 20, 30, 30)
    border = Box.from_corners(80, 80, 100, 100)
    cells = [Box.from_corners(50 + 6 * i, 5, 54 + 6 * i, 9) for i in range(REGION_MIN_BOXES)]
    region = Box.from_corners(48, 2, 96, 12)
    drawn = [click, outer, outer, inner, border, region, *cells]
    kept, notes, numbers = usable_boxes(drawn, (96, 96), [10 + k for k in range(len(drawn))])
    assert numbers == [11, 13, 14, *range(16, 16 + REGION_MIN_BOXES)]
    assert notes[-1].startswith("box 15 (y0, x0, y1, x1 = (48, 2, 96, 12)) holds")
    with pytest.warns(UserWarning) as caught:
        make_supervision((96, 96), kept, numbers=numbers)
    said = " ".join(str(w.message) for w in caught)
    assert "(box 14)" in said and "box 13 inside box 11" in said
    with pytest.warns(UserWarning, match="box 7 repeats box 3"):
        make_supervision((96, 96), [outer, cells[0], outer], numbers=[3, 5, 7])
    with pytest.raises(ValueError, match="numbers has 2 entries for 1 boxes: give one per box"):
        make_supervision((96, 96), [outer], numbers=[1, 2])


def test_regions_are_the_boxes_that_hold_enough_others_however_the_boxes_lie():
    # region_boxes compares each box with the boxes of its rows only; the boxes it finds are
    # those of the definition, every box against every other: rotated, nested, repeated,
    # and boxes whose edges meet exactly
    rng = np.random.default_rng(7)
    boxes = [
        Box(tuple(rng.integers(0, 60, 2) / 2), tuple(rng.integers(1, 30, 2) / 2), angle)
        for angle in rng.choice([0.0, 0.0, 0.3, -0.7], 300)
    ]
    boxes += boxes[:20]
    bounds = np.array([b.bounds for b in boxes])
    eps = 1e-6
    holds = (bounds[:, None, :2] - eps <= bounds[None, :, :2]).all(axis=2)
    holds &= (bounds[:, None, 2:] + eps >= bounds[None, :, 2:]).all(axis=2)
    counts = holds.sum(axis=1) - 1
    expected = {k: int(n) for k, n in enumerate(counts) if n >= REGION_MIN_BOXES}
    assert 20 < len(expected) < len(boxes) - 20
    assert region_boxes(boxes) == expected
