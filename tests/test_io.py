"""Images, label TIFFs and box tables (napari Shapes CSV and plain y0,x0,y1,x1 tables)."""

from __future__ import annotations

import errno
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_mutualseg.images import AxisImage
from napari_mutualseg.io import (
    OutputError,
    atomic_write,
    check_writable,
    output_paths,
    read_box_table,
    read_image,
    write_box_table,
    write_labels,
    write_text,
)
from napari_mutualseg.preprocess import read_here
from napari_mutualseg.readers import AxesUnknownError
from napari_mutualseg.supervision import Box, make_supervision

# Exactly what napari's builtin writer produces for a Shapes layer saved as CSV: a rectangle,
# an ellipse and a rectangle rotated by 30 degrees (vertices as napari stores them).
NAPARI_2D_CSV = """\
index,shape-type,vertex-index,axis-0,axis-1
0,rectangle,0,3.5,2.5
0,rectangle,1,3.5,19.5
0,rectangle,2,14.5,19.5
0,rectangle,3,14.5,2.5
1,ellipse,0,9.5,19.5
1,ellipse,1,9.5,39.5
1,ellipse,2,29.5,39.5
1,ellipse,3,29.5,19.5
2,rectangle,0,8.839745962155614,20.901923788646684
2,rectangle,1,5.839745962155614,26.098076211353316
2,rectangle,2,23.160254037844386,36.098076211353316
2,rectangle,3,26.160254037844386,30.901923788646684
"""

NAPARI_3D_CSV = """\
index,shape-type,vertex-index,axis-0,axis-1,axis-2
0,rectangle,0,2.0,0.5,1.0
0,rectangle,1,2.0,0.5,5.0
0,rectangle,2,2.0,8.0,5.0
0,rectangle,3,2.0,8.0,1.0
1,ellipse,0,0.0,10.0,10.0
1,ellipse,1,0.0,10.0,20.0
1,ellipse,2,0.0,14.0,20.0
1,ellipse,3,0.0,14.0,10.0
2,rectangle,0,2.0,20.0,20.0
2,rectangle,1,2.0,20.0,24.0
2,rectangle,2,2.0,24.0,24.0
2,rectangle,3,2.0,24.0,20.0
"""


def write(path, text):
    path.write_text(text, newline="")
    return path


# ---------------------------------------------------------------------- images


def test_read_image_tif_and_png(tmp_path):
    image = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    tifffile.imwrite(tmp_path / "a.tif", image)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), image)
    import skimage.io

    small = (image % 256).astype(np.uint8)
    skimage.io.imsave(tmp_path / "a.png", small, check_contrast=False)
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png")), small)


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        read_image(tmp_path / "missing.tif")
    broken = write(tmp_path / "broken.tif", "not a tiff")
    with pytest.raises(ValueError, match=r"Cannot read .*broken\.tif"):
        read_image(broken)
    other = write(tmp_path / "notes.txt", "hello")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        read_image(other)


def test_a_tiff_without_pages_says_it_holds_no_image(tmp_path):
    path = tmp_path / "empty.tif"
    with tifffile.TiffWriter(path):
        pass  # a header, no page
    with pytest.raises(ValueError, match=r"empty\.tif holds no image: .* without pages"):
        read_image(path)


@pytest.mark.filterwarnings("ignore:<tifffile.TiffWriter.write>:DeprecationWarning")
def test_planes_that_tifffile_tags_as_rgb_unasked_are_no_colours(tmp_path):
    # tifffile.imwrite(path, array) tags 3 or 4 planes as RGB: 4 fluorescence channels lost
    # the 4th as alpha, a 3-plane z-stack was to be blended to gray, whatever axes were given
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, np.arange(4 * 16 * 20, dtype=np.uint16).reshape(4, 16, 20))
    with pytest.raises(AxesUnknownError, match=r"shape \(4, 16, 20\)"):
        AxisImage.from_file(path)
    channels = AxisImage.from_file(path, axes="CYX")
    assert (channels.n_channels, channels.rgb) == (4, False)
    tifffile.imwrite(path, np.zeros((3, 16, 20), np.uint8))
    assert AxisImage.from_file(path, axes="ZYX").data.shape == (3, 16, 20)
    # what tifffile tags as RGB by design, 8 or 16 bits with 3 values last, are colours
    tifffile.imwrite(path, np.zeros((16, 20, 3), np.uint16))
    assert AxisImage.from_file(path).rgb


def test_a_lazy_uncompressed_tiff_reads_a_window_without_its_whole_plane(tmp_path):
    # one strip per plane (tifffile's and ImageJ's default) was read whole for any window
    stack = np.arange(2 * 40 * 1100, dtype=np.uint16).reshape(2, 40, 1100)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX"}, byteorder=">")  # as ImageJ
    image = AxisImage.from_file(path, lazy=True)
    assert image.data.chunksize == (1, 40, 1024) and image.dtype == np.uint16
    window = (1, slice(8, 24), slice(1000, 1050))
    np.testing.assert_array_equal(read_here(image.data[window]), stack[window])
    # a dask worker is sent where the pixels lie, not the pixels
    assert len(pickle.dumps(image.data)) < 10_000
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX"}, compression="zlib")
    assert AxisImage.from_file(path, lazy=True).data.chunksize[-1] == 1100  # its strips


def test_write_labels_compressed_no_overwrite(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[5:10, 5:12] = 7
    path = write_labels(tmp_path / "out" / "labels.tif", labels)
    assert path == tmp_path / "out" / "labels.tif"
    np.testing.assert_array_equal(read_image(path), labels)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.pages[0].dtype == np.int32
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_labels(path, labels)
    write_labels(path, labels + 1, overwrite=True)
    np.testing.assert_array_equal(read_image(path), labels + 1)
    bool_path = write_labels(tmp_path / "mask.tiff", labels > 0)
    assert read_image(bool_path).dtype == np.uint8
    with pytest.raises(ValueError, match="TIFF"):
        write_labels(tmp_path / "labels.png", labels)
    with pytest.raises(ValueError, match="integer"):
        write_labels(tmp_path / "f.tif", labels.astype(float))


# ---------------------------------------------------------------------- box tables


def test_read_napari_2d_csv(tmp_path):
    table = read_box_table(write(tmp_path / "shapes.csv", NAPARI_2D_CSV))
    assert list(table) == [None]
    rect, ell, rot = table[None]
    assert rect == Box.from_corners(4, 3, 15, 20)
    assert ell.kind == "ellipse"
    assert ell.center == (19.5, 29.5) and ell.half_sizes == (10.0, 10.0)
    assert rot.kind == "rectangle"
    np.testing.assert_allclose(rot.center, (16.0, 28.5))
    np.testing.assert_allclose(rot.half_sizes, (10.0, 3.0))
    assert rot.angle == pytest.approx(math.radians(30))
    # The boxes make a supervision directly.
    sup = make_supervision((40, 45), table[None])
    assert sup.instances.max() == 3


def test_read_napari_3d_csv_by_plane(tmp_path):
    table = read_box_table(write(tmp_path / "stack.csv", NAPARI_3D_CSV))
    assert list(table) == [0, 2]
    assert [b.kind for b in table[0]] == ["ellipse"]
    np.testing.assert_allclose(table[0][0].center, (12, 15))
    assert len(table[2]) == 2
    np.testing.assert_allclose(table[2][1].center, (22, 22))


def test_napari_csv_with_polygon_is_rejected(tmp_path):
    text = NAPARI_2D_CSV.replace("1,ellipse", "1,polygon")
    with pytest.raises(ValueError, match=r"shape 1 .*'polygon'.*only rectangles and ellipses"):
        read_box_table(write(tmp_path / "poly.csv", text))


def test_napari_csv_with_non_rectangle_is_rejected(tmp_path):
    text = NAPARI_2D_CSV.replace("0,rectangle,2,14.5,19.5", "0,rectangle,2,18.5,25.5")
    with pytest.raises(ValueError, match=r"bad\.csv.*Shape 0.*rectangle"):
        read_box_table(write(tmp_path / "bad.csv", text))


def test_read_plain_tables(tmp_path):
    table = read_box_table(write(tmp_path / "plain.csv", "y0,x0,y1,x1\n4,3,15,20\n0,0,2,2\n"))
    assert table == {None: [Box.from_corners(4, 3, 15, 20), Box.from_corners(0, 0, 2, 2)]}
    text = "image,y0,x0,y1,x1\na.tif,4,3,15,20\nb.tif,1,1,5,5\na.tif,0,0,2,2\n"
    table = read_box_table(write(tmp_path / "multi.csv", text))
    assert list(table) == ["a.tif", "b.tif"]
    assert table["a.tif"] == [Box.from_corners(4, 3, 15, 20), Box.from_corners(0, 0, 2, 2)]
    # Spaces, capitals, a byte-order mark and blank lines are tolerated.
    table = read_box_table(write(tmp_path / "loose.csv", "\ufeffY0, X0, Y1, X1\n\n4, 3, 15, 20\n"))
    assert table == {None: [Box.from_corners(4, 3, 15, 20)]}


def test_a_regionprops_table_saved_by_pandas_is_a_box_table(tmp_path):
    # regionprops_table(labels, properties=("label", "bbox", "area")), DataFrame.to_csv
    text = ",label,bbox-0,bbox-1,bbox-2,bbox-3,area\n0,1,4,3,15,20,187.0\n1,2,0,30,8,41,88.0\n"
    table = read_box_table(write(tmp_path / "cells.csv", text))
    assert table == {None: [Box.from_corners(4, 3, 15, 20), Box.from_corners(0, 30, 8, 41)]}
    stack = "label,bbox-0,bbox-1,bbox-2,bbox-3,bbox-4,bbox-5\n1,0,4,3,2,15,20\n"
    with pytest.raises(ValueError, match="regionprops table of a 3D image"):
        read_box_table(write(tmp_path / "stack.csv", stack))


def test_box_table_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.csv"):
        read_box_table(tmp_path / "nothing.csv")
    with pytest.raises(ValueError, match=r"unknown header.*napari Shapes CSV.*y0,x0,y1,x1"):
        read_box_table(write(tmp_path / "odd.csv", "a,b,c\n1,2,3\n"))
    with pytest.raises(ValueError, match="unexpected"):
        read_box_table(write(tmp_path / "extra.csv", "y0,x0,y1,x1,label\n1,2,3,4,5\n"))
    with pytest.raises(ValueError, match=r"line 2.*'x1' should be a number"):
        read_box_table(write(tmp_path / "text.csv", "y0,x0,y1,x1\n1,2,3,x\n"))
    with pytest.raises(ValueError, match=r"line 3.*inverted"):
        read_box_table(write(tmp_path / "inv.csv", "y0,x0,y1,x1\n1,2,3,4\n9,2,3,4\n"))
    with pytest.raises(ValueError, match="empty"):
        read_box_table(write(tmp_path / "empty.csv", ""))


def test_plain_round_trip(tmp_path):
    boxes = [Box.from_corners(4, 3, 15, 20), Box.from_corners(0, 0, 2, 2)]
    path = write_box_table(tmp_path / "sub" / "boxes.csv", boxes)
    assert path.read_text().splitlines() == ["y0,x0,y1,x1", "4,3,15,20", "0,0,2,2"]
    assert read_box_table(path) == {None: boxes}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_box_table(path, boxes)
    write_box_table(path, boxes[:1], overwrite=True)
    assert read_box_table(path) == {None: boxes[:1]}


def test_plain_round_trip_with_images(tmp_path):
    boxes = {"a.tif": [Box.from_corners(4, 3, 15, 20)], "b.tif": [Box.from_corners(1, 1, 5, 5)]}
    path = write_box_table(tmp_path / "multi.csv", boxes)
    assert path.read_text().splitlines()[0] == "y0,x0,y1,x1,image"
    assert read_box_table(path) == boxes


def test_rotated_and_ellipse_boxes_round_trip_as_napari_csv(tmp_path):
    table = read_box_table(write(tmp_path / "shapes.csv", NAPARI_2D_CSV))
    path = write_box_table(tmp_path / "again.csv", table[None])
    assert path.read_text().splitlines()[0] == "index,shape-type,vertex-index,axis-0,axis-1"
    again = read_box_table(path)[None]
    assert [b.kind for b in again] == ["rectangle", "ellipse", "rectangle"]
    for a, b in zip(table[None], again, strict=True):
        np.testing.assert_allclose(a.center, b.center, atol=1e-9)
        np.testing.assert_allclose(a.half_sizes, b.half_sizes, atol=1e-9)
        assert a.angle == pytest.approx(b.angle, abs=1e-9)
    with pytest.raises(ValueError, match="image column"):
        write_box_table(tmp_path / "named.csv", {"a.tif": table[None]})


def test_planes_round_trip_as_napari_3d_csv(tmp_path):
    table = read_box_table(write(tmp_path / "stack.csv", NAPARI_3D_CSV))
    path = write_box_table(tmp_path / "again.csv", table)
    assert path.read_text().splitlines()[0].endswith("axis-0,axis-1,axis-2")
    again = read_box_table(path)
    assert list(again) == [0, 2]
    for p in again:
        assert again[p] == table[p]
    with pytest.raises(ValueError, match="keys"):
        write_box_table(tmp_path / "mixed.csv", {0: table[0], "a": table[2]})


# ---------------------------------------------------------------------- writing safely


@pytest.fixture(params=["unnamed", "named"])
def temp_files(request, monkeypatch):
    """Both ways of staging a file: unnamed (Linux) and a hidden temporary name (elsewhere)."""
    if request.param == "named":
        monkeypatch.setattr("napari_mutualseg.files._PROC_FD", "/no/such/folder")
    return request.param


def test_atomic_write_replaces_only_a_complete_file(tmp_path, temp_files):
    path = tmp_path / "table.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, overwrite=True) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]  # no temporary file
    with atomic_write(path, overwrite=True) as f:
        f.write(b"new")
    assert path.read_text() == "new"


def test_a_write_to_a_folder_name_or_under_a_file_says_so_and_writes_nothing(tmp_path):
    # "models/" became a file named models; a file where a folder should be gave errno 17
    with pytest.raises(IsADirectoryError, match="names a folder"):
        write_text(f"{tmp_path}/models/", "x")
    (tmp_path / "out").write_text("precious")
    with pytest.raises(NotADirectoryError, match="out: it is a file, not a folder"):
        write_text(tmp_path / "out" / "model" / "m.pt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out").read_text() == "precious"


def test_part_files_of_killed_writers_on_this_machine_are_removed(tmp_path, monkeypatch):
    """A part file names its machine and process: what a killed process of this machine left
    goes with the next write into the folder; a live writer's and another machine's stay."""
    import socket
    import subprocess
    import sys

    monkeypatch.setattr("napari_mutualseg.files._PROC_FD", "/no/such/folder")
    monkeypatch.setattr("napari_mutualseg.files._CLEANED", set())
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead, host = int(gone.stdout), socket.gethostname()
    stale = tmp_path / f".a.csv.{host}.{dead}-0a1b2c3d.part"
    live = tmp_path / f".b.csv.{host}.{os.getppid()}-0a1b2c3d.part"
    elsewhere = tmp_path / f".a.csv.other-node.{dead}-0a1b2c3d.part"
    for temp in (stale, live, elsewhere):
        temp.write_bytes(b"half")
    with atomic_write(tmp_path / "c.csv") as f:
        staged = {p.name for p in tmp_path.iterdir()} - {live.name, elsewhere.name}
        f.write(b"new")
    (own,) = staged
    assert own.startswith(f".c.csv.{host}.{os.getpid()}-") and own.endswith(".part")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["c.csv", live.name, elsewhere.name]
    )


def test_a_file_created_meanwhile_is_never_replaced(tmp_path, temp_files):
    path = tmp_path / "model.pt"
    with pytest.raises(FileExistsError, match="another program"), atomic_write(path) as f:
        f.write(b"mine")
        path.write_text("theirs")  # another program takes the name first
    assert path.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_links_are_followed_but_never_when_broken(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    write_text(link, "new", overwrite=True)
    assert link.is_symlink() and real.read_text() == "new"
    broken = tmp_path / "broken.txt"
    broken.symlink_to(tmp_path / "elsewhere" / "x.txt")
    with pytest.raises(ValueError, match="broken link"):
        write_text(broken, "x")
    assert not (tmp_path / "elsewhere").exists()


def test_new_files_follow_the_umask_and_replaced_ones_keep_their_mode(tmp_path, temp_files):
    old = os.umask(0o022)
    try:
        made = write_text(tmp_path / "new.txt", "x")
        kept = tmp_path / "kept.txt"
        kept.write_text("x")
        kept.chmod(0o600)
        write_text(kept, "y", overwrite=True)
    finally:
        os.umask(old)
    assert made.stat().st_mode & 0o777 == 0o644
    assert kept.stat().st_mode & 0o777 == 0o600


def test_check_writable_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.tif")
    with pytest.raises(IsADirectoryError):
        check_writable(tmp_path)
    with pytest.raises(OutputError, match="Not enough space") as info:
        check_writable(tmp_path / "out.pt", size=2**62)
    assert info.value.errno == errno.ENOSPC
    assert check_writable(tmp_path / "new" / "deeper" / "out.tif").name == "out.tif"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_output_paths_never_collide(tmp_path):
    a, b = tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"
    assert output_paths([a, b], "out") == [Path("out/a/x_cells.tif"), Path("out/b/x_cells.tif")]
    dots = [tmp_path / "s.v1.tif", tmp_path / "s.v2.ome.tif"]
    assert output_paths(dots, "out") == [Path("out/s.v1_cells.tif"), Path("out/s.v2_cells.tif")]
    stack = output_paths([a, a], "out", parts=["plane000", "plane001"])
    assert stack == [Path("out/x_plane000_cells.tif"), Path("out/x_plane001_cells.tif")]
    with pytest.raises(ValueError, match="both be written"):
        output_paths([tmp_path / "x.tif", tmp_path / "x.tiff"], "out")
    with pytest.raises(ValueError, match="given twice"):
        output_paths([a, a], "out")
    with pytest.raises(ValueError, match="over the input"):
        output_paths([a, tmp_path / "a" / "x_cells.tif"], tmp_path / "a")


def test_the_entry_points_the_package_help_names_exist():
    import importlib
    import re

    import napari_mutualseg

    named = re.findall(r"``([a-z_]+)\.([A-Za-z_.]+)``", napari_mutualseg.__doc__)
    assert len(named) >= 10
    for module, attribute in named:
        obj = importlib.import_module(f"napari_mutualseg.{module}")
        for part in attribute.split("."):
            obj = getattr(obj, part)


def test_an_existing_result_is_explained_in_each_face_s_words(tmp_path):
    from napari_mutualseg.files import ResultExistsError
    from napari_mutualseg.image_task import error_reason

    path = write_text(tmp_path / "a.csv", "x\n")
    with pytest.raises(ResultExistsError) as info:
        write_text(path, "y\n")
    err = info.value
    assert isinstance(err, FileExistsError)  # callers catching the builtin still do
    assert (
        str(err)
        == f"{path} already exists; choose another path, or pass overwrite=True to replace it."
    )
    assert err.advice("add --overwrite").endswith("or add --overwrite to replace it.")
    # a batch's failed image names the batch's own option, not Python's or the command line's
    assert error_reason(err).endswith("or segment again with overwrite to replace it.")
    assert path.read_text() == "x\n"


def test_label_files_say_what_they_hold(tmp_path):
    # a supervision saved into a folder of images was taken for an image by a later search
    # of that folder; the package's own label files now say what they are
    from napari_mutualseg.io import written_as

    labels = np.zeros((2, 8, 10), np.uint8)
    assert written_as(write_labels(tmp_path / "cells.tif", labels[0])) == "labels"
    sup = write_labels(tmp_path / "sup.tif", labels, axes="ZYX", kind="supervision")
    assert written_as(sup) == "supervision"
    assert tifffile.imread(sup).shape == (2, 8, 10)  # the mark changes nothing else
    tifffile.imwrite(tmp_path / "image.tif", labels)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00junk")
    for other in ("image.tif", "broken.tif", "missing.tif", "notes.txt"):
        assert written_as(tmp_path / other) is None
    with pytest.raises(ValueError, match="kind must be one of"):
        write_labels(tmp_path / "x.tif", labels[0], kind="classes")


def test_ome_zarr_labels_say_what_they_hold(tmp_path):
    from napari_mutualseg.io import written_as
    from napari_mutualseg.ome import labels_zarr

    with labels_zarr(tmp_path / "x_cells.ome.zarr", (40, 30)) as out:
        out[:] = 1
    assert written_as(tmp_path / "x_cells.ome.zarr") == "labels"
    assert written_as(tmp_path) is None  # a folder of images


def _fiji_rois(path, boxes, kinds=None, **positions):
    """A ROI Manager's RoiSet.zip of rectangles (or ovals) at ``positions`` (lists, from 1)."""
    import roifile

    rois = []
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        roi = roifile.ImagejRoi(version=228, name=f"cell {k + 1}")
        roi.roitype = roifile.ROI_TYPE[(kinds or ["RECT"] * len(boxes))[k]]
        roi.top, roi.left, roi.bottom, roi.right = y0, x0, y1, x1
        for field, values in positions.items():
            setattr(roi, field, values[k])
        rois.append(roi)
    roifile.roiwrite(path, rois, mode="w")
    return path


def test_fiji_roi_sets_are_box_tables(tmp_path):
    # a Fiji ROI set was refused as "not a text (CSV) file"
    boxes = [(2, 3, 12, 15), (20, 4, 30, 10), (5, 30, 9, 38)]
    plain = tmp_path / "boxes.csv"
    plain.write_text("y0,x0,y1,x1\n" + "".join(",".join(map(str, b)) + "\n" for b in boxes))
    rois = _fiji_rois(tmp_path / "RoiSet.zip", boxes, ["RECT", "OVAL", "RECT"])
    read = read_box_table(rois)[None]
    assert [b.kind for b in read] == ["rectangle", "ellipse", "rectangle"]
    expected = read_box_table(plain)[None]
    assert [b.pixel_range() for b in read] == [b.pixel_range() for b in expected]
    # a stack's slices, and a hyperstack's z and time positions (the channel does not count)
    stack = _fiji_rois(tmp_path / "stack.zip", boxes, position=[1, 3, 3])
    assert {k: len(v) for k, v in read_box_table(stack).items()} == {0: 1, 2: 2}
    hyper = _fiji_rois(
        tmp_path / "hyper.zip", boxes, c_position=[2, 1, 1], z_position=[4, 1, 2],
        t_position=[1, 1, 3],
    )  # fmt: skip
    assert {k: len(v) for k, v in read_box_table(hyper).items()} == {3: 1, 0: 1, (2, 1): 1}


def test_fiji_rois_that_are_no_boxes_are_named(tmp_path):
    from napari_mutualseg.export import fiji_roi_zip

    labels = np.zeros((20, 20), np.int32)
    labels[2:8, 3:9] = 1
    outlines = tmp_path / "cells.zip"
    outlines.write_bytes(fiji_roi_zip(labels))
    with pytest.raises(ValueError, match=r"ROI 1 \('cell 1'\) is a freehand; only rectangles"):
        read_box_table(outlines)
    # cells exported as outlines were told to be deleted from the ROI Manager
    with pytest.raises(ValueError, match=r"None of its 1 ROIs is: these are outlines"):
        read_box_table(outlines)
    kinds = _fiji_rois(tmp_path / "kinds.zip", [(2, 3, 12, 15)] * 2, ["RECT", "POLYGON"])
    with pytest.raises(ValueError, match=r"ROI 2 .*Delete the other ROIs from the ROI Manager"):
        read_box_table(kinds)
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match=r"not a Fiji ROI set, or a damaged one; accepted"):
        read_box_table(tmp_path / "other.zip")
    mixed = _fiji_rois(tmp_path / "mixed.zip", [(2, 3, 12, 15), (4, 4, 9, 9)], position=[0, 2])
    with pytest.raises(ValueError, match=r"1 ROI\(s\) have no slice position"):
        read_box_table(mixed)


def test_qupath_rectangles_are_boxes_and_its_other_shapes_named(tmp_path):
    import json

    from napari_mutualseg.export import qupath_geojson

    labels = np.zeros((40, 50), np.int32)
    labels[2:12, 3:15] = 1
    labels[20:30, 4:10] = 2
    # QuPath's export: a list of features (or a FeatureCollection), closed rings
    features = json.loads(qupath_geojson(labels))["features"]
    (tmp_path / "rects.geojson").write_text(json.dumps(features))
    boxes = read_box_table(tmp_path / "rects.geojson")[None]
    assert [b.pixel_range() for b in boxes] == [(2, 3, 12, 15), (20, 4, 30, 10)]
    labels[12, 3] = 1  # no rectangle any more
    (tmp_path / "shapes.json").write_text(qupath_geojson(labels))
    with pytest.raises(ValueError, match=r"object 1 \('cell 1'\) is a polygon of 6 corners"):
        read_box_table(tmp_path / "shapes.json")
    (tmp_path / "cut.geojson").write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(ValueError, match="not valid GeoJSON"):
        read_box_table(tmp_path / "cut.geojson")


def test_a_box_table_of_another_kind_is_named_in_a_line(tmp_path):
    results = tmp_path / "Results.csv"
    results.write_text(" ,Area,Mean,BX,BY,Width,Height\n1,25,3.2,1.5,2.5,5,5\n")
    with pytest.raises(ValueError, match=r"Fiji Results table.*calibrated units.*More > Save"):
        read_box_table(results)
    # the unknown header was quoted whole: a file on one line filled the screen
    (tmp_path / "long.csv").write_text(",".join(f"column{k}" for k in range(2000)) + "\n1\n")
    with pytest.raises(ValueError, match="unknown header") as info:
        read_box_table(tmp_path / "long.csv")
    assert len(str(info.value)) < 1000


def test_qupath_objects_without_a_plane_are_on_the_first_plane(tmp_path):
    import json

    from napari_mutualseg.export import qupath_geojson

    labels = np.zeros((40, 50), np.int32)
    labels[2:12, 3:15] = 1
    path = tmp_path / "first.geojson"
    path.write_text(qupath_geojson(labels))  # no plane: QuPath's first plane
    assert list(read_box_table(path)) == [None]
    boxes = read_box_table(path, first_plane=True)
    assert {k: [b.pixel_range() for b in v] for k, v in boxes.items()} == {0: [(2, 3, 12, 15)]}
    # beside objects on other planes they are plane 0 either way
    features = json.loads(qupath_geojson(labels))["features"] * 2
    features[1] = json.loads(json.dumps(features[1]))
    features[1]["geometry"]["plane"] = {"c": -1, "z": 2, "t": 0}
    path.write_text(json.dumps(features))
    assert list(read_box_table(path)) == list(read_box_table(path, first_plane=True)) == [0, 2]


def test_a_box_table_asked_for_a_key_it_lacks_names_those_it_has(tmp_path):
    table = read_box_table(write(tmp_path / "stack.csv", NAPARI_3D_CSV))
    with pytest.raises(KeyError, match=r"stack\.csv has no boxes under None: .* per plane"):
        table[None]  # the README's 2D example on a stack's table
    images = read_box_table(write(tmp_path / "two.csv", "y0,x0,y1,x1,image\n1,2,5,6,a.tif\n"))
    with pytest.raises(KeyError, match=r"per image file .* take table\['a\.tif'\]"):
        images["b.tif"]


def test_write_box_table_takes_rows_and_tables_of_boxes(tmp_path):
    rows = np.array([[1, 2, 10, 12], [3, 4, 20, 30]])
    expected = {None: [Box.from_corners(*r) for r in rows]}
    for given in (
        rows,
        rows.tolist(),
        {"y0": rows[:, 0], "x0": rows[:, 1], "y1": rows[:, 2], "x1": rows[:, 3]},
    ):
        path = write_box_table(tmp_path / "boxes.csv", given, overwrite=True)
        assert read_box_table(path) == expected
    planes = write_box_table(tmp_path / "planes.csv", {0: rows, 3: rows[:1]})
    assert {k: len(v) for k, v in read_box_table(planes).items()} == {0: 2, 3: 1}
    with pytest.raises(ValueError, match=r"Shape 0 is 'x', not a box"):
        write_box_table(tmp_path / "bad.csv", ["x"])
