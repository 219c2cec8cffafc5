"""Files as microscopes and the field's libraries write them: units, series, pyramids."""

import numpy as np
import pytest
import tifffile

from napari_mutualseg.images import AxisImage


def _ome_zarr(path, data, axes, scale, units):
    """A one-level OME-Zarr (NGFF 0.4, zarr format 2) as ome-zarr-py writes it."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=data, chunks=data.shape)
    group.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "axes": [
                        {
                            "name": a,
                            "type": {"c": "channel", "t": "time"}.get(a, "space"),
                            **({"unit": units[a]} if a in units else {}),
                        }
                        for a in axes
                    ],
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [{"type": "scale", "scale": scale}],
                        }
                    ],
                }
            ]
        }
    )
    return path


def test_ome_tiff_axes_in_different_units_are_read_in_one_unit(tmp_path):
    data = np.zeros((3, 16, 20), np.uint16)
    path = tmp_path / "czyx.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 65,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 65,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 0.3,
            "PhysicalSizeZUnit": "µm",
        },
    )
    image = AxisImage.from_file(path)
    assert image.unit == "nm"
    assert image.pixel_size == pytest.approx({"Z": 300.0, "Y": 65.0, "X": 65.0})

    path = tmp_path / "xy.ome.tif"
    metadata = {"PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"}
    metadata.update({"PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "µm"})
    tifffile.imwrite(path, data[0], ome=True, metadata=metadata)
    image = AxisImage.from_file(path)
    assert (image.pixel_size, image.unit) == ({"Y": 500.0, "X": 500.0}, "nm")


def test_ome_zarr_axes_in_different_units_are_read_in_one_unit(tmp_path):
    data = np.zeros((2, 3, 16, 20), np.uint16)
    units = {"t": "second", "z": "micrometer", "y": "nanometer", "x": "nanometer"}
    path = _ome_zarr(tmp_path / "a.ome.zarr", data, "tzyx", [60.0, 0.3, 65.0, 65.0], units)
    image = AxisImage.from_file(path)
    assert image.unit == "nm"
    assert image.pixel_size == pytest.approx({"T": 60.0, "Z": 300.0, "Y": 65.0, "X": 65.0})
