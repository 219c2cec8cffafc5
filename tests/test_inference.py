import numpy as np
import pytest
import torch

from napari_mutualseg.devices import available_devices, select_device
from napari_mutualseg.inference import instances_from_proba, predict_proba
from napari_mutualseg.models import UNet

# tiny networks train faster on one torch thread (conftest.py)


def _proba_from_labels(labels: np.ndarray) -> np.ndarray:
    """Probabilities a perfect network would give: cell inside, boundary on the edges."""
    from skimage.segmentation import find_boundaries

    edge = find_boundaries(labels, mode="inner")
    p = np.zeros((3, *labels.shape), np.float32)
    p[0] = labels == 0
    p[1] = (labels > 0) & ~edge
    p[2] = edge
    return p


def test_instances_separate_touching_cells_and_drop_specks():
    labels = np.zeros((40, 60), np.int32)
    labels[5:25, 5:25] = 1
    labels[5:25, 25:45] = 2  # touches cell 1
    labels[32:34, 50:52] = 3  # a 4-pixel speck
    out = instances_from_proba(_proba_from_labels(labels), min_size=16)
    assert out.max() == 2
    assert len(np.unique(out[5:25, 5:24])) == 1 and len(np.unique(out[5:25, 26:45])) == 1
    assert out[10, 10] != out[10, 40]
    # the boundary band is given back to the cells: each object has its full area
    assert abs((out == out[10, 10]).sum() - 400) <= 20


class _Constant(torch.nn.Module):
    """A 'network' whose output depends on position only through the input, to test tiling."""

    divisor = 8

    def __init__(self):
        super().__init__()
        self.arch = {"n_classes": 3}

    def forward(self, x):
        return torch.cat([x * 0, x * 3, -x * 3], dim=1)


def test_tiled_prediction_matches_whole_image_and_any_size():
    rng = np.random.default_rng(0)
    image = rng.random((203, 317)).astype(np.float32)
    whole = predict_proba([_Constant()], image, torch.device("cpu"), tile_size=1024)
    tiled = predict_proba([_Constant()], image, torch.device("cpu"), tile_size=64, overlap=16)
    assert whole.shape == tiled.shape == (3, 203, 317)
    np.testing.assert_allclose(whole, tiled, atol=1e-5)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "tiling"),
    [((600, 700), {}), ((97, 131), {"tile_size": 64, "overlap": 64})],
)
def test_tiled_prediction_is_right_in_the_image_corners(shape, tiling):
    # Where the ramps of two tile edges meet at an image corner, the blending weights sum to
    # less than 1e-6 (with the default tile size and overlap too): the probabilities there
    # must still be the network's, not scaled down towards 0.
    image = np.random.default_rng(2).random(shape).astype(np.float32)
    cpu = torch.device("cpu")
    whole = predict_proba([_Constant()], image, cpu, tile_size=1024)
    tiled = predict_proba([_Constant()], image, cpu, **tiling)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


class _Blocks(torch.nn.Module):
    """A 'network' that sees its input in 4 x 4 blocks, like a U-Net's pooling grid."""

    divisor = 4

    def __init__(self):
        super().__init__()
        self.arch = {"n_classes": 3}

    def forward(self, x):
        x = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 4), scale_factor=4)
        return torch.cat([x * 0, x * 3, -x * 3], dim=1)


@pytest.mark.parametrize("shape", [(97, 131), (130, 90)])
def test_tiles_lie_on_the_networks_pooling_grid(shape):
    # A tile that starts off the grid of the divisor sees other blocks than the whole image:
    # its probabilities differ everywhere, not only at its edges.
    image = np.random.default_rng(3).random(shape).astype(np.float32)
    cpu = torch.device("cpu")
    whole = predict_proba([_Blocks()], image, cpu, tile_size=1024)
    tiled = predict_proba([_Blocks()], image, cpu, tile_size=48, overlap=16)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    torch.manual_seed(0)
    unet = UNet(width=4, depth=3)
    whole = predict_proba([unet], image, cpu, tile_size=1024)
    tiled = predict_proba([unet], image, cpu, tile_size=64, overlap=32)
    np.testing.assert_allclose(tiled, whole, atol=2e-4)


def test_unet_output_shape_and_ensemble_average():
    torch.manual_seed(0)
    a, b = UNet(width=4, depth=3), UNet(width=6, depth=3)
    image = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    cpu = torch.device("cpu")
    pa = predict_proba([a], image, cpu)
    pb = predict_proba([b], image, cpu)
    pab = predict_proba([a, b], image, cpu)
    assert pab.shape == (3, 50, 70)
    np.testing.assert_allclose(pab, (pa + pb) / 2, atol=1e-5)


def test_device_selection():
    assert available_devices()[0] == "auto" and "cpu" in available_devices()
    assert select_device("cpu").type == "cpu"
    auto = select_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    else:
        assert auto.type in ("mps", "cpu")
    import pytest

    with pytest.raises(ValueError, match=r"not available|Unknown device"):
        select_device("cuda:7" if not torch.cuda.is_available() else "nonsense")


@pytest.mark.parametrize(
    ("tiling", "said"),
    [
        (
            {"tile_size": 64.5},
            r"tile size must be a whole number of at least 32 pixels, got 64\.5",
        ),
        ({"tile_size": 16}, r"tile size must be a whole number of at least 32 pixels, got 16"),
        ({"overlap": 8.5}, r"tile overlap must be a whole number of 0 or more pixels, got 8\.5"),
        ({"overlap": -1}, r"tile overlap must be a whole number of 0 or more pixels, got -1"),
    ],
)
def test_a_tiling_that_cannot_be_used_is_refused_with_what_to_use(tiling, said):
    from napari_mutualseg.models import ModelPair

    pair = ModelPair(UNet(width=2, depth=1), UNet(width=2, depth=1))
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    with pytest.raises(ValueError, match=said):
        pair.segment(image, **tiling)
    # NumPy whole numbers are whole numbers
    assert pair.segment(image, tile_size=np.int64(32), overlap=np.int32(8)).shape == (40, 40)


def test_seeds_found_group_by_group_are_those_of_the_whole_image():
    """Seeds are h-maxima found one group of pixels above 0 at a time (a whole-image
    reconstruction sorted every pixel); they must be the whole image's, to the pixel."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    from napari_mutualseg.inference import _h_maxima

    rng = np.random.default_rng(0)
    for trial in range(60):
        shape = tuple(rng.integers(8, 60, 2))
        cores = rng.random(shape) < rng.uniform(0.02, 0.9)
        if trial % 3 == 0:  # no pixel of 0 left: h above the image's range finds none
            cores[:] = True
            cores[rng.integers(0, shape[0], 2)] = False
        distance = ndi.distance_transform_edt(cores)
        if trial % 2:
            distance = ndi.gaussian_filter(distance, rng.uniform(0.5, 2))
        for h in (0.5, 1.0, 2.5):
            whole = h_maxima(distance, h).astype(bool) & cores
            assert (_h_maxima(distance, h) & cores == whole).all(), (trial, h)
