"""A plate's images summed up per well (wells.csv), from the names microscopes give them."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import ThresholdNet, disc_image
from napari_mutualseg.batch import SUMMARY_NAME, WELLS_NAME, BatchOptions, BatchRun, well_table
from napari_mutualseg.cli import main
from napari_mutualseg.models import ModelPair, build_unet

OPTIONS = BatchOptions(tile_size=64, overlap=16)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _plate(folder: Path, wells: dict[str, int]) -> list[Path]:
    """Images of bright discs, named as given, with that many discs each."""
    centres = ((12, 12), (12, 40), (40, 12), (40, 40))
    paths = []
    for name, count in wells.items():
        image, _ = disc_image((52, 52), centres[:count], radius=5)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, (image * (1000 * count)).astype(np.uint16))
        paths.append(path)
    return paths


def _pair() -> ModelPair:
    return ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})


def test_a_plates_wells_sum_up_their_images_and_a_second_run_adds_to_them(tmp_path):
    plate = _plate(tmp_path / "plate", {"A01_f1.tif": 1, "A01_f2.tif": 3, "B12_f1.tif": 2})
    run = BatchRun(_pair(), plate[:2], tmp_path / "out", OPTIONS, workers=0)
    assert [r.cells for r in run] == [1, 3]
    [a01] = _rows(tmp_path / "out" / WELLS_NAME)
    assert run.wells == tmp_path / "out" / WELLS_NAME and run.well_rows[0]["well"] == "A01"
    assert (a01["plate"], a01["well"], a01["row"], a01["column"]) == ("", "A01", "A", "1")
    assert (a01["images"], a01["cells"]) == ("2", "4")
    summary = {row["image"]: row for row in _rows(tmp_path / "out" / SUMMARY_NAME)}
    # the mean over the well's cells: each image's mean weighted by its cells
    means = [float(summary[n]["mean_intensity_0"]) for n in ("A01_f1.tif", "A01_f2.tif")]
    assert float(a01["mean_intensity_0"]) == pytest.approx((means[0] + 3 * means[1]) / 4)
    medians = [float(summary[n]["median_area_px"]) for n in ("A01_f1.tif", "A01_f2.tif")]
    assert float(a01["median_area_px"]) == pytest.approx(np.median(medians))
    # a second run into the same folder: the table holds every image with results there
    list(BatchRun(_pair(), plate[2:], tmp_path / "out", OPTIONS, workers=0))
    wells = {row["well"]: row for row in _rows(tmp_path / "out" / WELLS_NAME)}
    assert {w: (r["images"], r["cells"]) for w, r in wells.items()} == {
        "A01": ("2", "4"),
        "B12": ("1", "2"),
    }


def test_mixed_names_give_no_well_table_and_say_so_once(tmp_path, capsys):
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    model = ModelPair(build_unet(arch, 0), build_unet(arch, 1)).save(tmp_path / "pair.pt")
    _plate(tmp_path / "plate", {"A01_f1.tif": 1, "B02_f1.tif": 1})
    argv = ["predict", model, tmp_path / "plate", "--out", tmp_path / "out", "--tile-size", "64"]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert f"per well in {tmp_path / 'out' / WELLS_NAME} (2 wells)." in out
    # an image whose name says no well: the old table would not match the summary
    _plate(tmp_path / "plate", {"overview.tif": 1})
    assert main([str(a) for a in argv]) == 0
    captured = capsys.readouterr()
    assert "per well" not in captured.out and not (tmp_path / "out" / WELLS_NAME).exists()
    [note] = [line for line in captured.err.splitlines() if WELLS_NAME in line]
    assert note.startswith("note: no wells.csv: overview.tif says no well, where the other")


def test_a_wells_csv_of_the_users_is_left_alone(tmp_path):
    plate = _plate(tmp_path / "plate", {"A01_f1.tif": 1})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / WELLS_NAME).write_text("plate,well,treatment\n1,A01,DMSO\n")
    run = BatchRun(_pair(), plate, tmp_path / "out", OPTIONS, workers=0)
    assert [r.status for r in run] == ["done"]
    assert (tmp_path / "out" / WELLS_NAME).read_text() == "plate,well,treatment\n1,A01,DMSO\n"
    assert run.wells is None and "is not a wells.csv of an earlier run" in run.wells_note


@pytest.mark.parametrize(
    ("names", "wells"),
    [
        (["A01_f1.tif", "A01_f2.tif", "P24_f1.tif"], [("", "A01", 2), ("", "P24", 1)]),
        # MetaXpress / ImageXpress, two plates in one folder
        (
            ["Plate1_B02_s1_w1.tif", "Plate1_B02_s2_w1.tif", "Plate2_B02_s1_w1.tif"],
            [("Plate1", "B02", 2), ("Plate2", "B02", 1)],
        ),
        # Opera / Operetta (Harmony): row and column numbers
        (
            ["Images/r01c01f01p01-ch1sk1fk1fl1.tiff", "Images/r16c24f02p01-ch1sk1fk1fl1.tiff"],
            [("Images", "A01", 1), ("Images", "P24", 1)],
        ),
        # a folder per well, below a plate's folder
        (
            ["p1/A01/field1.tif", "p1/A01/field2.tif", "p1/AF48/f.tif"],
            [("p1", "A01", 2), ("p1", "AF48", 1)],
        ),
        # an OME-Zarr plate's fields: a folder per row, in it one per column
        (["B/3/0", "B/3/1", "P/24/0"], [("", "B03", 2), ("", "P24", 1)]),
        (["p1.zarr/AF/48/0", "p2.zarr/A/1/0"], [("p1.zarr", "AF48", 1), ("p2.zarr", "A01", 1)]),
        (["a.tif", "b.tif"], []),  # not a plate
        (["A01_f1.tif", "x.tif"], []),  # mixed
        (["A01_B02.tif"], []),  # two wells in one name
        (["A01_w1.tif", "A01_w2.tif"], []),  # each channel a file: cells counted twice
        (["r01c01f01p01-ch1sk1fk1fl1.tiff", "r01c01f01p02-ch1sk1fk1fl1.tiff"], []),  # planes
        # Incucyte (LIVECell): each time point a file
        (["A172_Phase_A7_1_00d00h00m_1.tif", "A172_Phase_A7_1_00d04h00m_1.tif"], []),
        (
            ["A172_Phase_A7_1_00d00h00m_1.tif", "A172_Phase_A7_2_00d00h00m_1.tif"],
            [("A172_Phase", "A07", 2)],
        ),
        (["A01/B02_f1.tif", "A01/x.tif"], []),  # the file names say a well, not all of them
    ],
)
def test_the_well_is_read_from_the_names_microscopes_give_only_when_every_name_says_it(
    names, wells
):
    rows = [{"image": n, "cells": 1, "mean_intensity_0": 1.0} for n in names]
    table, note = well_table(rows)
    assert [(r["plate"], r["well"], r["images"]) for r in table] == wells
    assert bool(note) == (not wells and names[0] != "a.tif")


def test_a_well_of_images_without_cells_has_no_mean_intensity():
    rows = [
        {"image": "A01_f1.tif", "cells": 0, "mean_intensity_0": float("nan")},
        {"image": "A01_f2.tif", "cells": 0, "mean_intensity_0": ""},
    ]
    [well] = well_table(rows)[0]
    assert well["cells"] == 0 and math.isnan(well["mean_intensity_0"])


def test_the_folder_summary_in_napari_says_where_the_well_table_is(thresholded, tmp_path):
    from qtpy.QtWidgets import QLabel

    _viewer, widget = thresholded
    _plate(tmp_path / "plate", {"A01_f1.tif": 1, "B02_f1.tif": 2})
    widget.segment_folder(tmp_path / "plate", tmp_path / "out", block=True)
    said = widget.summary.findChild(QLabel).text()
    assert "summary.csv, run_report.csv and wells.csv (2 wells) are in the results" in said
    _plate(tmp_path / "plate", {"overview.tif": 1})
    widget.segment_folder(tmp_path / "plate", tmp_path / "out", block=True)
    said = widget.summary.findChild(QLabel).text()
    assert "summary.csv and run_report.csv are in the results folder. No wells.csv:" in said
