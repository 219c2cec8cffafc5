"""The command line with channels, RGB pictures, z-stacks and time series."""

import json

import numpy as np
import pytest
import skimage.io
import tifffile

from napari_mutualseg.cli import main
from napari_mutualseg.synthetic import synthetic_scene

# tiny networks train faster on one torch thread (conftest.py)

TINY = ["--rounds", "1", "--steps", "2", "--width", "4", "--depth", "2"]
TINY += ["--patch-size", "32", "--batch-size", "2", "--device", "cpu"]


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _napari_csv(path, boxes, *plane):
    """The Shapes CSV napari saves for rectangles drawn on ``plane`` (leading coordinates)."""
    axes = ",".join(f"axis-{d}" for d in range(len(plane) + 2))
    rows = [f"index,shape-type,vertex-index,{axes}"]
    lead = "".join(f"{p}," for p in plane)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
        rows += [
            f"{k},rectangle,{v},{lead}{y - 0.5},{x - 0.5}" for v, (y, x) in enumerate(corners)
        ]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def scene(tmp_path):
    image, _, boxes = synthetic_scene((64, 80), 5, seed=2)
    distractor = synthetic_scene((64, 80), 5, seed=9)[0]
    plain = tmp_path / "boxes.csv"
    plain.write_text("y0,x0,y1,x1\n" + "".join(",".join(map(str, b)) + "\n" for b in boxes))
    return image, distractor, boxes, plain


def test_a_two_channel_file_trains_on_the_chosen_channel_and_predicts_with_it(
    scene, tmp_path, capsys
):
    image, distractor, _, plain = scene
    two = tmp_path / "two.tif"
    data = (np.stack([distractor, image]) * 1000).astype(np.uint16)
    tifffile.imwrite(two, data, imagej=True, metadata={"axes": "CYX"})
    model = tmp_path / "m.pt"
    code, _, err = _run(
        capsys, "train", two, "--boxes", plain, "--channel", "1", "--out", model, *TINY
    )
    assert code == 0, err
    assert "2 channels, axes CYX" in err
    # resuming keeps the model's channel unless told otherwise
    code, _, err = _run(
        capsys,
        "train",
        two,
        "--boxes",
        plain,
        "--resume",
        model,
        "--out",
        tmp_path / "m2.pt",
        *TINY,
    )
    assert code == 0, err
    code, _, err = _run(capsys, "predict", model, two, "--out", tmp_path / "pred")
    assert code == 0, err
    assert "2 channels, axes CYX" in err  # it says what it read
    assert tifffile.imread(tmp_path / "pred" / "two_cells.tif").shape == (64, 80)
    # the nuclei alone: the one channel the networks take
    alone = tmp_path / "alone.tif"
    tifffile.imwrite(alone, data[1])
    code, _, err = _run(capsys, "predict", model, alone, "--out", tmp_path / "pred")
    assert code == 0, err
    code, _, err = _run(
        capsys, "predict", model, two, "--channel", "0,1", "--out", tmp_path / "p2"
    )
    assert code == 2 and "gives the networks 2 channels but they were trained on 1" in err
    code, _, err = _run(capsys, "predict", model, two, "--channel", "DAPI", "--out", tmp_path)
    assert code == 2 and "does not name its channels" in err


def test_a_3d_file_needs_its_axes_and_a_z_stack_gives_3d_labels(scene, tmp_path, capsys):
    image, _, boxes, plain = scene
    stack = tmp_path / "stack.tif"
    data = (np.stack([image * 0.9, image, image * 1.1]) * 1000).astype(np.uint16)
    tifffile.imwrite(stack, data, photometric="minisblack")  # three planes, not RGB
    table = _napari_csv(tmp_path / "stack.csv", boxes, 1)
    model = tmp_path / "m.pt"
    code, _, err = _run(capsys, "train", stack, "--boxes", table, "--out", model, *TINY)
    assert code == 2 and "--axes" in err and "ZYX" in err and "Traceback" not in err
    code, _, err = _run(
        capsys, "train", stack, "--axes", "ZYX", "--boxes", plain, "--out", model, *TINY
    )
    assert code == 2 and "which plane" in err and "with its slice shown" in err
    beyond = _napari_csv(tmp_path / "beyond.csv", boxes, 7)  # plane 7 of a three-plane stack
    code, _, err = _run(
        capsys, "train", stack, "--axes", "ZYX", "--boxes", beyond, "--out", model, *TINY
    )
    assert code == 2 and "boxes on plane 7" in err
    code, _, err = _run(
        capsys,
        "train",
        stack,
        "--boxes",
        table,
        "--axes",
        "ZYX",
        "--out",
        model,
        "--labels-out",
        tmp_path / "labels",
        *TINY,
    )
    assert code == 0, err
    assert "axes ZYX as given, where the file says none" in err  # not tifffile's 'QYX'
    assert f"stack.tif: {len(boxes)} boxes on 1 of 3 planes (z001)" in err  # as read
    assert (tmp_path / "labels" / "stack_z001_cells.tif").exists()  # the boxed plane
    code, stdout, err = _run(
        capsys, "predict", model, stack, "--axes", "ZYX", "--out", tmp_path / "pred"
    )
    assert code == 0, err
    assert "axes ZYX" in stdout
    assert tifffile.imread(tmp_path / "pred" / "stack_cells.tif").shape == (3, 64, 80)


def test_rgb_pictures_train_as_colours_or_gray(scene, tmp_path, capsys):
    image, _, _, plain = scene
    picture = tmp_path / "he.png"
    rgb = np.clip(np.stack([image, image * 0.6, image * 0.3], -1) * 220, 0, 255).astype(np.uint8)
    skimage.io.imsave(picture, rgb, check_contrast=False)
    for mode in ("channels", "gray"):
        model = tmp_path / f"{mode}.pt"
        code, _, err = _run(
            capsys, "train", picture, "--boxes", plain, "--rgb", mode, "--out", model, *TINY
        )
        assert code == 0, err
        assert "3 RGB colours" in err
        code, _, err = _run(capsys, "predict", model, picture, "--out", tmp_path / mode)
        assert code == 0, err
        assert tifffile.imread(tmp_path / mode / "he_cells.tif").shape == (64, 80)
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, rgb[..., 0])
    code, _, err = _run(capsys, "predict", tmp_path / "channels.pt", gray, "--out", tmp_path)
    assert code == 2 and "trained on 3 channels" in err


def test_train_says_rgb_had_nothing_to_act_on_in_gray_images(scene, tmp_path, capsys):
    image, _, _, plain = scene
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, (image * 1000).astype(np.uint16))
    model = tmp_path / "m.pt"
    model.write_bytes(b"")  # told before any training: the existing --out stops it there
    argv = ["train", gray, "--boxes", plain, "--rgb", "gray", "--out", model, *TINY]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "m.pt already exists" in err
    assert "warning: --rgb gray did nothing for gray.tif: not an RGB picture." in err


def test_empty_axes_are_refused_by_predict_as_by_the_other_commands(scene, tmp_path, capsys):
    # a script's empty "$AXES": predict alone took it for no --axes
    image = tmp_path / "x.tif"
    tifffile.imwrite(image, (scene[0] * 1000).astype(np.uint16))
    model = tmp_path / "m.pt"
    model.write_bytes(b"")  # refused before the model is read
    for argv in (["predict", model, image, "--out", tmp_path / "p"], ["info", image]):
        code, _, err = _run(capsys, *argv, "--axes", "")
        assert code == 2 and err.startswith("error: Axes '' for "), err
    assert not (tmp_path / "p").exists()


def test_boxes_napari_saved_on_a_time_series_of_stacks_train_their_plane(scene, tmp_path, capsys):
    image, _, boxes, _ = scene
    movie = tmp_path / "movie.tif"
    data = np.stack([np.stack([image * 0.9, image]), np.stack([image, image * 1.1])])
    tifffile.imwrite(movie, (data * 1000).astype(np.uint16), photometric="minisblack")
    table = _napari_csv(tmp_path / "movie.csv", boxes, 1, 0)  # napari's 4D CSV: t 1, z 0
    labels = tmp_path / "labels"
    argv = ["train", movie, "--axes", "TZYX", "--boxes", table, "--out", tmp_path / "m.pt"]
    code, _, err = _run(capsys, *argv, "--labels-out", labels, *TINY)
    assert code == 0, err
    assert [p.name for p in labels.iterdir()] == ["movie_t001_z000_cells.tif"]
    stack = tmp_path / "stack.tif"  # one time point: the table was not drawn on it
    tifffile.imwrite(stack, (data[0] * 1000).astype(np.uint16), photometric="minisblack")
    argv = ["train", stack, "--axes", "ZYX", "--boxes", table, "--out", tmp_path / "s.pt"]
    code, _, err = _run(capsys, *argv, *TINY)
    assert code == 2 and "boxes at (1, 0)" in err


def test_boxes_saved_on_a_channel_z_stack_as_napari_shows_it_train_their_z_plane(
    scene, tmp_path, capsys
):
    image, _, boxes, _ = scene
    stack = tmp_path / "czyx.tif"
    data = np.stack([np.stack([image * 0.5, image, image * 0.8])] * 2)  # (C, Z, Y, X)
    tifffile.imwrite(stack, (data * 1000).astype(np.uint16), photometric="minisblack")
    # a 4D Shapes layer over (C, Z, Y, X), the channel first: boxes on z 1, drawn on channel 1
    table = _napari_csv(tmp_path / "czyx.csv", boxes, 1, 1)
    labels = tmp_path / "labels"
    argv = ["train", stack, "--axes", "CZYX", "--boxes", table, "--out", tmp_path / "m.pt"]
    code, _, err = _run(capsys, *argv, "--labels-out", labels, *TINY)
    assert code == 0, err
    assert [p.name for p in labels.iterdir()] == ["czyx_z001_cells.tif"]


def test_supervise_writes_a_stack_class_map_that_train_takes(scene, tmp_path, capsys):
    image, _, boxes, _ = scene
    stack = tmp_path / "stack.tif"
    data = (np.stack([image * 0.9, image, image * 1.1]) * 1000).astype(np.uint16)
    tifffile.imwrite(stack, data, photometric="minisblack")
    table = _napari_csv(tmp_path / "stack.csv", boxes, 1)
    sup = tmp_path / "sup.tif"
    code, stdout, err = _run(
        capsys, "supervise", stack, "--axes", "ZYX", "--boxes", table, "--out", sup
    )
    assert code == 0, err
    assert f"{len(boxes)} boxes on 1 of 3 planes" in stdout
    classes = tifffile.imread(sup)
    assert classes.shape == (3, 64, 80)
    assert (classes[0] == 255).all() and (classes[2] == 255).all()  # no boxes: ignored
    assert set(np.unique(classes[1])) == {0, 1, 2}
    argv = ["train", stack, "--axes", "ZYX", "--boxes", table, "--supervision", sup]
    code, _, err = _run(capsys, *argv, "--out", tmp_path / "m.pt", *TINY)
    assert code == 0, err


def test_a_supervision_is_marked_and_evaluate_refuses_it_and_masks(scene, tmp_path, capsys):
    # evaluate scored a class map (0/1/2/255, what supervise writes) as instance labels,
    # without a word, and a binary mask as one object
    from napari_mutualseg.io import written_as
    from napari_mutualseg.synthetic import synthetic_scene

    image, _, _, plain = scene
    truth = synthetic_scene((64, 80), 5, seed=2)[1]
    tif = tmp_path / "x.tif"
    tifffile.imwrite(tif, (image * 1000).astype(np.uint16))
    tifffile.imwrite(tmp_path / "truth.tif", truth.astype(np.uint16))
    sup = tmp_path / "x_supervision.tif"
    code, _, _ = _run(capsys, "supervise", tif, "--boxes", plain, "--out", sup)
    assert code == 0 and written_as(sup) == "supervision" and written_as(tif) is None
    code, out, err = _run(capsys, "evaluate", sup, tmp_path / "truth.tif")
    assert code == 2 and "mAP" not in out and "supervision (class map)" in err
    # the same class map saved again by another program (Fiji, napari) has lost the mark
    tifffile.imwrite(tmp_path / "painted.tif", tifffile.imread(sup))
    code, out, err = _run(capsys, "evaluate", tmp_path / "painted.tif", tmp_path / "truth.tif")
    assert code == 2 and "mAP" not in out and "class map" in err
    tifffile.imwrite(tmp_path / "mask.tif", ((truth > 0) * 255).astype(np.uint8))
    code, out, err = _run(capsys, "evaluate", tmp_path / "truth.tif", tmp_path / "mask.tif")
    assert code == 2 and "a mask, not instance labels" in err and "skimage.measure.label" in err
    code, out, _ = _run(capsys, "evaluate", tmp_path / "truth.tif", tmp_path / "truth.tif")
    assert code == 0 and "mAP 1.000" in out
    # the truth saved as a stack of one plane: refused as of another shape
    tifffile.imwrite(tmp_path / "one.tif", truth[None].astype(np.uint16))
    code, out, _ = _run(capsys, "evaluate", tmp_path / "truth.tif", tmp_path / "one.tif")
    assert code == 0 and "mAP 1.000" in out


def test_evaluate_scores_a_time_series_frame_by_frame_and_asks_a_plain_stack_its_axes(
    tmp_path, capsys
):
    # a time series was scored as one 3D volume: a perfect tracked segmentation against
    # truth numbered anew in every frame scored mAP 0
    from napari_mutualseg.io import write_labels

    frames = [synthetic_scene((48, 48), 4, seed=s)[1].astype(np.uint16) for s in range(5)]
    truth = np.stack(frames)
    tracked = truth + np.arange(5, dtype=np.uint16)[:, None, None] * 10 * (truth > 0)
    write_labels(tmp_path / "pred.tif", tracked, axes="TYX")
    tifffile.imwrite(tmp_path / "truth.tif", truth)  # a plain stack: no axes
    code, out, err = _run(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "truth.tif")
    assert code == 0, err
    assert "mAP 1.000" in out and "mean of 5 frames" in out
    code, out, err = _run(capsys, "evaluate", tmp_path / "truth.tif", tmp_path / "truth.tif")
    assert code == 2 and "--axes ZYX" in err and "--axes TYX" in err
    argv = ["evaluate", tmp_path / "truth.tif", tmp_path / "truth.tif", "--axes", "ZYX"]
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0 and "frames" not in json.loads(out)
    code, out, err = _run(
        capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "truth.tif", "--axes", "ZYX"
    )
    assert code == 0 and "mAP 1.000" not in out  # one volume: each cell's frames are 3D objects


def test_fiji_rois_on_time_points_supervise_their_frames(scene, tmp_path, capsys):
    import roifile

    image, _, boxes, _ = scene
    movie = tmp_path / "movie.tif"
    data = (np.stack([image] * 3) * 1000).astype(np.uint16)
    tifffile.imwrite(movie, data, imagej=True, metadata={"axes": "TYX"})
    rois = []
    for k, (y0, x0, y1, x1) in enumerate(boxes[:3]):
        # a hyperstack's ROI: channel 1, z 1, time point k + 1 (Fiji counts from 1)
        roi = roifile.ImagejRoi(version=228, c_position=1, z_position=1, t_position=k + 1)
        roi.roitype = roifile.ROI_TYPE.RECT
        roi.top, roi.left, roi.bottom, roi.right = (int(v) for v in (y0, x0, y1, x1))
        rois.append(roi)
    roifile.roiwrite(tmp_path / "RoiSet.zip", rois, mode="w")
    out = tmp_path / "sup.tif"
    code, out_text, _ = _run(capsys, "supervise", movie, "--boxes", tmp_path / "RoiSet.zip",
                             "--out", out)  # fmt: skip
    assert code == 0 and "3 boxes on 3 of 3 planes" in out_text
    classes = tifffile.imread(out)
    assert all((classes[t] == 1).any() for t in range(3))


def test_cell_labels_given_as_a_supervision_are_refused(scene, tmp_path, capsys):
    # predicted labels of two cells (values 0, 1, 2) passed as classes: cell 2 was trained
    # as boundary, without a word
    from napari_mutualseg.io import write_labels

    image, _, boxes, plain = scene
    tif = tmp_path / "x.tif"
    tifffile.imwrite(tif, (image * 1000).astype(np.uint16))
    cells = np.zeros(image.shape, np.int32)
    for k, (y0, x0, y1, x1) in enumerate(boxes[:2]):
        cells[y0:y1, x0:x1] = k + 1
    labels = write_labels(tmp_path / "x_cells.tif", cells)
    code, _, err = _run(capsys, "train", tif, "--boxes", plain, "--supervision", labels,
                        "--out", tmp_path / "m.pt", *TINY)  # fmt: skip
    assert code == 2 and "holds cell labels written by napari-mutualseg" in err
    assert not (tmp_path / "m.pt").exists()


def test_qupath_boxes_on_a_stacks_first_plane_supervise_that_plane(scene, tmp_path, capsys):
    # QuPath writes no plane for objects on the first plane: a stack's table of such objects
    # alone was refused as naming no plane
    import json

    image, _, boxes, _ = scene
    movie = tmp_path / "movie.tif"
    data = (np.stack([image] * 3) * 1000).astype(np.uint16)
    tifffile.imwrite(movie, data, imagej=True, metadata={"axes": "TYX"})
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            },
            "properties": {"objectType": "annotation"},
        }
        for y0, x0, y1, x1 in (map(int, b) for b in boxes)
    ]
    table = tmp_path / "boxes.geojson"
    table.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "sup.tif"
    code, out_text, err = _run(capsys, "supervise", movie, "--boxes", table, "--out", out)
    assert code == 0, err
    assert f"{len(boxes)} boxes on 1 of 3 planes" in out_text
    classes = tifffile.imread(out)
    assert (classes[0] == 1).any() and (classes[1:] == 255).all()


@pytest.mark.parametrize("source", ["fiji", "qupath"])
def test_fiji_and_qupath_boxes_of_a_time_series_with_channels_go_to_their_time_point(
    tmp_path, capsys, source
):
    import roifile

    from napari_mutualseg.cli import main

    image = np.zeros((3, 2, 32, 32), np.float32)  # T, C, Y, X
    image[:, :, 8:16, 8:16] = 1
    tifffile.imwrite(tmp_path / "ct.tif", image, imagej=True, metadata={"axes": "TCYX"})
    if source == "fiji":  # drawn on channel 2 of the last time point: c, z, t from 1
        roi = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=6, top=6, right=18, bottom=18)
        roi.c_position, roi.z_position, roi.t_position = 2, 1, 3
        roi.tofile(boxes := tmp_path / "boxes.roi")
    else:
        ring = [[6, 6], [18, 6], [18, 18], [6, 18], [6, 6]]
        geometry = {"type": "Polygon", "coordinates": [ring], "plane": {"c": -1, "z": 0, "t": 2}}
        feature = {
            "type": "Feature",
            "geometry": geometry,
            "properties": {"objectType": "annotation"},
        }
        (boxes := tmp_path / "boxes.geojson").write_text(json.dumps([feature]))
    out = tmp_path / "sup.tif"
    # was written on time point 0 (its (t, z) = (2, 0) taken for channel 2, time point 0)
    assert (
        main(["supervise", str(tmp_path / "ct.tif"), "--boxes", str(boxes), "--out", str(out)])
        == 0
    )
    classes = tifffile.imread(out)
    assert [bool((plane == 1).any()) for plane in classes] == [False, False, True]
