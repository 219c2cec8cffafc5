"""Whole experiments: folders of images, failures recorded, reruns that skip finished work,
measurements beside the labels, and the same run on a real dask cluster."""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import dask
import numpy as np
import pytest
import tifffile

from helpers import ThresholdNet
from napari_mutualseg import cluster
from napari_mutualseg.batch import (
    REPORT_NAME,
    SUMMARY_NAME,
    BatchOptions,
    BatchRun,
    find_images,
    measure_image,
    read_table,
)
from napari_mutualseg.cli import main
from napari_mutualseg.cluster import check_scheduler
from napari_mutualseg.files import ResultExistsError
from napari_mutualseg.image_task import process_image
from napari_mutualseg.images import AxisImage
from napari_mutualseg.io import write_labels, written_as
from napari_mutualseg.jobs import plan_jobs
from napari_mutualseg.models import ModelPair, build_unet
from napari_mutualseg.ome import PixelSize
from napari_mutualseg.synthetic import synthetic_scene

OPTIONS = BatchOptions(tile_size=64, overlap=16)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    folder = tmp_path_factory.mktemp("model")
    return ModelPair(build_unet(arch, 0), build_unet(arch, 1)).save(folder / "pair.pt")


def _image(path: Path, seed: int, shape=(48, 56)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image, _, _ = synthetic_scene(shape, 5, seed=seed)
    tifffile.imwrite(path, (image * 1000).astype(np.uint16))
    return path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_with_a_corrupt_file_and_same_named_files(model, tmp_path, capsys):
    plate = tmp_path / "plate"
    _image(plate / "a" / "x.tif", 1)
    _image(plate / "b" / "x.tif", 2, shape=(40, 64))
    _image(plate / "s.v1.tif", 3)
    _image(plate / "s.v2.tif", 4)
    (plate / "broken.tif").write_bytes(b"II*\0 not really a tiff")
    (plate / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = [
        "predict",
        model,
        plate,
        "--out",
        out,
        "--tile-size",
        "64",
        "--overlap",
        "16",
        "--device",
        "cpu",
    ]
    assert main([str(a) for a in args]) == 1  # something failed
    captured = capsys.readouterr()
    assert "failed: broken.tif" in captured.err
    # each image is named by its folder too: both are x.tif
    assert "a/x.tif: 48 x 56 px" in captured.err and "b/x.tif: 40 x 64 px" in captured.err
    assert re.search(
        r"5 images: 4 segmented in this process on cpu \(\d+ threads\), 1 failed", captured.out
    )
    # one result per input, in the inputs' folders: nothing replaced another
    shapes = {
        name: tifffile.imread(out / name).shape
        for name in ("a/x_cells.tif", "b/x_cells.tif", "s.v1_cells.tif", "s.v2_cells.tif")
    }
    assert shapes["a/x_cells.tif"] == (48, 56) and shapes["b/x_cells.tif"] == (40, 64)
    report = {row["image"]: row for row in _rows(out / REPORT_NAME)}
    assert report["broken.tif"]["status"] == "failed" and report["broken.tif"]["reason"]
    assert {report[n]["status"] for n in ("a/x.tif", "b/x.tif", "s.v1.tif", "s.v2.tif")} == {
        "done"
    }
    # every image's table has a row per cell, and the summary a row per image
    summary = {row["image"]: row for row in _rows(out / SUMMARY_NAME)}
    assert set(summary) == {"a/x.tif", "b/x.tif", "s.v1.tif", "s.v2.tif"}
    for name, row in summary.items():
        table = read_table(out / name.replace(".tif", "_cells.csv"))
        labels = tifffile.imread(out / name.replace(".tif", "_cells.tif"))
        assert int(row["cells"]) == len(table["label"]) == len(np.unique(labels)) - 1
        assert int(report[name]["cells"]) == int(row["cells"])
    # a rerun skips what is complete and tries the failed image again
    assert main([str(a) for a in args]) == 1
    assert "4 skipped (complete from an earlier run), 1 failed" in capsys.readouterr().out


def test_inputs_are_files_folders_and_patterns_but_never_the_results(model, tmp_path):
    first = _image(tmp_path / "in" / "one.tif", 1)
    second = _image(tmp_path / "in" / "deep" / "two.tif", 2)
    (tmp_path / "in" / ".hidden.tif").write_bytes(b"")
    assert find_images([tmp_path / "in"]) == [second, first]
    pattern = str(tmp_path / "in" / "**" / "*.tif")
    assert find_images([pattern, first]) == [second, first]  # each image once
    # results written into the input folder are not taken for inputs the next time
    list(BatchRun(model, [tmp_path / "in"], tmp_path / "in", OPTIONS, workers=0))
    assert (tmp_path / "in" / "one_cells.tif").exists()
    assert find_images([tmp_path / "in"]) == [second, first]
    # nor is a supervision saved among the images (by supervise --out, or from napari), or
    # labels moved away from their record; named on its own, a file is taken as it is
    supervision = write_labels(
        tmp_path / "in" / "one_boxes.tif", np.ones((8, 8), np.uint8), kind="supervision"
    )
    moved = write_labels(tmp_path / "in" / "deep" / "old.tif", np.ones((8, 8), np.int32))
    assert find_images([tmp_path / "in"]) == [second, first]
    assert find_images([supervision, moved]) == [supervision, moved]
    with pytest.raises(FileNotFoundError, match="not found"):
        find_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        find_images([tmp_path / "empty"])


def _mask(path: Path, seed: int, shape=(48, 56)) -> Path:
    """Another tool's label image (a data set's ground truth) of ``_image``'s scene."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, synthetic_scene(shape, 5, seed=seed)[1].astype(np.uint16))
    return path


def test_looking_for_masks_in_a_damaged_tiff_logs_nothing(tmp_path, caplog):
    """tifffile logs a line per damaged strip: the search repeated them before the image's
    own one-line failure."""
    import struct

    from napari_mutualseg.jobs import find_images

    path = tmp_path / "in" / "damaged.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["ImageLength"]
        fmt = "<H" if tag.dtype == 3 else "<I"
        data[tag.valueoffset : tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, 4096)
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        assert find_images([path.parent]) == [path]
    assert not [r for r in caplog.records if r.name == "tifffile"]


def test_a_folder_search_and_reading_open_each_tiff_once(tmp_path, monkeypatch):
    """The search opened each TIFF twice (for this package's label files, then for other
    tools' masks) and reading it twice again (its header checked, then read): a plate of
    thousands of files on a network share pays for each opening."""
    images = [_image(tmp_path / "in" / f"w{k}.tif", k, shape=(32, 32)) for k in range(2)]
    mask = _mask(tmp_path / "in" / "m.tif", 0, shape=(32, 32))
    kept = write_labels(tmp_path / "in" / "s.tif", np.ones((8, 8), np.uint8), kind="supervision")
    opened = []

    class Counted(tifffile.TiffFile):
        def __init__(self, arg, *args, **kwargs):
            opened.append(Path(arg).name)
            super().__init__(arg, *args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", Counted)
    with pytest.warns(UserWarning, match="Left out 1 label image"):
        assert find_images([tmp_path / "in"]) == images
    assert sorted(opened) == sorted(p.name for p in [*images, mask, kept])
    opened.clear()
    AxisImage.from_file(images[0])
    assert opened == [images[0].name]


def test_a_plate_of_images_and_masks_folders_segments_the_images_and_says_so(tmp_path):
    """BBBC039's layout: images/ and masks/ side by side. The masks were segmented too."""
    images = [_image(tmp_path / "set" / "images" / f"w{k}.tif", k) for k in range(2)]
    masks = [_mask(tmp_path / "set" / "masks" / f"w{k}.tif", k) for k in range(2)]
    binary = tmp_path / "set" / "masks" / "all.png"
    iio = pytest.importorskip("imageio.v3")
    iio.imwrite(binary, ((tifffile.imread(masks[0]) > 0) * 255).astype(np.uint8))
    where = re.escape(f"found in {tmp_path / 'set' / 'masks'} (3)")
    with pytest.warns(UserWarning, match=f"Left out 3 label images or masks {where}"):
        assert find_images([tmp_path / "set"]) == images
    pattern = str(tmp_path / "set" / "*" / "*.tif")  # a file found twice is counted once
    with pytest.warns(UserWarning, match="Left out 3 label images"):
        assert find_images([pattern, tmp_path / "set" / "masks"]) == images
    # named on its own, a file is segmented as it is, with a word
    with pytest.warns(UserWarning, match=r"w1\.tif looks like a label image"):
        assert find_images([masks[1]]) == [masks[1]]
    with pytest.raises(ValueError, match=r"only label images or masks \(3 in .*masks \(3\)"):
        find_images([tmp_path / "set" / "masks"])


def test_a_folder_of_results_alone_is_told_for_what_it_is(model, tmp_path):
    """It said "give folders holding ... tif files" of a folder full of tif files."""
    images = [_image(tmp_path / "in" / f"w{k}.tif", k, shape=(32, 32)) for k in range(2)]
    list(BatchRun(model, images, tmp_path / "out", OPTIONS, workers=0))
    with pytest.raises(ValueError, match="only napari-mutualseg results") as caught:
        find_images([tmp_path / "out"])
    assert "w0_cells.tif and 1 more" in str(caught.value) and "images" in str(caught.value)


def test_a_killed_run_keeps_finished_images_and_a_rerun_does_the_rest(model, tmp_path):
    images = [_image(tmp_path / "in" / f"i{k}.tif", k, shape=(256, 256)) for k in range(12)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "napari_mutualseg.cli", "predict", str(model)]
    command += [str(p) for p in images] + ["--out", str(out), "--device", "cpu", "--workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "i1_cells.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(p.name for p in out.glob("*_cells.csv"))
    assert finished and len(finished) < 12, "kill landed too late to test anything"
    # nothing half-written: every file there reads (a temporary one would have a hidden name)
    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert all(p.suffix in (".tif", ".csv", ".json") for p in visible), visible
    for table in out.glob("*_cells.csv"):
        tifffile.imread(table.with_name(table.name.replace(".csv", ".tif")))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    skipped = len(finished)
    assert f"{12 - skipped} segmented" in result.stdout and f"{skipped} skipped" in result.stdout
    assert len(_rows(out / SUMMARY_NAME)) == 12


def test_a_run_iterated_again_reports_each_image_once(model, tmp_path):
    """The second pass (a notebook's cell run again) added its results to the first's: each
    image twice in summary.csv, and its well's images and cells counted twice."""
    run = BatchRun(model, [_image(tmp_path / "A01_f1.tif", 0, (32, 32))], tmp_path / "out",
                   OPTIONS, workers=0)  # fmt: skip
    assert [r.status for r in run] == ["done"]
    assert [r.status for r in run] == ["skipped"]
    assert [r.status for r in run.results] == ["skipped"]
    assert [row["image"] for row in _rows(tmp_path / "out" / SUMMARY_NAME)] == ["A01_f1.tif"]
    assert run.well_rows[0]["images"] == 1


def test_a_run_resumed_on_the_plate_moved_elsewhere_skips_what_is_done(model, tmp_path):
    """Copied from the microscope's computer to a server (times kept), the plate was another
    image to the records: the rerun was refused, all results to be made again."""
    import shutil

    images = [_image(tmp_path / "scope" / "A01" / f"f{k}.tif", k, (32, 32)) for k in range(2)]
    run = list(BatchRun(model, [tmp_path / "scope"], tmp_path / "o", OPTIONS, workers=0))
    assert [r.status for r in run] == ["done", "done"]
    (tmp_path / "o" / "A01" / "f1_cells.csv").unlink()  # stopped before its table
    # the plate moved, and the run is resumed there
    shutil.copytree(tmp_path / "scope", tmp_path / "server", copy_function=shutil.copy2)
    again = BatchRun(model, [tmp_path / "server"], tmp_path / "o", OPTIONS, workers=0)
    assert [r.status for r in again] == ["skipped", "done"]
    # another image in its place is not taken for it, of the same size and time as well (two
    # plates extracted from archives, which keep times to the second)
    other = tmp_path / "server" / "A01" / "f0.tif"
    tifffile.imwrite(other, tifffile.imread(images[1]))
    before = images[0].stat()
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert other.stat().st_size == before.st_size
    with pytest.raises(ResultExistsError, match=r"f0_cells\.tif was made from .*scope"):
        BatchRun(model, [tmp_path / "server"], tmp_path / "o", OPTIONS, workers=0)


def test_labels_left_without_their_disagreement_maps_get_them_when_run_again(model, tmp_path):
    """Stopped between the labels and the maps, the image was reported done without maps,
    and failed at every later run ('f0_cells.csv already exists')."""
    images = [_image(tmp_path / "in" / f"f{k}.tif", k, (32, 32)) for k in range(2)]
    options = BatchOptions(tile_size=64, overlap=16, disagreement=True)

    def run(maps: str) -> list[str]:
        batch = BatchRun(model, images, tmp_path / "out", options, workers=0,
                         disagreement_dir=tmp_path / maps)  # fmt: skip
        return [r.status for r in batch]

    assert run("maps") == ["done", "done"]
    (tmp_path / "maps" / "f0_disagreement.tif").unlink()
    (tmp_path / "maps" / "f0_disagreement.csv").unlink()
    (tmp_path / "out" / "f0_cells.csv").unlink()
    assert run("maps") == ["skipped", "done"]
    assert (tmp_path / "maps" / "f0_disagreement.tif").exists()
    assert run("maps") == ["skipped", "skipped"]
    assert run("other") == ["done", "done"]  # the maps asked into another folder
    assert len(list((tmp_path / "other").glob("*_disagreement.tif"))) == 2


def test_a_maps_folder_that_cannot_be_written_refuses_the_run_before_any_image(model, tmp_path):
    """Each image was segmented, then failed at its map ('Cannot write into ...'), a
    plate's worth of them."""
    image = _image(tmp_path / "in" / "f0.tif", 0, (32, 32))
    (tmp_path / "maps").write_text("a file where the maps' folder should be")
    options = BatchOptions(tile_size=64, overlap=16, disagreement=True)
    with pytest.raises(NotADirectoryError, match="maps: it is a file"):
        BatchRun(model, [image], tmp_path / "out", options, disagreement_dir=tmp_path / "maps")
    assert not (tmp_path / "out").exists()


def test_a_stack_in_a_run_with_disagreement_maps_gets_them_and_is_skipped_again(model, tmp_path):
    stack = tmp_path / "in" / "stack.tif"
    stack.parent.mkdir()
    planes = [synthetic_scene((32, 32), 3, seed=k)[0] for k in range(3)]
    tifffile.imwrite(
        stack, (np.stack(planes) * 1000).astype(np.uint16), imagej=True, metadata={"axes": "ZYX"}
    )
    plane = _image(tmp_path / "in" / "plane.tif", 0, (32, 32))
    options = BatchOptions(tile_size=64, overlap=16, disagreement=True)

    def run() -> dict[str, str]:
        batch = BatchRun(model, [stack, plane], tmp_path / "out", options, workers=0)
        return {r.job.name: r.status for r in batch}

    assert run() == {"stack.tif": "done", "plane.tif": "done"}
    with tifffile.TiffFile(tmp_path / "out" / "stack_disagreement.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == (3, 32, 32)
    header = (tmp_path / "out" / "stack_disagreement.csv").read_text().splitlines()[0]
    assert header.startswith("z,rank,kind,label")  # each cell to check with its plane
    assert run() == {"stack.tif": "skipped", "plane.tif": "skipped"}


def test_a_time_series_is_measured_frame_by_frame_in_every_channel():
    labels = np.zeros((2, 6, 8), np.int32)
    labels[0, 1:3, 1:3] = 1
    labels[1, 2:5, 4:8] = 1
    labels[1, 0:1, 0:2] = 2
    data = np.stack([labels * 10, labels + 1], axis=1).astype(np.uint16)  # (T, C, Y, X)
    image = AxisImage.from_array(data, "TCYX", channel_names=("dna", "actin"))
    table = measure_image(labels, image, None)
    assert table["t"].tolist() == [0, 1, 1]
    assert table["area_px"].tolist() == [4, 12, 2]
    assert table["mean_intensity_dna"].tolist() == [10, 10, 20]
    assert table["max_intensity_actin"].tolist() == [2, 2, 3]
    assert "time_s" not in table  # the file gave no frame interval


def test_a_time_series_with_a_frame_interval_has_its_time_in_seconds(tmp_path):
    from napari_mutualseg.image_task import results_pixel_size
    from napari_mutualseg.ome import PixelSize

    labels = np.zeros((3, 6, 8), np.int32)
    labels[:, 1:3, 1:3] = 1
    image = AxisImage.from_array(labels.astype(np.uint16), "TYX", pixel_size={"T": 30.0})
    table = measure_image(labels, image, None)
    assert list(table)[:2] == ["t", "time_s"] and table["time_s"].tolist() == [0, 30, 60]
    # --pixel-size gives y and x; the file's frame interval stays with the results
    assert results_pixel_size(PixelSize(0.5, 0.5), image).t == 30.0


def _predict(capsys, model, *argv) -> tuple[int, str]:
    code = main(
        [str(a) for a in ["predict", model, *argv, "--device", "cpu", "--tile-size", "64"]]
    )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_results_from_another_image_or_model_are_never_taken_for_this_one(model, tmp_path, capsys):
    _image(tmp_path / "p1" / "x.tif", 1)
    _image(tmp_path / "p2" / "x.tif", 2, shape=(40, 64))
    out = tmp_path / "out"
    assert _predict(capsys, model, tmp_path / "p1", "--out", out)[0] == 0
    first = (out / "x_cells.tif").read_bytes()
    # plate 2 has an image of the same name: refused before any work, plate 1's kept
    code, text = _predict(capsys, model, tmp_path / "p2", "--out", out)
    assert code == 2 and f"was made from {tmp_path / 'p1' / 'x.tif'}" in text
    assert (out / "x_cells.tif").read_bytes() == first
    # another model, or other options: refused too, and replaced only when asked
    other = tmp_path / "other.pt"
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    ModelPair(build_unet(arch, 5), build_unet(arch, 6)).save(other)
    code, text = _predict(capsys, other, tmp_path / "p1", "--out", out)
    assert code == 2 and "another model" in text
    assert "add --overwrite to replace these results" in text and "overwrite=True" not in text
    code, text = _predict(capsys, model, tmp_path / "p1", "--out", out, "--min-size", "3")
    assert code == 2 and "other options (min size default -> 3)" in text
    code, text = _predict(capsys, model, tmp_path / "p1", "--out", out, "--pixel-size", "0.5")
    assert code == 2 and "(pixel size default -> 0.5 x 0.5 micrometer)" in text
    code, text = _predict(capsys, other, tmp_path / "p1", "--out", out, "--overwrite")
    assert code == 0 and "1 segmented" in text
    # the same command again skips the image
    code, text = _predict(capsys, other, tmp_path / "p1", "--out", out)
    assert code == 0 and "1 skipped" in text


def test_an_image_without_cells_is_told_once_by_the_command(model, tmp_path, capsys):
    """The Python API warns of it (NoCellsWarning): not an image's note as well as the
    command's own warning at the end."""
    blank = tmp_path / "blank.tif"
    tifffile.imwrite(blank, np.random.default_rng(0).normal(100, 1, (48, 56)).astype(np.uint16))
    code, said = _predict(capsys, model, blank, "--out", tmp_path / "out", "--workers", "0")
    assert code == 0 and "(0 cells, 48 x 56, axes YX," in said
    assert said.lower().count("no cells found") == 1, said


def test_a_second_plate_adds_to_the_summary_of_the_first(model, tmp_path, capsys):
    _image(tmp_path / "p1" / "a.tif", 1)
    _image(tmp_path / "p2" / "b.tif", 2)
    out = tmp_path / "out"
    for plate in ("p1", "p2"):
        assert _predict(capsys, model, tmp_path / plate, "--out", out)[0] == 0
    assert [row["image"] for row in _rows(out / SUMMARY_NAME)] == ["b.tif", "a.tif"]
    assert [row["image"] for row in _rows(out / REPORT_NAME)] == ["b.tif"]  # this run's


def test_a_users_file_is_neither_taken_for_a_result_nor_replaced(model, tmp_path, capsys):
    folder = tmp_path / "same"
    _image(folder / "hela.tif", 1)
    _image(folder / "hela_cells.tif", 2)  # the user's image, not a result
    code, text = _predict(capsys, model, folder, "--out", folder)
    assert code == 2 and "would be written over the input" in text
    own = tmp_path / "analysis"
    own.mkdir()
    (own / SUMMARY_NAME).write_text("my precious results\n")
    code, text = _predict(capsys, model, folder / "hela.tif", "--out", own)
    assert code == 2 and "not a summary.csv of an earlier run" in text
    assert (own / SUMMARY_NAME).read_text() == "my precious results\n"


def test_named_files_and_maps_beside_the_inputs_are_taken_as_they_should(model, tmp_path, capsys):
    folder = tmp_path / "exp"
    _image(folder / "a.tif", 1)
    bracketed = _image(tmp_path / "Image [1].tif", 2)
    code, text = _predict(capsys, model, bracketed, "--out", tmp_path / "b")
    assert code == 0 and (tmp_path / "b" / "Image [1]_cells.tif").exists(), text
    maps = ["--out", folder / "res", "--disagreement-out", folder / "checks"]
    assert _predict(capsys, model, folder, *maps)[0] == 0
    code, text = _predict(capsys, model, folder, *maps)
    assert code == 0 and "1 skipped" in text  # the same command again
    maps_written = sorted((folder / "checks").glob("*.tif"))
    assert [written_as(p) for p in maps_written] == ["disagreement"]
    # results of earlier runs found in a searched folder are not images
    assert find_images([folder]) == [folder / "a.tif"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_same_run_on_a_separately_started_dask_cluster(model, tmp_path, monkeypatch):
    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(3)]
    monkeypatch.chdir(tmp_path)  # relative paths, and the worker runs in another folder
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    start = [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    scheduler = subprocess.Popen([*start, "--no-dashboard", "--no-show"], **quiet)
    join = [bin_dir / "dask", "worker", address, "--nthreads", "1", "--no-dashboard"]
    local = ["--local-directory", str(tmp_path / "worker")]
    (tmp_path / "worker").mkdir()
    worker = subprocess.Popen([*join, *local], cwd=tmp_path / "worker", **quiet)
    try:
        run = BatchRun(model, ["in"], "out", OPTIONS, scheduler=address)
        results = list(run)
        assert run.where == f"on the dask cluster at {address}"
        assert [r.status for r in results] == ["done"] * 3, [r.reason for r in results]
        assert all(r.worker.startswith("tcp://127.0.0.1") for r in results)
        # the result is the one this process computes
        here = BatchRun(model, images, tmp_path / "here", OPTIONS, workers=0)
        by_name = sorted(results, key=lambda r: r.job.name)
        assert [r.cells for r in here] == [r.cells for r in by_name]
        for k in range(3):
            np.testing.assert_array_equal(
                tifffile.imread(tmp_path / "out" / f"w{k}_cells.tif"),
                tifffile.imread(tmp_path / "here" / f"w{k}_cells.tif"),
            )
    finally:
        for process in (worker, scheduler):
            process.terminate()
            process.wait(timeout=30)


def _zarr_image(path: Path, seed: int) -> Path:
    """An OME-Zarr image (read lazily, as a dask array) of 0.5 µm pixels."""
    import zarr

    image, _, _ = synthetic_scene((48, 56), 5, seed=seed)
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=image.shape, chunks=(16, 16), dtype=np.uint16)[:] = (
        image * 1000
    ).astype(np.uint16)
    space = {"type": "space", "unit": "micrometer"}
    scale = [{"type": "scale", "scale": [0.5, 0.5]}]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "y", **space}, {"name": "x", **space}],
            "datasets": [{"path": "0", "coordinateTransformations": scale}],
        }
    ]
    return path


def test_an_ome_zarr_store_in_a_folder_is_one_image_with_its_pixel_size(model, tmp_path):
    _zarr_image(tmp_path / "in" / "well.ome.zarr", 3)
    _image(tmp_path / "in" / "plain.tif", 4)
    run = BatchRun(model, [tmp_path / "in"], tmp_path / "out", OPTIONS, workers=0)
    assert [r.status for r in run] == ["done", "done"]
    assert [j.name for j in run.jobs] == ["plain.tif", "well.ome.zarr"]
    table = read_table(tmp_path / "out" / "well_cells.csv")
    np.testing.assert_allclose(table["area_um2"], table["area_px"] * 0.25)


def test_the_pattern_over_an_ome_zarr_plates_fields_names_its_fields_only(tmp_path):
    """The pattern a plate's message suggests (plate.zarr/*/*/*) matched each well's
    zarr.json too: one failed image per well ('unsupported file type .json')."""
    import zarr

    plate = tmp_path / "plate.zarr"
    fields = [_zarr_image(plate / "B" / "3" / field, k) for k, field in enumerate("01")]
    zarr.open_group(str(plate / "B" / "3"), mode="a")  # the well's metadata: zarr.json
    assert find_images([plate / "*" / "*" / "*"]) == fields
    # the shell's expansion of the same pattern, unquoted
    assert find_images(sorted((plate / "B" / "3").iterdir())) == fields


def test_a_z_stacks_labels_and_volumes_keep_its_z_step_in_the_unit_given(tmp_path):
    stack = np.zeros((4, 32, 32), np.uint16)
    stack[1:3, 8:16, 8:16] = 1000  # one cell: 2 planes of 8 x 8 pixels
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path,
        stack,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2},
    )
    pair = ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})
    options = BatchOptions(tile_size=64, overlap=16, pixel_size=PixelSize.parse("500nm"))
    [job] = plan_jobs([path], tmp_path / "out", options)
    result = process_image(pair, job, options)
    assert result.status == "done", result.reason
    with tifffile.TiffFile(job.labels) as tif:  # a stack for Fiji and Bio-Formats, not channels
        assert tif.series[0].axes == "ZYX"
        assert 'PhysicalSizeZ="2000' in tif.ome_metadata
    [row] = _rows(job.table)
    assert float(row["volume_nm3"]) == pytest.approx(128 * 500 * 500 * 2000)  # z in nm too
    assert float(row["centroid_z_nm"]) == pytest.approx(1.5 * 2000)


def test_a_tracked_time_series_counts_its_cells_once_however_many_frames(tmp_path):
    # the first run counted a row per cell and frame (114 for 19 cells in 6 frames), a rerun
    # the summary's 19
    movie = np.random.default_rng(0).integers(0, 200, (3, 32, 32)).astype(np.uint16)
    movie[:, 8:16, 8:16] += 1000  # one cell, still, in every frame
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(path, movie, metadata={"axes": "TYX"})
    pair = ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})
    options = BatchOptions(tile_size=64, overlap=16, track=True)
    [job] = plan_jobs([path], tmp_path / "out", options)
    result = process_image(pair, job, options)
    assert result.cells == result.summary["cells"] == 1
    [again] = BatchRun(pair, [path], tmp_path / "out", options, workers=0)
    assert again.status == "skipped" and again.cells == 1
    # untracked, each frame numbers its cells anew: every frame's cell is counted (a count
    # of its labels took 6 cells, none the same from frame to frame, for 3)
    untracked = BatchOptions(tile_size=64, overlap=16, track=False)
    [result] = BatchRun(pair, [path], tmp_path / "apart", untracked, workers=0)
    [again] = BatchRun(pair, [path], tmp_path / "apart", untracked, workers=0)
    assert result.cells == again.cells == 3 and again.status == "skipped"


def test_one_image_that_does_not_fit_the_model_fails_alone_also_when_run_again(
    model, tmp_path, capsys
):
    plate = tmp_path / "plate"
    plate.mkdir()
    two = np.stack([synthetic_scene((48, 56), 5, seed=7)[0]] * 2)
    tifffile.imwrite(
        plate / "a_overview.ome.tif", (two * 1000).astype(np.uint16), metadata={"axes": "CYX"}
    )
    for k in range(2):
        _image(plate / f"field{k}.tif", k)
    out = tmp_path / "out"
    argv = ["predict", model, plate, "--out", out, "--workers", "0", "--tile-size", "64"]
    assert main([str(a) for a in argv]) == 1  # the overview failed, the fields are done
    assert (out / "field1_cells.csv").exists()
    (out / "field1_cells.csv").unlink()  # as if stopped before the last field was finished
    assert main([str(a) for a in argv]) == 1  # the overview, to do again, refuses no run
    assert (out / "field1_cells.csv").exists()
    report = {r["image"]: r for r in _rows(out / REPORT_NAME)}
    assert report["a_overview.ome.tif"]["status"] == "failed"
    assert "2 channels" in report["a_overview.ome.tif"]["reason"]
    # nothing of it was written, so nothing stands in the way of trying it with other options
    # (its record was left, 'out/a_overview_cells.tif was made with other options')
    assert not (out / "a_overview_cells.json").exists()
    again = ["predict", model, plate / "a_overview.ome.tif", "--out", out, "--channel", "0"]
    assert main([str(a) for a in [*again, "--workers", "0", "--tile-size", "64"]]) == 0
    # when none of the first images fits, the options are wrong: refused before any work
    argv = ["predict", model, plate, "--out", tmp_path / "o2", "--channel", "5", "--workers", "0"]
    assert main([str(a) for a in argv]) == 2
    assert not (tmp_path / "o2" / "field0_cells.tif").exists()
    capsys.readouterr()


@pytest.mark.parametrize("out_format", ["tif", "zarr"])
def test_tables_and_maps_are_named_as_output_paths_names_them(tmp_path, out_format):
    from napari_mutualseg.io import output_paths

    images = [tmp_path / "in" / name for name in ("a/s.v1.tif", "b/s.v1.ome.tif", "x.tiff")]
    for image in images:
        image.parent.mkdir(parents=True, exist_ok=True)
        image.touch()
    maps = out_format == "tif"  # whole images only
    options = BatchOptions(out_format=out_format, disagreement=maps)
    jobs = plan_jobs(images, tmp_path / "out", options, tmp_path / "maps")
    assert [j.labels for j in jobs] == output_paths(
        images, tmp_path / "out", suffix=options.label_suffix
    )
    assert [j.table for j in jobs] == output_paths(images, tmp_path / "out", suffix="_cells.csv")
    if maps:
        expected = [
            output_paths(images, tmp_path / "maps", suffix=f"_disagreement.{e}")
            for e in ("tif", "csv")
        ]
        assert [j.disagreement for j in jobs] == list(zip(*expected, strict=True))


def _cluster(n_workers: int):
    """A LocalCluster of its own for a test, on TCP as a remote one."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
    )


@pytest.fixture(scope="module")
def shared_cluster():
    """A cluster of one worker for the tests that need a cluster but not a fresh one: its
    start, and torch's on its worker, are most of such a test's time. A test that adds
    workers takes them away again."""
    with _cluster(1) as shared:
        yield shared


def test_a_worker_finishes_each_image_before_it_starts_the_next_also_from_lazy_files(
    model, tmp_path, shared_cluster
):
    """Reading a lazy image (a dask array) on a worker must not hand the worker its next
    image: all of them would be in progress at once, with the memory of all of them."""
    for k in range(3):
        _zarr_image(tmp_path / "in" / f"w{k}.ome.zarr", k)
    address = shared_cluster.scheduler_address  # one worker of one thread
    run = BatchRun(model, [tmp_path / "in"], tmp_path / "out", OPTIONS, scheduler=address)
    assert [r.status for r in run] == ["done"] * 3
    # the record is written as an image starts, its table as it ends
    spans = sorted((j.record.stat().st_mtime_ns, j.table.stat().st_mtime_ns) for j in run.jobs)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))


def test_a_run_leaves_the_default_dask_scheduler_of_the_process_alone(
    model, tmp_path, shared_cluster
):
    # napari draws lazy layers with dask in the main thread while a folder is segmented:
    # their reads must not go to the run's workers, which may not see the files
    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(2)]
    address = shared_cluster.scheduler_address
    run = iter(BatchRun(model, images, tmp_path / "out", OPTIONS, scheduler=address))
    next(run)  # the run's client is open
    assert dask.config.get("scheduler", None) is None
    assert [r.status for r in run] == ["done"]


def test_a_run_in_this_process_reads_here_beside_a_default_dask_client(
    model, tmp_path, shared_cluster
):
    """A notebook's (or dask-jobqueue's) Client made the default: the run's lazy reads went
    to its cluster, which cannot be sent an open TIFF ('Could not serialize object of type
    _HLGExprSequence' before any image)."""
    from distributed import Client

    images = [_image(tmp_path / "in" / "a.tif", 0), _zarr_image(tmp_path / "in" / "b.zarr", 1)]
    with Client(shared_cluster.scheduler_address):
        run = BatchRun(model, images, tmp_path / "out", OPTIONS, workers=0)
        assert [r.status for r in run] == ["done", "done"]


def test_runs_that_share_a_cluster_keep_their_own_model_and_results(
    model, tmp_path, shared_cluster
):
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    other = ModelPair(build_unet(arch, 7), build_unet(arch, 8)).save(tmp_path / "other.pt")
    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(3)]
    address = shared_cluster.scheduler_address
    first = iter(BatchRun(model, images, tmp_path / "a", OPTIONS, scheduler=address))
    next(first)  # its other images are on the cluster, or done and held there
    second = list(BatchRun(other, images, tmp_path / "b", OPTIONS, scheduler=address))
    assert len(list(first)) == 2 and [r.status for r in second] == ["done"] * 3
    from distributed import Client

    with Client(address) as client:  # each run took its model off the workers again
        plugins = client.run(lambda dask_worker: list(dask_worker.plugins))
    assert not [p for names in plugins.values() for p in names if "mutualseg" in p]
    for pair, folder in ((model, "a"), (other, "b")):
        here = BatchRun(pair, images, tmp_path / f"here_{folder}", OPTIONS, workers=0)
        assert all(r.status == "done" for r in here)
        for k in range(3):
            np.testing.assert_array_equal(
                tifffile.imread(tmp_path / folder / f"w{k}_cells.tif"),
                tifffile.imread(tmp_path / f"here_{folder}" / f"w{k}_cells.tif"),
            )


def _serve_once(reply: bytes | None) -> tuple[socket.socket, str]:
    """A server that is no dask scheduler: it answers ``reply`` (or nothing) and hangs on."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        with contextlib.suppress(OSError):
            connection, _ = server.accept()
            connection.recv(1024)
            if reply:
                connection.sendall(reply)
            connection.recv(1024)  # until the client gives up

    threading.Thread(target=serve, daemon=True).start()
    return server, f"tcp://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("reply", [None, b"HTTP/1.0 404 Not Found\r\n\r\nNothing here"])
def test_an_address_that_is_no_scheduler_is_refused_within_the_timeout(reply):
    server, address = _serve_once(reply)
    start = time.monotonic()
    with server, pytest.raises(ConnectionError, match="not the dashboard's 8787"):
        check_scheduler(address, timeout=2)
    assert time.monotonic() - start < 15


def test_a_wrong_scheduler_address_is_one_line_before_any_work(
    model, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(cluster, "REFUSED_SECONDS", 0.5)
    image = _image(tmp_path / "in" / "a.tif", 0)
    with pytest.raises(ValueError, match="give it as tcp://host:port"):
        check_scheduler("localhost")
    address = f"tcp://127.0.0.1:{_free_port()}"
    code = main(
        ["predict", str(model), str(image), "--out", str(tmp_path / "out"), "--scheduler", address]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"Nothing listens at {address}" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob("*_cells*"))


def test_a_cluster_without_workers_says_so(model, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "WORKER_SECONDS", 1)
    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(2)]
    with _cluster(0) as empty:
        run = BatchRun(model, images, tmp_path / "out", OPTIONS, scheduler=empty.scheduler_address)
        with pytest.raises(TimeoutError, match="No dask worker joined"):
            list(run)
    assert [r.status for r in run.results] == ["not done"] * 2


def test_a_run_stopped_while_it_waits_for_its_first_worker_stops_then(
    model, tmp_path, monkeypatch
):
    """It waited out the two minutes a cluster has to get a worker (a batch system's queue
    holding the workers' jobs), then failed: 'No dask worker joined'."""
    from napari_mutualseg import batch

    monkeypatch.setattr(cluster, "WORKER_SECONDS", 3600)
    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(2)]
    run = BatchRun(model, images, tmp_path / "out", OPTIONS, workers=2)

    class Queued:  # a cluster whose workers are not there yet
        scheduler = SimpleNamespace(address="tcp://queued:8786")

        def wait_for_workers(self, n_workers, timeout):
            run.cancel()
            raise TimeoutError

    queued = contextlib.nullcontext((Queued(), "on the cluster"))
    monkeypatch.setattr(batch, "dask_client", lambda scheduler, workers: queued)
    assert list(run) == []
    assert [r.status for r in run.results] == ["not done"] * 2


def test_a_stop_signal_to_the_job_stops_a_run_on_local_workers_in_one_line(model, tmp_path):
    """SIGTERM (SLURM at the time limit, scancel) and Ctrl-C reach the whole process group:
    the workers leave them to the command. Killed by SIGTERM, they left the command talking
    to workers that were gone: dask's CommClosedError and a traceback in the log."""
    images = [_image(tmp_path / "in" / f"i{k}.tif", k, shape=(512, 512)) for k in range(6)]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "napari_mutualseg.cli", "predict", str(model)]
    command += [str(p) for p in images] + ["--out", str(out), "--device", "cpu", "--workers", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_cells.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)  # as SLURM sends it
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM)" in err
    assert not [w for w in ("Traceback", "KeyboardInterrupt", "Error", "ERROR") if w in err], err


@pytest.mark.parametrize("stopped", [True, False])
def test_a_stop_signal_that_kills_local_workers_as_they_start_stops_the_run(
    model, tmp_path, monkeypatch, stopped
):
    """Ctrl-C or SIGTERM reaches the whole process group: local workers that were starting
    died of it, before they could be told to leave it to the command, and the stopped run
    failed with a traceback, 'The local dask workers did not start (Nanny failed to start)'
    and advice about a script's main guard."""
    from napari_mutualseg import batch

    images = [_image(tmp_path / "in" / f"w{k}.tif", k, shape=(32, 32)) for k in range(2)]
    run = BatchRun(model, images, tmp_path / "out", OPTIONS, workers=2)

    @contextlib.contextmanager
    def killed_as_they_start(scheduler, workers):
        if stopped:
            run.cancel()  # what the command's handler does on the signal
        raise RuntimeError("The local dask workers did not start (Nanny failed to start).")
        yield

    monkeypatch.setattr(batch, "dask_client", killed_as_they_start)
    if stopped:
        assert list(run) == []
    else:  # a start that fails on its own is told as it was
        with pytest.raises(RuntimeError, match="did not start"):
            list(run)
    assert [r.status for r in run.results] == ["not done"] * 2
    assert [row["status"] for row in _rows(tmp_path / "out" / REPORT_NAME)] == ["not done"] * 2


def test_local_workers_leave_ctrl_c_and_sigterm_to_the_command():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cluster._ignore_stop_signals()
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in previous)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_a_local_worker_started_again_by_its_nanny_leaves_ctrl_c_and_sigterm_to_the_command(
    monkeypatch,
):
    """One that ran out of memory, or was killed, came back without it: the next Ctrl-C or
    SIGTERM killed it, and the stop ended in dask's errors ('failed to teardown')."""
    import distributed

    start = distributed.LocalCluster
    told = []  # workers told (in this process: threads, which may not set signal handlers)
    monkeypatch.setattr(
        distributed, "LocalCluster", lambda **kwargs: start(**{**kwargs, "processes": False})
    )
    monkeypatch.setattr(cluster, "_ignore_stop_signals", lambda: told.append(1))
    with cluster.dask_client(None, 1) as (client, _):
        client.cluster.scale(2)  # as a nanny starts a worker again
        client.wait_for_workers(2)
        deadline = time.monotonic() + 30
        while len(told) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(told) == 2


def test_local_workers_that_do_not_start_are_explained(monkeypatch):
    import distributed

    def fails(**kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(distributed, "LocalCluster", fails)
    with (
        pytest.raises(RuntimeError, match='under `if __name__ == "__main__":`'),
        cluster.dask_client(None, 2),
    ):
        pass


def test_workers_with_a_scheduler_are_refused_in_one_line(model, tmp_path, capsys):
    image = _image(tmp_path / "in" / "a.tif", 0)
    address = f"tcp://127.0.0.1:{_free_port()}"  # refused before anyone asks it
    with pytest.raises(ValueError, match="give one of them"):
        BatchRun(model, [image], tmp_path / "out", OPTIONS, workers=2, scheduler=address)
    argv = ["predict", model, image, "--out", tmp_path / "out", "--workers", "0"]
    assert main([str(a) for a in [*argv, "--scheduler", address]]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "--scheduler" in err and "Traceback" not in err
    with pytest.raises(ValueError, match=r"workers \(--workers\) must be 0 or more, got -1"):
        BatchRun(model, [image], tmp_path / "out", OPTIONS, workers=-1)


class _Answers:
    """A client whose workers answer the version check with what a test gives."""

    def __init__(self, answers: dict, workers: set[str] | None = None) -> None:
        self.answers = answers
        self.workers = workers or set(answers)

    def run(self, function, *args, on_error="raise"):
        return {a: v(*args) if callable(v) else v for a, v in self.answers.items()}

    def scheduler_info(self, n_workers=0):
        return {"workers": {a: {} for a in self.workers}}


def test_workers_of_other_versions_are_named_with_what_to_install():
    here = cluster._version_probe()(cluster._MATCHED)
    same_release = {**here, "torch": here["torch"].split("+")[0] + "+cu121"}
    assert cluster.version_problem(_Answers({"tcp://a:1": same_release})) is None
    old = {**here, "napari-mutualseg": "0.0.1"}
    answers = {"tcp://a:1": here, "tcp://b:1": old, "tcp://c:1": ModuleNotFoundError("x")}
    problem = cluster.version_problem(_Answers(answers))
    assert problem.startswith("The dask worker tcp://b:1 (and 1 more of the workers) has ")
    assert f"napari-mutualseg 0.0.1 (here {here['napari-mutualseg']})" in problem
    assert f"pip install napari-mutualseg=={here['napari-mutualseg']} " in problem
    # a worker that joins a running run is asked when a task fails, once
    seen = {"tcp://a:1"}
    client = _Answers(answers, workers={"tcp://a:1"})
    assert BatchRun._recheck(client, seen) is None
    client.workers = {"tcp://a:1", "tcp://b:1"}
    assert "tcp://b:1" in BatchRun._recheck(client, seen)
    assert BatchRun._recheck(client, seen) is None and seen == client.workers


def test_a_worker_of_another_version_is_refused_before_any_image(model, tmp_path):
    """The check runs on the worker whatever it has installed (here: another version)."""
    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(2)]
    other = tmp_path / "other"
    (other / "napari_mutualseg-0.0.1.dist-info").mkdir(parents=True)
    (other / "napari_mutualseg-0.0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: napari-mutualseg\nVersion: 0.0.1\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(other)}
    with _cluster(0) as empty:
        address = empty.scheduler_address
        join = [Path(sys.executable).parent / "dask", "worker", address, "--nthreads", "1"]
        worker = subprocess.Popen(
            [*join, "--no-dashboard", "--local-directory", str(tmp_path / "w")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            run = BatchRun(model, images, tmp_path / "out", OPTIONS, scheduler=address)
            with pytest.raises(cluster.WorkerVersionError, match=r"napari-mutualseg 0\.0\.1"):
                list(run)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert [r.status for r in run.results] == ["not done"] * 2
    assert not list((tmp_path / "out").glob("*_cells*"))


def test_each_worker_of_a_host_claims_a_gpu_of_its_own_also_when_it_joins_later(
    tmp_path, monkeypatch
):
    pytest.importorskip("fcntl")
    ids = ["GPU-a", "GPU-b"]
    monkeypatch.setattr(cluster, "_GPU_HELD", {})  # a first worker process
    assert cluster._claim_gpu(ids, str(tmp_path)) == 0
    assert cluster._claim_gpu(ids, str(tmp_path)) == 0  # the same process keeps its GPU
    first = cluster._GPU_HELD
    monkeypatch.setattr(cluster, "_GPU_HELD", {})  # a second one, joining later
    assert cluster._claim_gpu(ids, str(tmp_path)) == 1
    # a worker whose CUDA_VISIBLE_DEVICES puts its GPU first (dask-cuda) takes that one
    monkeypatch.setattr(cluster, "_GPU_HELD", {})
    assert cluster._claim_gpu(["GPU-c", *ids], str(tmp_path)) == 0
    monkeypatch.setattr(cluster, "_GPU_HELD", {})
    assert cluster._claim_gpu(ids, str(tmp_path)) is None  # more workers than GPUs
    os.close(first.pop("GPU-a"))  # the first worker ended: its GPU is free again
    assert cluster._claim_gpu(ids, str(tmp_path)) == 0
    for fd in cluster._GPU_HELD.values():
        os.close(fd)


class _CallingNet(ThresholdNet):
    """ThresholdNet that calls ``hook`` on every prediction (to stop a run mid-image); a
    buffer makes it another model than ThresholdNet (its fingerprint)."""

    hook = None

    def __init__(self):
        import torch

        super().__init__()
        self.register_buffer("tag", torch.ones(1))

    def forward(self, x):
        if self.hook is not None:
            self.hook()
        return super().forward(x)


def _stack(path: Path, planes: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image, _, _ = synthetic_scene((size, size), 5, seed=planes)
    pixels = np.stack([(image * 1000).astype(np.uint16)] * planes)
    tifffile.imwrite(path, pixels, photometric="minisblack")
    return path


@pytest.mark.parametrize(
    "options",
    [
        BatchOptions(tile_size=64, overlap=16, axes="ZYX"),
        BatchOptions(tile_size=64, overlap=16, block_size=32, out_format="zarr"),
    ],
    ids=["stack", "zarr-blocks"],
)
def test_a_stop_leaves_the_image_in_progress_between_planes_without_a_trace(tmp_path, options):
    images = [_stack(tmp_path / "in" / f"s{k}.tif", 3 if options.axes else 1) for k in range(2)]
    net = _CallingNet()
    pair = ModelPair(net, ThresholdNet(), settings={"min_size": 4})
    run = BatchRun(pair, images, tmp_path / "out", options, workers=0)
    net.hook = run.cancel  # stopped while the first plane (or block) is predicted
    assert [r.status for r in run] == ["not done"]
    assert [r.status for r in run.results_in_order()] == ["not done"] * 2
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == [REPORT_NAME, SUMMARY_NAME]  # no labels, record or temporary store
    net.hook = None
    rerun = BatchRun(pair, images, tmp_path / "out", options, workers=0)
    assert [r.status for r in rerun] == ["done"] * 2


def test_a_stopped_run_leaves_the_image_in_progress_on_a_cluster_that_goes_on(
    model, tmp_path, shared_cluster
):
    """The cluster outlives the run: its worker must not finish the image for minutes and
    write it after the run ended."""
    from distributed import Client

    stack = _stack(tmp_path / "in" / "long.tif", 200, size=128)
    options = BatchOptions(tile_size=128, overlap=16, axes="ZYX")
    address = shared_cluster.scheduler_address
    with Client(address) as client:
        run = BatchRun(model, [stack], tmp_path / "out", options, scheduler=address)
        results = iter(run)
        threading.Thread(target=lambda: (_wait_for(run.jobs[0].record), run.cancel())).start()
        assert [r.status for r in results] == ["not done"]  # as in this process
        _wait_for_idle(client)
    assert [r.status for r in run.results] == ["not done"]
    assert not run.jobs[0].labels.exists() and not run.jobs[0].record.exists()


def test_images_that_finish_as_a_run_on_dask_stops_are_told_as_they_are_kept(
    model, tmp_path, shared_cluster
):
    """An image of one plane finishes after the stop: it was kept and counted, but never
    given as a result (no 'Wrote' line), or recorded as not done while its worker wrote it."""
    from distributed import Client

    images = [_image(tmp_path / "in" / f"p{k}.tif", k, shape=(160, 160)) for k in range(3)]
    address = shared_cluster.scheduler_address
    with Client(address) as client:
        run = BatchRun(model, images, tmp_path / "out", OPTIONS, scheduler=address)
        results = iter(run)
        threading.Thread(target=lambda: (_wait_for(run.jobs[0].record), run.cancel())).start()
        told = [r.job.name for r in results if r.status == "done"]
        _wait_for_idle(client)
    kept = [job.name for job in run.jobs if job.complete()]
    assert told == kept == ["p0.tif"]
    assert [r.job.name for r in run.results if r.status == "done"] == kept


def test_an_image_still_in_progress_when_a_stop_stops_waiting_is_told_as_not_done(
    model, tmp_path, monkeypatch
):
    """Local workers end the task in hand as they close: an image of one plane finished
    then was counted as done in run_report.csv, never given as a result (no 'Wrote' line)."""
    from napari_mutualseg import batch

    held, go = _hold_first_image(monkeypatch)
    monkeypatch.setattr(batch, "STOP_SECONDS", 0.1)
    images = [_image(tmp_path / "in" / f"p{k}.tif", k, shape=(32, 32)) for k in range(2)]
    job = plan_jobs(images, tmp_path / "out", OPTIONS)[0]
    opened = batch.dask_client

    @contextlib.contextmanager
    def closing_ends_the_image(*args):
        with opened(*args) as client_and_where:
            yield client_and_where
        go.set()  # as a local worker ends its task as it closes, after the stop's wait
        _wait_for(job.table)

    monkeypatch.setattr(batch, "dask_client", closing_ends_the_image)
    with _in_process_cluster() as shared:
        run = BatchRun(
            model, images, tmp_path / "out", OPTIONS, scheduler=shared.scheduler_address
        )
        threading.Thread(target=lambda: (held.wait(60), run.cancel())).start()
        told = [(r.job.name, r.status) for r in run]
    assert told == [("p0.tif", "not done")]
    assert [r.status for r in run.results_in_order()] == ["not done"] * 2
    assert "its results are kept" in run.results_in_order()[0].reason
    assert [row["image"] for row in _rows(tmp_path / "out" / SUMMARY_NAME)] == ["p0.tif"]
    assert [r.status for r in BatchRun(model, images, tmp_path / "out", OPTIONS, workers=0)] == [
        "skipped",
        "done",
    ]


def _wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _wait_for_idle(client, seconds: float = 120) -> None:
    """Until no worker runs a task (a cancelled task runs on until it returns)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executing = client.run(lambda dask_worker: dask_worker.state.executing_count)
        if not any(executing.values()):
            return
        time.sleep(0.1)


def test_an_overwrite_run_stopped_says_the_images_it_did_not_reach_are_not_done(model, tmp_path):
    """Their earlier results were counted as done by it: '3 of 3 images are segmented and
    kept' after one."""
    images = [_image(tmp_path / "in" / f"i{k}.tif", k) for k in range(3)]
    list(BatchRun(model, images, tmp_path / "out", OPTIONS, workers=0))
    run = BatchRun(model, images, tmp_path / "out", OPTIONS, overwrite=True, workers=0)
    for _ in run:
        run.cancel()
    results = run.results_in_order()
    assert [r.status for r in results] == ["done", "not done", "not done"]
    assert "an earlier run's" in results[1].reason
    with open(tmp_path / "out" / SUMMARY_NAME, newline="") as f:
        summed = [row["image"] for row in csv.DictReader(f)]
    assert summed == ["i0.tif", "i1.tif", "i2.tif"]  # the folder holds results of each


def test_results_being_overwritten_are_never_kept_as_the_new_models(tmp_path):
    """An overwrite run stopped (or killed) in an image had recorded the new model for the
    old model's labels: the next run skipped them as complete."""
    images = [_stack(tmp_path / "in" / "s.tif", 3)]
    options = BatchOptions(tile_size=64, overlap=16, axes="ZYX")
    first = ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})
    assert [r.status for r in BatchRun(first, images, tmp_path / "out", options, workers=0)] == [
        "done"
    ]
    old = (tmp_path / "out" / "s_cells.tif").read_bytes()
    net = _CallingNet()
    second = ModelPair(net, _CallingNet(), settings={"min_size": 8})
    run = BatchRun(second, images, tmp_path / "out", options, overwrite=True, workers=0)
    net.hook = run.cancel
    assert [r.status for r in run] == ["not done"]
    net.hook = None
    # the old labels are there as they were, known as the first model's
    assert (tmp_path / "out" / "s_cells.tif").read_bytes() == old
    with pytest.raises(FileExistsError, match="made by another model"):
        BatchRun(second, images, tmp_path / "out", options, workers=0)
    assert [r.status for r in BatchRun(first, images, tmp_path / "out", options, workers=0)] == [
        "done"  # measured again: its table was removed as the overwrite began
    ]
    rerun = BatchRun(second, images, tmp_path / "out", options, overwrite=True, workers=0)
    assert [r.status for r in rerun] == ["done"]
    assert (tmp_path / "out" / "s_cells.tif").read_bytes() != old


def test_a_worker_that_joins_a_run_shares_the_cores_of_its_host(model, tmp_path, shared_cluster):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores to share")
    from distributed import Client

    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(3)]
    shared = shared_cluster
    # this test's client first: the run's, made later, closes first, as dask needs to set
    # its default scheduler back (the other way round, later tests found no client)
    with Client(shared.scheduler_address) as client:
        run = iter(
            BatchRun(model, images, tmp_path / "out", OPTIONS, scheduler=shared.scheduler_address)
        )
        next(run)  # the run's model is on the first worker
        first = set(shared.scheduler_info["workers"])
        try:
            shared.scale(2)
            client.wait_for_workers(2, timeout=120)

            def threads(dask_worker):
                return [p.threads for n, p in dask_worker.plugins.items() if "mutualseg" in n]

            [late] = [v for a, v in client.run(threads).items() if a not in first]
            list(run)
        finally:  # the cluster of one worker the other tests share
            shared.scale(1)
            deadline = time.monotonic() + 120
            while len(client.scheduler_info(n_workers=-1)["workers"]) > 1:
                assert time.monotonic() < deadline, "the added worker did not leave"
                time.sleep(0.05)
    # two workers of one thread each on this host: each task takes half of the cores
    assert late == [(os.cpu_count() or 1) // 2]


def test_a_plate_still_being_acquired_keeps_its_layout_when_wells_are_added(model, tmp_path):
    """With one well's folder so far, its images went straight into the output folder; a
    rerun once the next well was there segmented the first well again into out/A01."""
    plate = tmp_path / "plate"
    _image(plate / "A01" / "f0.tif", 0)
    first = BatchRun(model, [plate], tmp_path / "out", OPTIONS, workers=0)
    assert [r.status for r in first] == ["done"]
    assert (tmp_path / "out" / "A01" / "f0_cells.tif").exists()
    _image(plate / "A02" / "f0.tif", 1)
    again = BatchRun(model, [plate], tmp_path / "out", OPTIONS, workers=0)
    assert [(r.job.name, r.status) for r in again] == [
        ("A01/f0.tif", "skipped"),
        ("A02/f0.tif", "done"),
    ]
    assert [row["image"] for row in _rows(tmp_path / "out" / SUMMARY_NAME)] == [
        "A01/f0.tif",
        "A02/f0.tif",
    ]
    # a pattern keeps the folders below its first wildcard; files their own folder
    pattern = BatchRun(model, [str(plate / "*" / "f0.tif")], tmp_path / "p", OPTIONS, workers=0)
    assert [j.name for j in pattern.jobs] == ["A01/f0.tif", "A02/f0.tif"]
    one = BatchRun(model, [plate / "A02" / "f0.tif"], tmp_path / "one", OPTIONS, workers=0)
    assert one.jobs[0].labels == tmp_path / "one" / "f0_cells.tif"


def _dask_starts(monkeypatch) -> list[int]:
    """The workers each start of a dask cluster asks for, none started."""
    started = []

    def on_dask(self, jobs, workers):
        started.append(workers)
        yield from ()

    monkeypatch.setattr(BatchRun, "_on_dask", on_dask)
    return started


def test_no_more_local_workers_start_than_images_are_left(model, tmp_path, monkeypatch):
    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(3)]
    list(BatchRun(model, images[:2], tmp_path / "out", OPTIONS, workers=0))
    started = _dask_starts(monkeypatch)
    list(BatchRun(model, images, tmp_path / "out", OPTIONS, workers=4))
    assert started == [1]  # one image left


def test_a_run_stopped_while_it_tells_the_complete_images_starts_no_dask_workers(
    model, tmp_path, monkeypatch
):
    """A stop as a rerun told its complete images (it reads each one's table) started the
    cluster all the same, and an image was segmented after the stop."""
    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(3)]
    list(BatchRun(model, images[:1], tmp_path / "out", OPTIONS, workers=0))
    started = _dask_starts(monkeypatch)
    run = BatchRun(model, images, tmp_path / "out", OPTIONS, workers=2)
    results = iter(run)
    assert next(results).status == "skipped"
    run.cancel()
    assert list(results) == [] and started == []
    assert [r.status for r in run.results_in_order()] == ["skipped", "not done", "not done"]


def test_an_image_that_kills_its_worker_fails_alone_and_says_why(monkeypatch):
    """A worker had its next image queued behind the one at hand: an image that killed it
    (out of memory) took that one along, both 'KilledWorker: Attempted to run task ...'."""
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    from napari_mutualseg.batch import _task_failure

    died = KilledWorker("segment-x", SimpleNamespace(address="tcp://a:1"), 3)
    assert _task_failure(died).startswith("the dask worker segmenting it died, 4 times (out")
    import distributed

    def started(**kwargs):
        seen.append(dask.config.get("distributed.scheduler.worker-saturation"))
        raise RuntimeError("not started here")

    seen = []
    monkeypatch.setattr(distributed, "LocalCluster", started)
    with pytest.raises(RuntimeError), cluster.dask_client(None, 1):
        pass
    [saturation] = seen
    assert saturation == 1.0  # no image waits on a worker behind another


@pytest.mark.parametrize("workers", [1, 4])
def test_an_image_that_kills_a_local_worker_says_what_gives_it_more_memory(workers):
    """The advice was the workers' logs, which a local run does not show, and more memory
    for the workers, which it has no option for: each local worker has its share of the
    machine's memory, and its nanny ends it past that share."""
    from distributed.scheduler import KilledWorker

    from napari_mutualseg.batch import _task_failure

    worker = SimpleNamespace(address="tcp://a:1", memory_limit=4 * 2**30)
    reason = _task_failure(KilledWorker("segment-x", worker, 3), local=workers)
    assert reason.startswith("the local dask worker segmenting it died, 4 times (out of memory")
    assert "logs" not in reason and "4.00 GiB" in reason and "--block-size" in reason
    assert ("--workers 1 gives one all of it" in reason) == (workers > 1)


def test_workers_that_do_not_see_the_folders_are_named_before_any_image(tmp_path):
    """Each image failed on its own ('Image file not found', 'read-only disk'), a screen's
    worth of them."""
    here = str(tmp_path)
    seeing = _Answers({"tcp://a:1": os.path.exists})
    cluster.check_paths(seeing, [here])
    blind = _Answers({"tcp://a:1": os.path.exists, "tcp://b:1": lambda path: False})
    with pytest.raises(FileNotFoundError, match=r"tcp://b:1 does not see .*shared file system"):
        cluster.check_paths(blind, [here])
    read_only = _Answers({"tcp://a:1": os.access, "tcp://b:1": lambda path, mode: False})
    with pytest.raises(PermissionError, match=r"tcp://b:1 cannot write in "):
        cluster.check_paths(read_only, [], [here])


def test_a_run_whose_cluster_loses_all_its_workers_says_so(model, tmp_path, monkeypatch):
    """It waited for them for ever, saying nothing (their jobs' walltime was up)."""
    from napari_mutualseg import batch

    monkeypatch.setattr(cluster, "WORKER_SECONDS", 1)
    monkeypatch.setattr(batch._Absence, "LOOK_SECONDS", 0.1)
    stack = _stack(tmp_path / "in" / "long.tif", 200, size=128)
    options = BatchOptions(tile_size=128, overlap=16, axes="ZYX")
    with _cluster(1) as shared:
        run = BatchRun(
            model, [stack], tmp_path / "out", options, scheduler=shared.scheduler_address
        )

        def leave():
            _wait_for(run.jobs[0].record)
            shared.scale(0)
            time.sleep(60)
            run.cancel()  # what waited for ever is not this test's to wait for

        threading.Thread(target=leave, daemon=True).start()
        with pytest.raises(TimeoutError, match="has had no worker for 1 s, with 1 image not"):
            list(run)
    assert [r.status for r in run.results] == ["not done"]


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_a_worker_on_a_host_of_gpus_loads_the_model_on_a_gpu_no_other_worker_holds(
    model, tmp_path, monkeypatch, device
):
    """--device cuda sent every worker to GPU 0 (torch's 'cuda')."""
    pytest.importorskip("fcntl")
    import torch

    from napari_mutualseg.models import ModelPair as Pair

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cluster, "_gpu_ids", lambda torch: ["GPU-a", "GPU-b"])
    monkeypatch.setattr(cluster.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(Pair, "load", staticmethod(lambda path, device: device))
    monkeypatch.setattr(cluster, "_GPU_HELD", {})
    assert cluster._claim_gpu(["GPU-a"], str(tmp_path)) == 0  # another worker of the host
    other = cluster._GPU_HELD
    monkeypatch.setattr(cluster, "_GPU_HELD", {})  # this one
    plugin = cluster._ModelPlugin("run", model.read_bytes(), device, {}, {})
    worker = type("Worker", (), {"local_directory": str(tmp_path)})()
    plugin._load(worker, None, 1)
    assert plugin.pair == "cuda:1"
    for fd in [*cluster._GPU_HELD.values(), *other.values()]:
        os.close(fd)


def test_earlier_results_are_checked_without_reading_images_that_have_none(
    model, tmp_path, monkeypatch
):
    """The check read the first 64 KB of every image (its record's digest) before any work,
    also into an empty folder: a screen of thousands on a network share waited for it."""
    from napari_mutualseg import jobs

    images = [_image(tmp_path / "in" / f"w{k}.tif", k, shape=(32, 32)) for k in range(3)]
    read = []
    digest = jobs._head_digest
    monkeypatch.setattr(jobs, "_head_digest", lambda path: read.append(path) or digest(path))
    run = BatchRun(model, images, tmp_path / "out", OPTIONS, workers=0)
    assert read == []
    list(run)
    assert sorted(read) == images  # each in its turn, for its record
    read.clear()
    BatchRun(model, images[:2], tmp_path / "out", OPTIONS, workers=0)
    assert sorted(read) == images[:2]  # its results are checked against each


def test_a_record_alone_refuses_no_run(model, tmp_path):
    """A process killed in an image leaves its record, but no result to protect."""
    image = _image(tmp_path / "in" / "a.tif", 0)
    list(BatchRun(model, [image], tmp_path / "out", OPTIONS, workers=0))
    (tmp_path / "out" / "a_cells.tif").unlink()
    (tmp_path / "out" / "a_cells.csv").unlink()
    other = BatchOptions(tile_size=64, overlap=16, min_size=3)
    run = BatchRun(model, [image], tmp_path / "out", other, workers=0)
    assert [r.status for r in run] == ["done"]


def test_an_image_done_again_by_dask_is_done_not_failed(tmp_path):
    """dask runs an image's task again when its worker died after the files were written but
    before its result reached the scheduler: the second try failed the complete image with
    'x_cells.csv already exists; ... segment again with overwrite'. Results of another model
    or options written there meanwhile (a run beside this one) are refused and left alone."""
    pair = ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})
    pixels = np.zeros((32, 32), np.uint16)
    pixels[4:12, 4:12] = pixels[18:28, 16:26] = 1000
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    [job] = plan_jobs([tmp_path / "a.tif"], tmp_path / "o", OPTIONS)
    first = process_image(pair, job, OPTIONS)
    again = process_image(pair, job, OPTIONS)
    assert (first.status, again.status) == ("done", "done")
    assert again.cells == first.cells == 2 and again.summary == first.summary
    table = job.table.read_bytes()
    other = BatchOptions(tile_size=64, overlap=16, min_size=3)
    refused = process_image(pair, job, other)
    assert refused.status == "failed" and "made with other options (min size" in refused.reason
    assert job.table.read_bytes() == table and job.labels.exists() and job.record.exists()


def test_an_images_notes_hold_its_own_warnings_not_another_threads(tmp_path, monkeypatch):
    """A folder run in napari's worker thread noted the main thread's warnings as an image's
    (its reason held another run's 'could not load the model'), and the main thread's
    warning was never shown. The same words in the next image are noted again."""
    import napari_mutualseg.image_task as image_task

    pair = ModelPair(ThresholdNet(), ThresholdNet())
    [job] = plan_jobs([_image(tmp_path / "a.tif", 0, shape=(32, 32))], tmp_path / "o", OPTIONS)
    inside, go = threading.Event(), threading.Event()
    measure = image_task.measure_image

    def measured(*args, **kwargs):
        warnings.warn("the image's own words", UserWarning, stacklevel=1)
        inside.set()
        go.wait(20)
        return measure(*args, **kwargs)

    monkeypatch.setattr(image_task, "measure_image", measured)
    results = []

    def run():
        for overwrite in (False, True):
            results.append(process_image(pair, job, OPTIONS, overwrite=overwrite))

    thread = threading.Thread(target=run)
    with pytest.warns(UserWarning, match="the main thread's") as shown:
        thread.start()
        inside.wait(20)
        warnings.warn("the main thread's words", UserWarning, stacklevel=1)
        go.set()
        thread.join(20)
    assert [r.reason for r in results] == ["the image's own words"] * 2
    assert [str(w.message) for w in shown] == ["the main thread's words"]


def test_a_worker_whose_folder_was_cleaned_away_still_loads_the_model(
    model, tmp_path, shared_cluster
):
    """'[Errno 2] No such file or directory: .../dask-scratch-space/worker-.../tmp...'"""
    import shutil

    from distributed import Client

    images = [_image(tmp_path / "in" / f"w{k}.tif", k) for k in range(2)]
    address = shared_cluster.scheduler_address
    with Client(address) as client:
        client.run(lambda dask_worker: shutil.rmtree(dask_worker.local_directory))
    run = BatchRun(model, images, tmp_path / "out", OPTIONS, scheduler=address)
    assert [r.status for r in run] == ["done", "done"]


def _in_process_cluster():
    """A LocalCluster of threads in this process, so that a test can patch what its workers
    run; the scheduler hands a worker an image only when it has a thread free."""
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        return LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": ":0"},
        )


def test_a_model_that_does_not_load_at_the_start_is_taken_off_the_cluster(
    model, tmp_path, monkeypatch
):
    """The run failed, but its model stayed registered: every worker that joined the
    cluster later loaded it again."""

    def fails(self, worker, *share):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cluster._ModelPlugin, "_load", fails)
    images = [_image(tmp_path / "in" / f"w{k}.tif", k, shape=(32, 32)) for k in range(2)]
    with _in_process_cluster() as shared:
        run = BatchRun(
            model, images, tmp_path / "out", OPTIONS, scheduler=shared.scheduler_address
        )
        with pytest.raises(OSError, match="No space left on device"):
            list(run)
        assert not [n for n in shared.scheduler.worker_plugins if "mutualseg" in n]


def _hold_first_image(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Hold the run's first image on its worker: ``held`` is set once it is there, and it
    goes on when ``go`` is set (or after 60 s)."""
    held, go = threading.Event(), threading.Event()
    original = cluster.process_image

    def hold_first(pair, job, *args, **kwargs):
        if not held.is_set():
            held.set()
            go.wait(60)
        return original(pair, job, *args, **kwargs)

    monkeypatch.setattr(cluster, "process_image", hold_first)
    return held, go


def _with_a_late_worker(run: BatchRun, shared, monkeypatch, late_joiner, sent=None) -> list:
    """Iterate ``run`` while its first worker is held on its first image and a second worker
    joins (after ``late_joiner()``, which patches what that worker meets); the first is let
    go once the late one has handed back the other images and the run has warned of it.
    Each job sent again goes to ``sent``, with whether a worker was busy then."""
    import napari_mutualseg.batch as batch

    held, go = _hold_first_image(monkeypatch)
    warned = threading.Event()

    def warn(*args, **kwargs):  # the run's own warnings only
        warnings.warn(*args, **kwargs)
        warned.set()

    monkeypatch.setattr(batch, "warnings", SimpleNamespace(warn=warn))
    send = cluster.Submission.send
    sent_again = [] if sent is None else sent

    def counted(self, job, avoid):
        busy = any(w.processing for w in list(shared.scheduler.workers.values()))
        sent_again.append((job, busy))
        return send(self, job, avoid)

    monkeypatch.setattr(cluster.Submission, "send", counted)

    def join():
        held.wait(60)
        late_joiner()
        shared.scale(2)
        # the images it handed back are the run's erred tasks
        deadline = time.monotonic() + 60
        tasks = shared.scheduler.tasks
        while time.monotonic() < deadline and (
            not warned.is_set()
            or sum(t.state == "erred" for t in list(tasks.values())) < len(run.jobs) - 1
        ):
            time.sleep(0.05)
        go.set()

    threading.Thread(target=join, daemon=True).start()
    try:
        return list(run)
    finally:
        go.set()


def test_a_worker_that_joins_a_run_and_cannot_load_the_model_hands_its_images_on(
    model, tmp_path, monkeypatch
):
    """Its images failed, each in milliseconds, so that it took most of the run: now they go
    to the other workers, and it is named once. Each went again with its paths as given, where
    the first sending makes them absolute (a worker running in another folder read and wrote
    them there), and at once, to the queue of a busy worker (a death of that worker counted
    as theirs): now as its thread comes free."""
    monkeypatch.chdir(tmp_path)
    images = [_image(Path("in") / f"w{k}.tif", k, shape=(32, 32)) for k in range(3)]
    load = cluster._ModelPlugin._load

    def fails_when_late(self, worker, *share):
        if worker.address not in self.shares:
            raise OSError(28, "No space left on device")
        return load(self, worker, *share)

    with _in_process_cluster() as shared:
        run = BatchRun(model, images, "out", OPTIONS, scheduler=shared.scheduler_address)
        [first] = shared.scheduler_info["workers"]
        late = lambda: monkeypatch.setattr(cluster._ModelPlugin, "_load", fails_when_late)  # noqa: E731
        sent = []
        with pytest.warns(UserWarning) as caught:
            results = _with_a_late_worker(run, shared, monkeypatch, late, sent)
        [late_worker] = set(shared.scheduler_info["workers"]) - {first}
    assert [r.status for r in results] == ["done"] * 3
    assert {r.worker for r in results} == {first}
    assert len(sent) == 2 and all(
        j.source.is_absolute() and j.table.is_absolute() for j, _ in sent
    )
    assert not any(busy for _, busy in sent)  # each as the first worker's thread came free
    [said] = [str(w.message) for w in caught if "could not load" in str(w.message)]
    assert said.startswith(f"The dask worker {late_worker} could not load the model")
    assert "No space left on device" in said and "go to the other workers" in said


def test_a_small_run_sends_a_worker_its_next_image_only_when_a_thread_is_free(
    model, tmp_path, monkeypatch
):
    """The scheduler holds back no run of at most twice the cluster's threads: its images
    all went to the workers at once, queued behind one another, and an image that killed its
    worker (out of memory) took those queued behind it along, each counting a death."""
    images = [_image(tmp_path / "in" / f"w{k}.tif", k, shape=(32, 32)) for k in range(2)]
    held, go = _hold_first_image(monkeypatch)
    states = []
    with _in_process_cluster() as shared:  # one worker of one thread

        def look():
            held.wait(60)
            time.sleep(0.5)  # the run's loop goes round a few times
            tasks = list(shared.scheduler.tasks.items())
            states.extend(sorted(t.state for k, t in tasks if str(k).startswith("segment")))
            go.set()

        threading.Thread(target=look, daemon=True).start()
        run = BatchRun(
            model, images, tmp_path / "out", OPTIONS, scheduler=shared.scheduler_address
        )
        try:
            results = list(run)
        finally:
            go.set()
    assert [r.status for r in results] == ["done", "done"]
    assert states == ["processing"]  # the second image is sent once the first is done


_HELD = threading.Event()  # module-level: the in-process workers unpickle it by reference


def _held() -> None:
    _HELD.wait(30)


def _where(job) -> str:
    from distributed import get_worker

    return get_worker().address


def _held_image(job) -> str:
    _HELD.wait(30)
    return job.name


def test_a_worker_gets_its_next_image_only_when_a_thread_is_free_whatever_the_names():
    """Keys began with the image's name: names whose first word differs (a plate named by
    condition) made groups too small for the scheduler to hold back, so every image went to
    a worker at once, queued behind another (an image that killed the worker took them
    along, each counting a death)."""
    from distributed import Client

    _HELD.clear()
    names = ["DAPI-1.tif", "GFP-1.tif", "BF-1.tif", "DAPI-2.tif", "GFP-2.tif"]
    with _in_process_cluster() as shared, Client(shared, set_as_default=False) as client:
        submission = cluster.Submission(client, _held_image, "run")
        submission.start([SimpleNamespace(name=n) for n in names])  # its futures keep them
        tasks = shared.scheduler.tasks
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            len(tasks) < 5 or any(t.state not in ("processing", "queued") for t in tasks.values())
        ):
            time.sleep(0.05)
        states = sorted(t.state for t in tasks.values())
        _HELD.set()
    assert states == ["processing"] + ["queued"] * 4  # one worker of one thread


def test_an_image_sent_again_does_not_wait_for_ever_for_workers_that_left():
    """It was sent to the workers of that moment only: when all of them left (a job's
    walltime) and new ones joined, it waited for ever, and so did the run."""
    from distributed import Client

    _HELD.clear()
    with _in_process_cluster() as shared, Client(shared, set_as_default=False) as client:
        [first] = client.scheduler_info()["workers"]
        busy = client.submit(_held, workers=[first], pure=False)
        job = SimpleNamespace(name="x.tif")
        again = cluster.Submission(client, _where, "run").send(job, avoid={"tcp://unfit:1"})
        shared.scale(2)
        while len(client.scheduler_info()["workers"]) < 2:
            time.sleep(0.05)
        [name] = [n for n, w in shared.workers.items() if w.address == first]
        _HELD.set()  # a worker closes once its thread is free
        client.sync(shared.workers[name].close)  # the first leaves, the image not fetched
        assert again.result(timeout=20) not in (first, None)
        del busy


def test_a_worker_of_other_versions_that_joins_a_run_hands_its_images_on(
    model, tmp_path, monkeypatch
):
    """The versions were checked at the start only: a worker that joined later segmented
    its images, or failed them in code of its own, without a word of its versions."""
    images = [_image(tmp_path / "in" / f"w{k}.tif", k, shape=(32, 32)) for k in range(3)]
    here = cluster._version_probe()(cluster._MATCHED)
    other = {**here, "torch": "1.0.0"}
    words = cluster.version_problem(_Answers({"tcp://late:1": other}))
    with _in_process_cluster() as shared:
        run = BatchRun(
            model, images, tmp_path / "out", OPTIONS, scheduler=shared.scheduler_address
        )
        [first] = shared.scheduler_info["workers"]
        late = lambda: monkeypatch.setattr(cluster, "_version_probe", lambda: lambda n: other)  # noqa: E731
        with pytest.warns(UserWarning) as caught:
            results = _with_a_late_worker(run, shared, monkeypatch, late)
        [late_worker] = set(shared.scheduler_info["workers"]) - {first}
    assert [r.status for r in results] == ["done"] * 3
    [said] = [str(w.message) for w in caught if "torch 1.0.0" in str(w.message)]
    assert said.startswith(words.replace("tcp://late:1", late_worker))  # as at the start


def test_a_worker_that_cannot_load_the_model_at_the_start_is_named_in_one_line(
    model, tmp_path, monkeypatch, capsys
):
    """A GPU that failed on a worker ended the command in a traceback of the worker's error,
    naming neither the worker nor the model."""

    def fails(self, worker, *share):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(cluster._ModelPlugin, "_load", fails)
    image = _image(tmp_path / "in" / "a.tif", 0, shape=(32, 32))
    with _in_process_cluster() as shared:
        argv = ["predict", model, image, "--out", tmp_path / "out", "--tile-size", "64"]
        code = main([str(a) for a in [*argv, "--scheduler", shared.scheduler_address]])
        [address] = shared.scheduler_info["workers"]
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"The dask worker {address} could not load the model (RuntimeError: CUDA" in err


def test_axes_that_fit_none_of_the_first_images_refuse_the_run_before_any_image(model, tmp_path):
    # --axes ZYX for plain planes is every image's mistake: one message, before any work
    images = [_image(tmp_path / "in" / f"p{k}.tif", k) for k in range(2)]
    broken = tmp_path / "in" / "broken.tif"
    broken.write_bytes(b"not a TIFF")  # a file that does not open is its own failure
    options = BatchOptions(tile_size=64, overlap=16, axes="ZYX")
    with pytest.raises(ValueError, match="ZYX"):
        next(iter(BatchRun(model, [broken, *images], tmp_path / "out", options, workers=0)))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    results = list(BatchRun(model, [broken, *images], tmp_path / "plain", OPTIONS, workers=0))
    assert [r.status for r in results] == ["failed", "done", "done"]


def _on_local_workers(monkeypatch, shared, closing: threading.Event) -> None:
    """The run's local cluster (``workers=n``) is ``shared``, closed as the run ends, when
    ``closing`` is set."""
    from distributed import Client

    from napari_mutualseg import batch

    @contextlib.contextmanager
    def local(scheduler, workers):
        with Client(shared, set_as_default=False) as client:
            yield client, "on 1 local dask worker"
        closing.set()
        shared.close()

    monkeypatch.setattr(batch, "dask_client", local)


@pytest.mark.parametrize("end", ["killed as its cluster closes", "its worker died"])
def test_an_image_whose_local_worker_went_leaves_no_record_of_results(
    model, tmp_path, monkeypatch, end
):
    """Its record, written as it started, was left alone: a file of results that do not
    exist. An earlier run's complete results stay."""
    from napari_mutualseg import batch

    images = [_image(tmp_path / "in" / f"p{k}.tif", k, shape=(32, 32)) for k in range(3)]
    list(BatchRun(model, images[2:], tmp_path / "out", OPTIONS, workers=0))
    held, closing = threading.Event(), threading.Event()

    def started(pair, job, *args, **kwargs):
        job.record.write_text("{}")  # as process_image does first
        if end == "its worker died":
            raise RuntimeError("worker died")  # dask's KilledWorker, on this side
        held.set()
        closing.wait(60)  # killed as the cluster closes: it never ends
        return None

    monkeypatch.setattr(cluster, "process_image", started)
    monkeypatch.setattr(batch, "STOP_SECONDS", 0.1)
    with _in_process_cluster() as shared:
        _on_local_workers(monkeypatch, shared, closing)
        run = BatchRun(model, images, tmp_path / "out", OPTIONS, workers=2)
        threading.Thread(target=lambda: (held.wait(60), run.cancel()), daemon=True).start()
        list(run)
    expected = "not done" if end.startswith("killed") else "failed"
    assert run.results_in_order()[0].status == expected
    kept = sorted(p.name for p in (tmp_path / "out").glob("*_cells.*"))
    assert kept == ["p2_cells.csv", "p2_cells.json", "p2_cells.tif"]


@pytest.mark.parametrize("where", ["here", "dask"])
def test_a_full_disk_stops_the_run_at_the_image_it_meets(model, tmp_path, monkeypatch, where):
    """Each image after it was segmented, for minutes on a plate, only to fail the same way:
    a night's run of a 384-well plate ended with hundreds of failed images."""
    import errno

    from napari_mutualseg import image_task

    tables = []

    def full(path, *args, **kwargs):
        tables.append(path)
        raise OSError(errno.ENOSPC, f"Not enough space to write {path}")

    monkeypatch.setattr(image_task, "write_table", full)
    # two: a run on one thread holds back the second until the first has ended
    images = [_image(tmp_path / "in" / f"p{k}.tif", k, shape=(32, 32)) for k in range(2)]
    with contextlib.ExitStack() as stack:
        on = {"workers": 0}
        if where == "dask":
            shared = stack.enter_context(_in_process_cluster())
            on = {"scheduler": shared.scheduler_address}
        run = BatchRun(model, images, tmp_path / "out", OPTIONS, **on)
        with pytest.raises(OSError, match="Not enough space"):
            list(run)
    assert len(tables) == 1
    assert [r.status for r in run.results_in_order()] == ["not done"] * 2


@pytest.mark.parametrize("where", ["here", "dask"])
def test_a_run_says_where_it_segments_before_the_first_image(model, tmp_path, monkeypatch, where):
    """A long run told CPU or GPU only as it ended: its caller is told as the run starts."""
    from napari_mutualseg import batch

    said = []
    # what starts the first image: segmenting it here, or sending the images to the workers
    starts = "process_image" if where == "here" else "submit_jobs"
    first = getattr(batch, starts)

    def noted(*args, **kwargs):
        said.append(starts)
        return first(*args, **kwargs)

    monkeypatch.setattr(batch, starts, noted)
    images = [_image(tmp_path / "in" / "p.tif", 0, shape=(32, 32))]
    with contextlib.ExitStack() as stack:
        on = {"workers": 0}
        if where == "dask":
            shared = stack.enter_context(_in_process_cluster())
            on = {"scheduler": shared.scheduler_address}
        run = BatchRun(model, images, tmp_path / "out", OPTIONS, on_start=said.append, **on)
        assert [r.status for r in run] == ["done"]
        assert said == [run.where, starts] and run.where
        said.clear()
        assert [r.status for r in run] == ["skipped"] and said == []  # nothing to segment
