"""Every CLI verb end to end on tiny inputs, and the user mistakes it must explain."""

import argparse
import json
import re
import signal
import sys

import numpy as np
import pytest
import tifffile

from napari_mutualseg.cli import main
from napari_mutualseg.cli.inputs import boxes_for
from napari_mutualseg.models import ModelPair, build_unet
from napari_mutualseg.synthetic import synthetic_scene

TINY = ["--rounds", "1", "--steps", "2", "--width", "4", "--depth", "2"]
TINY += ["--patch-size", "32", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture
def data(tmp_path):
    image, gt, boxes = synthetic_scene((64, 80), 5, seed=2)
    img = tmp_path / "cells.tif"
    tifffile.imwrite(img, (image * 1000).astype(np.uint16))
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, (image[::-1] * 1000).astype(np.uint16))
    plain = tmp_path / "boxes.csv"
    plain.write_text("y0,x0,y1,x1\n" + "".join(",".join(map(str, b)) + "\n" for b in boxes))
    # the CSV napari writes for a Shapes layer of rectangles
    rows = ["index,shape-type,vertex-index,axis-0,axis-1"]
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        corners = [
            (y0 - 0.5, x0 - 0.5),
            (y0 - 0.5, x1 - 0.5),
            (y1 - 0.5, x1 - 0.5),
            (y1 - 0.5, x0 - 0.5),
        ]
        rows += [f"{k},rectangle,{v},{y},{x}" for v, (y, x) in enumerate(corners)]
    napari_csv = tmp_path / "napari_boxes.csv"
    napari_csv.write_text("\n".join(rows) + "\n")
    gt_path = tmp_path / "gt.tif"
    tifffile.imwrite(gt_path, gt)
    return {"image": img, "other": other, "plain": plain, "napari": napari_csv, "gt": gt_path}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_supervise_writes_the_class_map(data, tmp_path, capsys):
    out = tmp_path / "sup.tif"
    code, stdout, _ = _run(
        capsys, "supervise", data["image"], "--boxes", data["plain"], "--out", out
    )
    assert code == 0 and "5 boxes" in stdout
    classes = tifffile.imread(out)
    assert set(np.unique(classes)) == {0, 1, 2}


def test_supervise_names_boxes_by_their_rows_in_the_table(data, tmp_path, capsys):
    # row 0 a click, left out: the rows after it were named one less, and not by image
    rows = data["plain"].read_text().splitlines()
    y0, x0, y1, x1 = map(int, rows[1].split(","))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    table = tmp_path / "rows.csv"
    inner = f"{cy - 2},{cx - 2},{cy + 2},{cx + 2}"  # inside row 1's box, near its centre
    table.write_text("\n".join([rows[0], "5,5,6,6", *rows[1:], inner]) + "\n")
    argv = ["supervise", data["image"], "--boxes", table, "--out", tmp_path / "s.tif"]
    code, _, err = _run(capsys, *argv)
    assert code == 0
    assert "cells.tif: 1 box(es) have no pixel in the supervision (box 6 inside box 1)" in err


def test_boxes_of_another_image_of_the_same_size_are_warned_of(data, tmp_path, capsys):
    *_, boxes = synthetic_scene((64, 80), 5, seed=7)  # another field of the plate
    table = tmp_path / "other.csv"
    table.write_text("y0,x0,y1,x1\n" + "".join(",".join(map(str, b)) + "\n" for b in boxes))
    for boxes, warned in ((data["plain"], False), (table, True)):
        argv = ["supervise", data["image"], "--boxes", boxes, "--out", tmp_path / "s.tif"]
        code, _, err = _run(capsys, *argv, "--overwrite")
        assert code == 0
        assert ("cells.tif: the boxed cells are no brighter or darker" in err) == warned, err


def test_supervision_and_training_labels_keep_the_pixel_size(data, tmp_path, capsys):
    image = tmp_path / "calibrated.ome.tif"
    pixels = tifffile.imread(data["image"])
    tifffile.imwrite(image, pixels, metadata={"PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    sup, labels = tmp_path / "sup.tif", tmp_path / "labels"
    _run(capsys, "supervise", image, "--boxes", data["plain"], "--out", sup)
    argv = ["train", image, "--boxes", data["plain"], "--out", tmp_path / "m.pt", *TINY]
    code, _, err = _run(capsys, *argv, "--labels-out", labels)
    assert code == 0, err
    for written in (sup, labels / "calibrated_cells.tif"):
        with tifffile.TiffFile(written) as tif:
            assert 'PhysicalSizeX="0.65"' in tif.ome_metadata, written


def test_train_on_napari_csv_then_predict_another_image(data, tmp_path, capsys):
    model = tmp_path / "model.pt"
    code, stdout, err = _run(
        capsys,
        "train",
        data["image"],
        "--boxes",
        data["napari"],
        "--out",
        model,
        "--labels-out",
        tmp_path / "labels",
        *TINY,
    )
    assert code == 0, err
    assert "round 1/1" in stdout and model.exists()
    labels = tifffile.imread(tmp_path / "labels" / "cells_cells.tif")
    assert labels.shape == (64, 80) and labels.max() >= 5  # one object per box at least
    code, stdout, err = _run(
        capsys, "predict", model, data["other"], "--out", tmp_path / "pred", "--device", "cpu"
    )
    assert code == 0, err
    assert tifffile.imread(tmp_path / "pred" / "other_cells.tif").shape == (64, 80)
    # resume from the saved model: its rounds go on from the saved one
    code, stdout, err = _run(
        capsys,
        "train",
        data["image"],
        "--boxes",
        data["plain"],
        "--out",
        tmp_path / "m2.pt",
        "--resume",
        model,
        *TINY,
    )
    assert code == 0, err
    assert "round 2/2" in stdout


def test_train_from_a_painted_supervision(data, tmp_path, capsys):
    sup = tmp_path / "sup.tif"
    _run(capsys, "supervise", data["image"], "--boxes", data["plain"], "--out", sup)
    classes = tifffile.imread(sup)
    painted = classes.copy()
    painted[:10, :10] = 255  # a corner the user is unsure of
    painted[30:34, 40:44] = 1  # a cell the boxes missed
    edits = int((painted != classes).sum())
    tifffile.imwrite(sup, painted)
    argv = ["train", data["image"], "--boxes", data["plain"], "--out", tmp_path / "m.pt", *TINY]
    code, stdout, err = _run(capsys, *argv, "--supervision", sup)
    assert code == 0, err
    assert f"{edits:,} pixels differ from the boxes' ellipse labels" in err
    assert "round 1/1" in stdout
    assert np.array_equal(tifffile.imread(sup), painted)  # read, never written


@pytest.mark.parametrize(
    ("paint", "message"),
    [
        (lambda sup, t: [sup, sup], "--supervision got 2 file(s) for 1 image(s)"),
        (lambda sup, t: [_written(t / "bad.tif", np.full((64, 80), 7, np.uint8))], "values"),
        (lambda sup, t: [_written(t / "small.tif", np.zeros((32, 80), np.uint8))], "shape"),
        # another field's map: every pixel that differs was trusted as painted, the other
        # field's cells learnt on this one
        (lambda sup, t: [_other_fields_map(t / "other.tif")], "other.tif marks as cells only"),
    ],
)
def test_a_painted_supervision_that_does_not_fit_is_explained(
    data, tmp_path, capsys, paint, message
):
    sup = tmp_path / "sup.tif"
    _run(capsys, "supervise", data["image"], "--boxes", data["plain"], "--out", sup)
    argv = ["train", data["image"], "--boxes", data["plain"], "--out", tmp_path / "m.pt", *TINY]
    code, _, err = _run(capsys, *argv, "--supervision", *paint(sup, tmp_path))
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def _untrained_model(path):
    """A tiny untrained pair saved at ``path`` (its file's path)."""
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    return ModelPair(build_unet(arch, 0), build_unet(arch, 1)).save(path)


def _other_fields_map(path):
    from napari_mutualseg.boxes import Box
    from napari_mutualseg.supervision import make_supervision

    boxes = [Box.from_corners(*b) for b in synthetic_scene((64, 80), 5, seed=5)[2]]
    return _written(path, make_supervision((64, 80), boxes).classes)


def _written(path, data):
    tifffile.imwrite(path, data)
    return path


def test_info_says_what_a_model_holds(data, tmp_path, capsys):
    model = tmp_path / "m.pt"
    _run(capsys, "train", data["image"], "--boxes", data["plain"], "--out", model, *TINY)
    code, stdout, err = _run(capsys, "info", model)
    assert code == 0, err
    assert "input: 1 channel" in stdout and "width 4 and depth 2" in stdout
    assert "trained: 1 round(s) on cpu" in stdout
    assert "images above 4096 x 4096 px (or with --block-size) are segmented block by" in stdout
    code, stdout, err = _run(capsys, "info", model, "--json", "--axes", "ZYX")
    assert code == 0 and "--axes ZYX did nothing: " in err and "give --axes to predict" in err
    card = json.loads(stdout)
    assert card["fingerprint"] == ModelPair.load(model).fingerprint()
    assert card["rounds_trained"] == 1 and card["networks"]["b"]["depth"] == 2
    assert "pixels:" not in stdout and card["pixel_size"] is None  # the image said none
    wide_b = tmp_path / "wide_b.pt"
    pair = ModelPair.load(model)
    ModelPair(pair.model_a, build_unet({**pair.model_b.arch, "width": 8}, 1), pair.percentiles,
              pair.settings, pixel_size=0.65).save(wide_b)  # fmt: skip
    code, stdout, _ = _run(capsys, "info", wide_b)
    assert "A, a U-Net of width 4 and depth 2" in stdout and "B, a U-Net of width 8" in stdout
    assert "pixels: 0.65 µm in training" in stdout
    code, _, err = _run(capsys, "info", data["plain"])  # a box table given for the model
    assert code == 2 and "is not a readable napari-mutualseg model" in err


def test_info_says_how_an_image_file_is_read(tmp_path, capsys):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 16, 20), np.uint16))
    code, _, err = _run(capsys, "info", stack)  # a plain 3D TIFF: its axes are asked for
    assert code == 2 and "--axes" in err
    code, stdout, err = _run(capsys, "info", stack, "--axes", "ZYX")
    assert code == 0, err
    assert "stack.tif: 16 x 20 px, 5 z-planes, axes ZYX" in stdout
    assert "pixel size: none in the file" in stdout and "note: axes ZYX as given" in stdout
    calibrated = tmp_path / "calibrated.ome.tif"
    tifffile.imwrite(
        calibrated,
        np.zeros((2, 16, 20), np.uint16),
        metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}, "PhysicalSizeX": 0.65,
                  "PhysicalSizeY": 0.65},
    )  # fmt: skip
    code, stdout, _ = _run(capsys, "info", calibrated, "--json")
    card = json.loads(stdout)
    assert card["axes"] == "CYX" and card["channel_names"] == ["DAPI", "GFP"]
    assert card["pixel_size"] == {"Y": 0.65, "X": 0.65} and card["unit"] == "µm"


def test_info_says_a_file_holds_labels_not_an_image(data, tmp_path, capsys):
    sup = tmp_path / "sup.tif"
    _run(capsys, "supervise", data["image"], "--boxes", data["plain"], "--out", sup)
    code, stdout, _ = _run(capsys, "info", sup)
    assert code == 0
    assert "holds: a supervision (class map), not a microscope image, as its file says" in stdout
    code, stdout, _ = _run(capsys, "info", data["image"], "--json")
    assert json.loads(stdout)["written_as"] is None


def test_evaluate_prints_metrics(data, capsys):
    code, stdout, _ = _run(capsys, "evaluate", data["gt"], data["gt"], "--json")
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics["f1_50"] == 1.0 and metrics["map"] == 1.0


def test_evaluate_says_what_to_give_for_ground_truth_of_another_size(data, tmp_path, capsys):
    crop = tmp_path / "crop.tif"
    tifffile.imwrite(crop, tifffile.imread(data["gt"])[:60])
    code, _, err = _run(capsys, "evaluate", data["gt"], crop)
    assert code == 2 and "gt.tif is 64 x 80 px but its ground truth" in err
    assert "crop.tif is 60 x 80 px: give the ground truth of the image that was segmented" in err


@pytest.mark.parametrize("swap", [False, True])
def test_evaluate_refuses_the_microscope_image_for_labels(data, capsys, swap):
    pair = (data["image"], data["gt"])
    code, _, err = _run(capsys, "evaluate", *(pair[::-1] if swap else pair))
    assert code == 2 and "cells.tif looks like a microscope image, not labels" in err


def test_demo_runs_the_whole_flow(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = _run(
        capsys,
        "demo",
        "--out",
        out,
        "--rounds",
        "1",
        "--steps",
        "2",
        "--width",
        "4",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "ellipse label" in stdout and "round 1/1" in stdout and "mAP" in stdout
    assert "520 x 696 px, 73 boxes" in stdout  # height x width, as every image is described
    assert "after 1 round in" in stdout
    summary = json.loads((out / "metrics.json").read_text())
    assert 0 <= summary["final"]["map"] <= 1 and summary["device"].startswith("cpu")
    assert (out / "overlay.png").stat().st_size > 1000
    # running it again must not overwrite the earlier results
    code, _, err = _run(capsys, "demo", "--out", out, "--rounds", "1", "--steps", "1")
    assert code == 2 and "already exists" in err
    assert "add --overwrite to replace it" in err and "overwrite=True" not in err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d, t: ["train", t / "missing.tif", "--boxes", d["plain"], "--out", t / "m.pt"],
            "missing.tif",
        ),
        (
            lambda d, t: ["train", d["image"], "--boxes", t / "nope.csv", "--out", t / "m.pt"],
            "nope.csv",
        ),
        (lambda d, t: ["train", d["image"], "--boxes", d["gt"], "--out", t / "m.pt"], "box"),
        (
            lambda d, t: ["supervise", d["image"], "--boxes", t, "--out", t / "s.tif"],
            "is a folder, not a box table: give the box file of each image",
        ),
        (
            lambda d, t: ["supervise", d["image"], "--boxes", d["plain"], "--out", d["gt"]],
            "already exists",
        ),
        (
            lambda d, t: ["predict", d["gt"], d["image"], "--out", t / "p"],
            "napari-mutualseg model",
        ),
        (lambda d, t: ["evaluate", d["image"], t / "missing.tif"], "missing.tif"),
        (
            lambda d, t: ["train", d["image"], "--boxes", d["plain"], "--out", t, "--steps", 0],
            "--steps must be a whole number of at least 1, got 0",
        ),
        (lambda d, t: ["demo", "--out", t, "--lr", "5"], "--lr must be a number in (0, 1)"),
        (
            lambda d, t: [
                *("supervise", d["image"], "--boxes", d["plain"], "--out", t / "s.tif"),
                *("--edge-width", 0),
            ],
            "--edge-width must be at least 1 pixel, got 0",
        ),
        (
            lambda d, t: ["train", d["image"], "--boxes", d["plain"], "--out", t / "model.tif"],
            "model.tif is the name of an image or a table, which a model file must not have "
            "(it would be taken for one, or replace one): save the model as ",
        ),
        (
            lambda d, t: ["predict", d["image"], t / "m.pt", "--out", t / "p"],
            "m.pt as an image: the model comes first",
        ),
        (
            lambda d, t: ["predict", t / "a.pt", d["image"], t / "b.pt", "--out", t / "p"],
            "b.pt is a model given among the images: predict takes one model",
        ),
        (
            lambda d, t: ["train", d["image"], d["image"], "--boxes", d["plain"], "--out", t],
            "cells.tif is given twice",
        ),
        (  # one plain table for two images: which image is a box on?
            lambda d, t: ["train", d["image"], d["other"], "--boxes", d["plain"], "--out", t],
            "has no 'image' column, so it cannot say which of the 2 images a box is on",
        ),
    ],
)
def test_user_mistakes_get_a_message_not_a_traceback(data, tmp_path, capsys, make, message):
    before = data["gt"].read_bytes()
    code, _, err = _run(capsys, *make(data, tmp_path))
    assert code == 2
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert data["gt"].read_bytes() == before  # nothing the user made is overwritten


@pytest.mark.parametrize(
    "make",
    [
        lambda d: ["supervise", d["image"], "--boxes", d["plain"], "--out", d["image"]],
        lambda d: ["supervise", d["image"], "--boxes", d["plain"], "--out", d["plain"]],
        lambda d: ["train", d["image"], "--boxes", d["plain"], "--out", d["image"], *TINY],
        lambda d: ["train", d["image"], "--boxes", d["plain"], "--out", d["plain"], *TINY],
    ],
)
def test_an_input_is_never_written_over_even_with_overwrite(data, capsys, make):
    before = {key: path.read_bytes() for key, path in data.items()}
    code, _, err = _run(capsys, *make(data), "--overwrite")
    # train refuses a model named like an image or table before it compares with the inputs
    assert code == 2 and ("is an input" in err or "is the name of an image or a table" in err)
    assert {key: path.read_bytes() for key, path in data.items()} == before


def test_two_results_of_one_command_never_share_a_name(data, tmp_path, capsys):
    same = tmp_path / "same.tif"
    argv = ["supervise", data["image"], "--boxes", data["plain"], "--out", same]
    code, _, err = _run(capsys, *argv, "--instances-out", same)
    assert code == 2 and "Two results" in err and not same.exists()
    labels = tmp_path / "seg"
    model = labels / "cells_cells.tif"  # where --labels-out puts the image's segmentation
    argv = ["train", data["image"], "--boxes", data["plain"], "--out", model, *TINY]
    code, _, err = _run(capsys, *argv, "--labels-out", labels)
    assert code == 2 and "is the name of an image or a table" in err and not labels.exists()


def test_a_shared_table_never_gives_two_images_the_same_boxes(data, tmp_path, capsys):
    rows = data["plain"].read_text().splitlines()
    shared = tmp_path / "shared.csv"
    shared.write_text("\n".join(["image," + rows[0], *("x.tif," + r for r in rows[1:])]))
    for plate in ("p1", "p2"):
        (tmp_path / plate).mkdir()
        (tmp_path / plate / "x.tif").write_bytes(data["image"].read_bytes())
    images = [tmp_path / "p1" / "x.tif", tmp_path / "p2" / "x.tif"]
    argv = ["train", *images, "--boxes", shared, "--out", tmp_path / "m.pt", *TINY]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "both match 'x.tif'" in err


@pytest.mark.parametrize("header", ["y0,x0,y1,x1", "image,y0,x0,y1,x1\nother.tif,1,1,9,9"])
def test_an_image_without_boxes_in_its_table_is_said_so(data, tmp_path, capsys, header):
    table = tmp_path / "empty.csv"
    table.write_text(header + "\n")
    argv = ["train", data["image"], "--boxes", table, "--out", tmp_path / "m.pt", *TINY]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "the box table has no rows for it" in err and "None" not in err
    assert ("it has boxes for other.tif" in err) == ("other.tif" in header)


@pytest.mark.parametrize("key", ["CELLS.TIF", "Cells"])
def test_an_image_named_in_another_case_is_said_so(data, tmp_path, capsys, key):
    rows = data["plain"].read_text().splitlines()
    table = tmp_path / "named.csv"
    table.write_text("\n".join(["image," + rows[0], *(f"{key},{r}" for r in rows[1:])]) + "\n")
    argv = ["train", data["image"], "--boxes", table, "--out", tmp_path / "m.pt", *TINY]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and f"names '{key}', which differs in upper and lower case" in err


def test_a_shared_table_names_images_by_their_paths(data, tmp_path, capsys):
    rows = data["plain"].read_text().splitlines()
    images = []
    for plate in ("plate1", "plate2"):
        (tmp_path / plate).mkdir()
        images.append(tmp_path / plate / "x.tif")
        images[-1].write_bytes(data["image"].read_bytes())
    shared = tmp_path / "shared.csv"
    lines = ["image," + rows[0]]
    lines += [f"plate1/x.tif,{r}" for r in rows[1:3]]  # relative: two boxes
    lines += [f"{images[1]},{r}" for r in rows[1:]]  # absolute: five boxes
    shared.write_text("\n".join(lines) + "\n")
    loaded = boxes_for([str(i) for i in images], [str(shared)], argparse.Namespace(axes=None))
    assert [len(planes[0][1]) for _, planes in loaded] == [2, 5]


def test_bad_images_are_explained(tmp_path, data, capsys):
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((64, 80), 7, np.uint16))
    code, _, err = _run(
        capsys, "train", flat, "--boxes", data["plain"], "--out", tmp_path / "m.pt", *TINY
    )
    assert code == 2 and "constant" in err
    nan = tmp_path / "nan.tif"
    arr = np.ones((64, 80), np.float32)
    arr[5, 5] = np.nan
    tifffile.imwrite(nan, arr)
    code, _, err = _run(
        capsys, "train", nan, "--boxes", data["plain"], "--out", tmp_path / "m.pt", *TINY
    )
    assert code == 2 and "NaN" in err
    outside = tmp_path / "outside.csv"
    outside.write_text("y0,x0,y1,x1\n500,500,520,530\n")
    code, _, err = _run(
        capsys, "supervise", data["image"], "--boxes", outside, "--out", tmp_path / "s.tif"
    )
    assert code == 2 and "outside" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("y0,x0,y1,x1\n")
    code, _, err = _run(
        capsys, "supervise", data["image"], "--boxes", empty, "--out", tmp_path / "s.tif"
    )
    assert code == 2 and "box" in err.lower()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        # cells at x 66-78 of the 64 x 80 image, written x first: past its 64 rows
        (["66,10,76,20", "68,40,78,50", "5,30,15,40"], "all would lie on it with x and y swapped"),
        # the table of a larger image: most boxes beyond this one
        (["100,100,120,120", "200,300,230,330", "10,10,30,30"], "made for another image"),
    ],
)
def test_a_table_that_does_not_fit_the_image_is_refused(data, tmp_path, capsys, rows, message):
    table = tmp_path / "t.csv"
    table.write_text("y0,x0,y1,x1\n" + "\n".join(rows) + "\n")
    out = tmp_path / "s.tif"
    code, _, err = _run(capsys, "supervise", data["image"], "--boxes", table, "--out", out)
    assert code == 2 and message in err and "2 of 3 boxes lie outside" in err
    assert not out.exists()


def test_one_box_drawn_off_the_image_is_left_out(data, tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text(data["plain"].read_text() + "500,500,520,530\n")
    out = tmp_path / "s.tif"
    code, stdout, err = _run(capsys, "supervise", data["image"], "--boxes", table, "--out", out)
    assert code == 0 and "5 boxes" in stdout and "1 of 6 boxes lie outside" in err


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((name, a) for a in sub._actions)


def test_every_option_is_explained_with_its_default(capsys):
    from napari_mutualseg.cli import build_parser
    from napari_mutualseg.config import DEVICE_SIZES, TrainConfig

    parser = build_parser()
    unexplained = [(cmd, a.dest) for cmd, a in _actions(parser) if a.dest != "help" and not a.help]
    assert unexplained == []
    helps = {(cmd, a.dest): a.help for cmd, a in _actions(parser)}
    assert f"default: {TrainConfig.rounds}" in helps["train", "rounds"]
    assert "default: 4" in helps["demo", "rounds"]
    steps = DEVICE_SIZES["gpu"]["steps_per_round"], DEVICE_SIZES["cpu"]["steps_per_round"]
    assert "{} on a GPU, {} on the CPU".format(*steps) in helps["train", "steps"]
    # demo has no --resume
    assert "resumed" in helps["train", "lr"] and "resumed" not in helps["demo", "lr"]
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "(default: 512)" in " ".join(capsys.readouterr().out.split())


def test_every_command_names_its_arguments_alike():
    """Usage lines mixed 'model INPUT', 'image' and 'IMAGE', 'pred gt'."""
    from napari_mutualseg.cli import build_parser

    named = {(cmd, a.metavar) for cmd, a in _actions(build_parser()) if not a.option_strings}
    assert all(m is not None and m.isupper() for _, m in named), named
    assert ("evaluate", "TRUTH") in named and ("predict", "MODEL") in named


def test_every_command_says_what_it_does_with_examples_that_parse():
    """A command's help listed its options only: no word of what it does, no example."""
    import shlex

    from napari_mutualseg.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.choices.items():
        assert command.description, name
        examples = [
            line.split("#")[0]
            for line in command.epilog.splitlines()
            if line.lstrip().startswith("napari-mutualseg")
        ]
        said = [shlex.split(e)[1:] for e in examples]
        assert any(argv[0] == name for argv in said), name
        for argv in said:
            assert parser.parse_args(argv).command == argv[0]  # a mistake exits


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "x.tif", "--out", "m.pt"], "arguments are required: --boxes (see "),
        (["predict", "m.pt", "x.tif", "--out", "p", "--chanel", "0"], "did you mean --channel?"),
        (["predict", "m.pt", "x.tif", "--out", "p", "--tilesize=256"], "mean --tile-size?"),
        # another command's option was told as a misspelling of an unrelated one ('--rounds:
        # did you mean --out?', '--channel: did you mean --help?')
        (
            ["predict", "m.pt", "x.tif", "--out", "p", "--rounds", "3"],
            "; --rounds is an option of train and demo, not of predict (see",
        ),
        (
            ["supervise", "x.tif", "--boxes", "b.csv", "--out", "s.tif", "--channel", "1"],
            "; --channel is an option of train and predict, not of supervise (see",
        ),
        (["info", "m.pt", "--out", "x"], "--out is an option of supervise, train, predict and"),
        (
            ["train", "--boxes", "a.csv", "a.tif", "--out", "m.pt"],
            "; --boxes took a.csv a.tif, as it takes every name up to the next option: put "
            "IMAGE before --boxes (see",
        ),
    ],
)
def test_a_mistake_in_the_options_is_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "usage" not in err


@pytest.mark.parametrize("command", ["train", "demo"])
def test_a_device_the_machine_lacks_is_told_before_any_work(data, tmp_path, capsys, command):
    inputs = [data["image"], "--boxes", data["plain"]] if command == "train" else []
    out = tmp_path / ("m.pt" if command == "train" else "demo")
    argv = [command, *inputs, "--out", out, *TINY, "--device", "gpu"]  # the last --device
    code, stdout, err = _run(capsys, *argv)
    # no image read nor the sample scored first: the mistake's one line
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert err.startswith("error: Unknown device 'gpu'; choose one of auto")


def test_predict_says_what_to_try_when_no_cell_is_found(data, tmp_path, capsys):
    import torch

    model = tmp_path / "m.pt"
    _run(capsys, "train", data["image"], "--boxes", data["plain"], "--out", model, *TINY)
    pair = ModelPair.load(model)
    for net in (pair.model_a, pair.model_b):  # every pixel background
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    blind = pair.save(tmp_path / "blind.pt")
    code, stdout, err = _run(capsys, "predict", blind, data["image"], "--out", tmp_path / "p")
    assert code == 0 and "0 cells" in stdout
    assert "no cells found in cells.tif: the networks may need more training" in err


def test_predict_refuses_mistakes_of_every_image_before_any_image(data, tmp_path, capsys):
    model = tmp_path / "m.pt"
    _run(capsys, "train", data["image"], "--boxes", data["plain"], "--out", model, *TINY)
    before = data["gt"].read_bytes()
    out = tmp_path / "p"
    argv = ["predict", model, data["image"], "--out", out]
    code, _, err = _run(capsys, *argv, "--disagreement-out", data["gt"], "--overwrite")
    assert code == 2 and f"Cannot write into {data['gt']}: it is a file, not a folder" in err
    assert data["gt"].read_bytes() == before
    code, _, err = _run(capsys, *argv, "--axes", "QYX")  # Q: no axis of any image
    assert code == 2 and err.startswith("error: Axes 'QYX' for the images: use each of")
    assert not (out / "cells_cells.tif").exists()


def test_output_closed_by_its_reader_stops_quietly(data):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "napari_mutualseg.cli", "evaluate", data["gt"], data["gt"]]
    # the reader is gone before anything is written, as with `... --json | head -1`
    proc = subprocess.Popen(
        [*map(str, argv), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_predict_says_which_options_had_nothing_to_act_on(data, tmp_path, capsys):
    # --track on planes, --rgb on a gray image and the like passed without a word
    model = _untrained_model(tmp_path / "m.pt")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([tifffile.imread(data["image"])] * 2), imagej=True,
                     metadata={"axes": "ZYX"})  # fmt: skip
    argv = ["predict", model, data["image"], stack, "--out", tmp_path / "p", "--workers", "0"]
    code, _, err = _run(capsys, *argv, "--track", "--no-link", "--rgb", "gray", "--halo", "8",
                        "--pixel-size", "2,0.65,0.65um")  # fmt: skip
    assert code == 0, err
    assert (
        "warning: --track did nothing for 2 images (cells.tif, ...): no time axis, so no frames "
        "to follow cells through; if the z-planes are time points, say so with --axes" in err
    )
    assert "warning: --no-link did nothing for cells.tif: no z-planes to keep apart." in err
    assert "warning: --pixel-size gave a z step, unused for cells.tif: no z axis" in err
    assert "warning: --halo did nothing for 2 images (cells.tif, ...): segmented whole" in err
    assert "warning: --rgb gray did nothing for 2 images (cells.tif, ...): not an RGB" in err
    # options that act are not told of
    code, _, err = _run(capsys, *argv[:2], stack, "--out", tmp_path / "q", "--no-link",
                        "--halo", "8", "--block-size", "32")  # fmt: skip
    assert code == 0 and "did nothing" not in err, err


def test_predict_stopped_by_a_signal_says_what_is_kept_and_how_to_go_on(
    data, tmp_path, capsys, monkeypatch
):
    # it said only that no file was left half written: not which images were done, nor that
    # the same command goes on from there
    import napari_mutualseg.batch as batch

    model = _untrained_model(tmp_path / "m.pt")
    segment = batch.process_image

    def stopped_at_the_second(pair, job, *args, **kwargs):
        if job.source.name == "other.tif":
            raise KeyboardInterrupt  # Ctrl-C
        return segment(pair, job, *args, **kwargs)

    monkeypatch.setattr(batch, "process_image", stopped_at_the_second)
    out = tmp_path / "p"
    argv = ["predict", model, data["image"], data["other"], "--out", out, "--workers", "0"]
    code, _, err = _run(capsys, *argv)
    assert code == 130
    assert (
        f"interrupted (SIGINT): 1 of 2 images are segmented and kept ({out / 'run_report.csv'} "
        "lists them); the same command again segments the other 1, skipping those." in err
    )
    monkeypatch.setattr(batch, "process_image", segment)
    code, stdout, _ = _run(capsys, *argv)
    said = r"1 segmented in this process on cpu \(\d+ threads\), 1 skipped"
    assert code == 0 and re.search(said, stdout)
    # with --overwrite the same command skips nothing: it was told it would skip
    monkeypatch.setattr(batch, "process_image", stopped_at_the_second)
    code, _, err = _run(capsys, *argv, "--overwrite")
    assert code == 130 and "the same command again segments all 2 images again." in err


def test_predict_stopped_by_a_full_disk_says_what_is_kept_and_how_to_go_on(
    data, tmp_path, capsys, monkeypatch
):
    # it said to free some space, not that the images done are kept and a rerun goes on
    import errno

    import napari_mutualseg.image_task as image_task
    from napari_mutualseg.files import OutputError

    model = _untrained_model(tmp_path / "m.pt")
    write_table = image_task.write_table

    def full_at_the_second(path, *args, **kwargs):
        if path.name.startswith("other"):
            raise OutputError(errno.ENOSPC, f"Not enough space to write {path}; free some space.")
        return write_table(path, *args, **kwargs)

    monkeypatch.setattr(image_task, "write_table", full_at_the_second)
    out = tmp_path / "p"
    argv = ["predict", model, data["image"], data["other"], "--out", out, "--workers", "0"]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert (
        f"free some space. 1 of 2 images are segmented and kept ({out / 'run_report.csv'} lists "
        "them); the same command again segments the other 1, skipping those." in err
    )


def test_predict_stops_gently_on_the_first_signal(data, tmp_path, capsys, monkeypatch):
    """A signal stopped predict at once, wherever it was: an image whose labels were written
    but not yet its table was left on the disk unreported."""
    import os

    import napari_mutualseg.batch as batch

    model = _untrained_model(tmp_path / "m.pt")
    segment = batch.process_image

    def signalled_at_the_second(pair, job, *args, **kwargs):
        if job.source.name == "other.tif":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while it is being segmented
        return segment(pair, job, *args, **kwargs)

    monkeypatch.setattr(batch, "process_image", signalled_at_the_second)
    out = tmp_path / "p"
    argv = ["predict", model, data["image"], data["other"], "--out", out, "--workers", "0"]
    code, stdout, err = _run(capsys, *argv)
    assert code == 130 and "SIGINT: stopping; the images done are kept" in err
    written = [line.split()[1] for line in stdout.splitlines() if line.startswith("Wrote ")]
    assert sorted(str(p) for p in out.glob("*_cells.tif")) == sorted(written)
    assert "images are segmented and kept" in err


def test_a_mistyped_path_is_told_with_the_names_close_to_it(data, tmp_path, capsys):
    # a typo was told as 'not found' alone, the user left to find the file's name
    model = tmp_path / "m.pt"
    model.write_bytes(b"")
    train = ["train", "--out", tmp_path / "n.pt"]
    cases = [
        ([*train, tmp_path / "cels.tif", "--boxes", data["plain"]], "Image file not found: "
         f"{tmp_path / 'cels.tif'} (did you mean {data['image']}?)."),
        ([*train, data["image"], "--boxes", tmp_path / "BOXES.csv"], "Box table not found: "
         f"{tmp_path / 'BOXES.csv'} (did you mean {data['plain']}?)."),
        ([*train, data["image"], "--boxes", data["plain"], "--resume", tmp_path / "m2.pt"],
         "Model file not found: "),
        (["predict", tmp_path / "m2.pt", data["image"], "--out", tmp_path / "p"],
         f"(did you mean {model}?)."),
        (["predict", model, tmp_path / "plate" / "a.tif", "--out", tmp_path / "p"],
         f"Input not found: {tmp_path / 'plate' / 'a.tif'} (there is no folder "
         f"{tmp_path / 'plate'})."),
        (["info", tmp_path / "m2.pt"], f"Model file not found: {tmp_path / 'm2.pt'} (did you "
         f"mean {model}?)."),
        (["info", tmp_path / "cels.tif"], f"(did you mean {data['image']}?)."),
        (["evaluate", tmp_path / "cels.tif", data["gt"]], "Label image not found: "
         f"{tmp_path / 'cels.tif'} (did you mean {data['image']}?)."),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and message in err, err


def _ctrl_c_after_the_first_round(monkeypatch):
    """Training commands get a Ctrl-C as their first round is reported; undone by calling
    the function returned."""
    import os

    from napari_mutualseg.cli import train

    rounds = train.run_rounds

    def ctrl_c_after_a_round(trainer, on_round):
        def then_stop(report):
            on_round(report)
            os.kill(os.getpid(), signal.SIGINT)

        return rounds(trainer, then_stop)

    monkeypatch.setattr(train, "run_rounds", ctrl_c_after_a_round)
    return lambda: monkeypatch.setattr(train, "run_rounds", rounds)


def test_train_stopped_by_a_signal_says_how_to_go_on(data, tmp_path, capsys, monkeypatch):
    # it said where the networks were, not that --resume trains them on from there; then it
    # said '--resume m.pt', with which the same command refused to replace m.pt and, given
    # --overwrite, trained all the rounds again
    undo = _ctrl_c_after_the_first_round(monkeypatch)
    model = tmp_path / "m.pt"
    argv = ["train", data["image"], "--boxes", data["plain"], "--out", model, *TINY]
    code, stdout, err = _run(capsys, *argv, "--rounds", "3")
    assert code == 130 and "round 1/3" in stdout and "round 2/3" not in stdout
    assert "\n\n" not in err  # no empty lines in a log file, where no bar was cut short
    assert (
        f"interrupted (SIGINT): the networks of round 1 are in {model}; the same command with "
        f"--resume {model} --overwrite --rounds 2 trains the 2 rounds left from there." in err
    )
    assert ModelPair.load(model).history
    undo()
    code, stdout, err = _run(capsys, *argv, "--resume", model, "--overwrite", "--rounds", "2")
    assert code == 0 and "round 3/3" in stdout and "round 4/" not in stdout, err


def test_demo_stopped_by_a_signal_keeps_the_rounds_done(tmp_path, capsys, monkeypatch):
    # it kept nothing of them, where train keeps the last completed round
    from napari_mutualseg import sample

    image, gt, boxes = synthetic_scene((64, 80), 5, seed=2)
    tiny = sample.Sample("tiny", (image * 1000).astype(np.uint16), np.asarray(boxes), gt)
    monkeypatch.setattr(sample, "load_sample", lambda: tiny)
    _ctrl_c_after_the_first_round(monkeypatch)
    out = tmp_path / "demo"
    code, stdout, err = _run(capsys, "demo", "--out", out, *TINY, "--rounds", "3")
    assert code == 130 and "round 1/3" in stdout and "round 2/3" not in stdout
    assert (
        f"interrupted (SIGINT): the overlay, scores and model of round 1 of 3 are in {out}." in err
    )
    assert len(json.loads((out / "metrics.json").read_text())["rounds"]) == 1
    assert ModelPair.load(out / "model.pt").history


def test_a_log_file_gets_one_line_per_step_not_progress_bars(data, tmp_path, capsys):
    """Output to a file (a cluster job's log) held the progress bars' redraws, each behind a
    carriage return, and no image's time nor how far the run was."""
    model = tmp_path / "m.pt"
    argv = ["train", data["image"], "--boxes", data["plain"], "--out", model, *TINY]
    code, stdout, err = _run(capsys, *argv)
    assert code == 0 and "\r" not in stdout + err, err
    images = [data["image"], data["other"]]
    argv = ["predict", model, *images, "--out", tmp_path / "p", "--workers", "0"]
    code, stdout, err = _run(capsys, *argv)
    assert code == 0 and "\r" not in stdout + err, err
    wrote = r"Wrote \S+other_cells.tif \(\d+ cells, 64 x 80, axes YX, \d+\.\d s\) \[2/2\]\n"
    assert re.search(wrote, stdout), stdout


def test_a_log_file_gets_each_line_when_it_is_printed(data, tmp_path, capsys, monkeypatch):
    """Redirected to a file, stdout was written in blocks: a cluster job's rounds came at its
    end (none if it was killed), after the lines on stderr."""
    import io
    import sys

    from napari_mutualseg.cli import train

    log = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(log))  # as a file is opened
    rounds, seen = train.run_rounds, []

    def look_after_each_round(trainer, on_round):
        def then_look(report):
            on_round(report)
            seen.append(log.getvalue().decode())

        return rounds(trainer, then_look)

    monkeypatch.setattr(train, "run_rounds", look_after_each_round)
    argv = ["train", data["image"], "--boxes", data["plain"], "--out", tmp_path / "m.pt", *TINY]
    assert main([str(a) for a in argv]) == 0
    assert seen and "round 1/1" in seen[0]


def test_predict_says_it_is_finding_the_images_when_that_takes_a_while(
    data, tmp_path, capsys, monkeypatch
):
    """A screen of 10,000 files was searched and checked for 18 s before the first word."""
    import threading
    import time

    import napari_mutualseg.batch as batch
    from napari_mutualseg.cli import predict

    model = _untrained_model(tmp_path / "m.pt")
    argv = ["predict", model, data["image"], "--workers", "0", "--out"]
    said = f"Finding the images in {data['image']} and checking them before any is segmented"
    # quick, on a loaded machine too: nothing more to say
    monkeypatch.setattr(predict, "_PREPARING_SECONDS", 60.0)
    code, _, err = _run(capsys, *argv, tmp_path / "p")
    assert code == 0 and said not in err
    run = batch.BatchRun

    def slow(*args, **kwargs):
        # finding the images outlasts the note's delay: it has been said before they are found
        end = time.monotonic() + 60
        while time.monotonic() < end and any(
            isinstance(t, threading.Timer) and t.is_alive() for t in threading.enumerate()
        ):
            time.sleep(0.01)
        return run(*args, **kwargs)

    monkeypatch.setattr(batch, "BatchRun", slow)
    monkeypatch.setattr(predict, "_PREPARING_SECONDS", 0.0)
    code, _, err = _run(capsys, *argv, tmp_path / "q")
    assert code == 0 and err.startswith(said)


def test_predict_says_where_it_segments_before_the_first_image(
    data, tmp_path, capsys, monkeypatch
):
    """A long run's log told GPU or CPU only in its last line."""
    import napari_mutualseg.batch as batch

    segment = batch.process_image

    def said_first(*args, **kwargs):
        print("an image starts", file=sys.stderr)
        return segment(*args, **kwargs)

    monkeypatch.setattr(batch, "process_image", said_first)
    model = _untrained_model(tmp_path / "m.pt")
    argv = ["predict", model, data["image"], "--workers", "0", "--out", tmp_path / "p"]
    code, _, err = _run(capsys, *argv)
    assert code == 0
    assert re.search(r"Segmenting in this process on cpu \(\d+ threads\)\.\.\.\nan image", err)


def test_predict_stopped_tells_failed_images_from_those_not_done(
    data, tmp_path, capsys, monkeypatch
):
    """A stop after the last image said 'the same command again segments the other 4' of 4
    images that had failed (a damaged file fails again)."""
    import napari_mutualseg.batch as batch

    model = _untrained_model(tmp_path / "m.pt")
    (tmp_path / "bad.tif").write_bytes(b"not an image")
    segment = batch.process_image

    def stopped_at_other(pair, job, *args, **kwargs):
        if job.source.name == "other.tif":
            raise KeyboardInterrupt
        return segment(pair, job, *args, **kwargs)

    monkeypatch.setattr(batch, "process_image", stopped_at_other)
    out = tmp_path / "p"
    images = [tmp_path / "bad.tif", data["image"], data["other"]]
    code, _, err = _run(capsys, "predict", model, *images, "--out", out, "--workers", "0")
    assert code == 130
    assert (
        f"1 of 3 images are segmented and kept, 1 failed ({out / 'run_report.csv'} lists them, "
        "and why those failed); the same command again segments the other 1 and tries the "
        "failed ones again, skipping those." in err
    )


def test_output_paths_resolve_each_folder_once_with_the_same_keys(tmp_path, monkeypatch):
    """Where the results of 10,000 images go took 4 s: every folder of every input and
    output was resolved again (a system call each, more on a network disk)."""
    import os

    from napari_mutualseg import io
    from napari_mutualseg.files import same_file_key, same_file_keys

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.tif").touch()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "y.tif").symlink_to(tmp_path / "real" / "x.tif")
    tricky = [
        tmp_path / "linked" / "x.tif",
        tmp_path / "real" / "y.tif",
        tmp_path / "linked" / ".." / "real" / "X.TIF",
        tmp_path / "missing" / "z.tif",
        "x.tif",
    ]
    assert same_file_keys(tricky) == [same_file_key(p) for p in tricky]
    resolved = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **k: resolved.append(p) or realpath(p, **k))
    images = [tmp_path / f"well{k % 4}" / f"f{k}.tif" for k in range(400)]
    io.output_paths(images, tmp_path / "out")
    assert len(resolved) <= 8  # the 4 folders of the images and of their results
