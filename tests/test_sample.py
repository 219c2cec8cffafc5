from importlib.resources import files

import numpy as np
from skimage.measure import regionprops

from napari_mutualseg.sample import Sample, load_sample


def test_load_sample_shapes_and_types():
    s = load_sample()
    assert isinstance(s, Sample)
    assert "BBBC039" in s.name
    assert s.image.dtype == np.uint16 and s.image.shape == (520, 696)
    assert s.ground_truth.dtype == np.int32 and s.ground_truth.shape == s.image.shape
    assert s.image.max() > s.image.min()
    n = len(np.unique(s.ground_truth)) - 1
    assert 30 <= n <= 80
    assert s.boxes.shape == (n, 4) and np.issubdtype(s.boxes.dtype, np.integer)


def test_boxes_are_the_ground_truth_bounding_boxes():
    s = load_sample()
    h, w = s.image.shape
    y0, x0, y1, x1 = s.boxes.T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y1 <= h).all() and (x1 <= w).all()
    assert (y1 > y0).all() and (x1 > x0).all()
    props = regionprops(s.ground_truth)
    assert [p.bbox for p in props] == [tuple(b) for b in s.boxes.tolist()]
    # Every object lies entirely inside its own box.
    for p, (a, b, c, d) in zip(props, s.boxes.tolist(), strict=True):
        inside = (s.ground_truth[a:c, b:d] == p.label).sum()
        assert inside == p.area


def test_data_folder_size_and_credit():
    data = files("napari_mutualseg") / "data"
    total = sum(len(f.read_bytes()) for f in data.iterdir() if f.is_file())
    assert total < 2 * 1024 * 1024
    credit = (data / "README.md").read_text()
    for needle in ("BBBC039", "CC0", "Caicedo", "Ljosa", "IXMtest_G13_s9"):
        assert needle in credit
