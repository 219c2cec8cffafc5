"""Channels as network input, RGB, and z-stacks and time series through the Python API."""

import numpy as np
import pytest

from helpers import TINY, ThresholdNet
from napari_mutualseg.images import AxisImage
from napari_mutualseg.metrics import evaluate
from napari_mutualseg.models import ModelPair, build_unet
from napari_mutualseg.preprocess import apply_ranges
from napari_mutualseg.supervision import boxes_from_shapes, make_supervision
from napari_mutualseg.synthetic import synthetic_scene, synthetic_volume
from napari_mutualseg.training import MutualTrainer, TrainConfig

# tiny networks train faster on one torch thread (conftest.py)

SETTINGS = {**TINY, "rounds": 1}


@pytest.fixture(scope="module")
def two_channel():
    """Nuclei in channel 1, another scene's nuclei (a distractor) in channel 0."""
    image, _, boxes = synthetic_scene((64, 64), 5, seed=3)
    distractor = synthetic_scene((64, 64), 5, seed=8)[0]
    sup = make_supervision(image.shape, boxes_from_shapes(boxes))
    return np.stack([distractor, image]), image, sup


def test_two_channels_train_two_input_channels_and_say_so(two_channel, tmp_path):
    stack, _, sup = two_channel
    trainer = MutualTrainer([stack], [sup], TrainConfig(**SETTINGS))
    list(trainer)
    pair = ModelPair.load(trainer.pair.save(tmp_path / "two.pt"), device="cpu")
    assert pair.in_channels == 2 and pair.settings["channels"] is None
    assert pair.segment(stack).shape == (64, 64)
    # one channel has none to pick: the advice is another model, not --channel
    with pytest.raises(
        ValueError,
        match="gives the networks 1 channel but they were trained on 2 channels: segment it "
        "with models trained on images like this one",
    ):
        pair.segment(stack[1])
    with pytest.raises(ValueError, match=r"3 channels .* pick 2 channel\(s\) with --channel"):
        pair.segment(np.concatenate([stack, stack[:1]]))
    with pytest.raises(ValueError, match="take 2 channels"):
        MutualTrainer(stack[1], sup, TrainConfig(**SETTINGS), pair=pair)


def test_the_chosen_channel_is_the_input_and_is_found_again_by_name(two_channel, tmp_path):
    stack, image, sup = two_channel
    named = AxisImage.from_array(stack, "CYX", channel_names=["membrane", "nuclei"])
    trainer = MutualTrainer(named, sup, TrainConfig(**SETTINGS, channels=["nuclei"]))
    list(trainer)
    alone = MutualTrainer(image, sup, TrainConfig(**SETTINGS))
    list(alone)
    # the distractor never reaches the networks: the same training as on the nuclei alone
    np.testing.assert_array_equal(trainer.pair.segment(named), alone.pair.segment(image))
    pair = ModelPair.load(trainer.pair.save(tmp_path / "nuclei.pt"), device="cpu")
    assert pair.channel_names == ("nuclei",) and pair.settings["channels"] == ["nuclei"]
    expected = pair.segment(image)
    swapped = AxisImage.from_array(stack[::-1], "CYX", channel_names=["Nuclei", "membrane"])
    np.testing.assert_array_equal(pair.segment(swapped), expected)
    # the model's own channel not found: where another one is picked, in each face's words
    where = "--channel on the command line, channels= in Python"
    with pytest.raises(ValueError, match=f"does not name its channels.*{where}"):
        pair.segment(stack)
    np.testing.assert_array_equal(pair.segment(stack, channels=[1]), expected)
    with pytest.raises(ValueError, match=f"no channel 'DNA'.*by name or by index.*{where}"):
        pair.segment(swapped, channels=["DNA"])


def test_channels_named_by_wavelength_are_found_by_name(two_channel, tmp_path):
    stack, image, sup = two_channel
    named = AxisImage.from_array(stack, "CYX", channel_names=["405", "488"])
    trainer = MutualTrainer(named, sup, TrainConfig(**SETTINGS, channels=["488"]))
    list(trainer)
    pair = ModelPair.load(trainer.pair.save(tmp_path / "488.pt"), device="cpu")
    assert pair.channel_names == ("488",)
    expected = pair.segment(image)
    np.testing.assert_array_equal(pair.segment(named), expected)  # its own training image
    swapped = AxisImage.from_array(stack[::-1], "CYX", channel_names=["488", "405"])
    np.testing.assert_array_equal(pair.segment(swapped), expected)
    np.testing.assert_array_equal(pair.segment(named, channels="488"), expected)


def test_rgb_as_colours_or_gray_and_old_single_channel_models():
    image, _, boxes = synthetic_scene((64, 64), 5, seed=3)
    sup = make_supervision(image.shape, boxes_from_shapes(boxes))
    rgb = np.clip(np.stack([image, image * 0.5, image * 0.2], -1) * 200, 0, 255).astype(np.uint8)
    colours = MutualTrainer(rgb, sup, TrainConfig(**SETTINGS))
    gray = MutualTrainer(rgb, sup, TrainConfig(**SETTINGS, rgb="gray"))
    for trainer in (colours, gray):
        list(trainer)
    assert colours.pair.in_channels == 3 and gray.pair.in_channels == 1
    assert gray.pair.segment(rgb).shape == (64, 64)  # converted as in training
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    old = ModelPair(build_unet(arch, 0), build_unet(arch, 1), settings={"min_size": 16})
    assert old.in_channels == 1 and old.segment(image).shape == (64, 64)
    with pytest.raises(ValueError, match="--rgb gray") as refused:
        old.segment(rgb)
    assert "axes=" not in str(refused.value)  # an RGB picture's colours are no z axis
    assert old.segment(rgb, rgb="gray").shape == (64, 64)


def test_z_stacks_become_3d_objects_and_time_series_keep_labels():
    volume, truth = synthetic_volume((10, 64, 64), 5, noise=0.02, seed=4)
    pair = ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})
    stack = AxisImage.from_array(volume, "ZYX")
    labels = pair.segment(stack)
    assert labels.shape == volume.shape
    scores = evaluate(labels, truth)
    assert scores["n_pred"] == scores["n_gt"] == 5 and scores["ap_50"] == 1.0
    planes = pair.segment(volume, axes="ZYX", link=False)  # each plane's cells on their own
    per_plane = [len(np.unique(p)) - 1 for p in labels]
    assert [len(np.unique(p)) - 1 for p in planes] == per_plane
    assert len(np.unique(planes)) - 1 == sum(per_plane)  # no two planes' cells share a label
    done = []
    tracked = pair.segment(volume, axes="TYX", track=True, progress=lambda d, n: done.append(d))
    np.testing.assert_array_equal(tracked, labels)
    assert done == list(range(1, 11))
    frames = pair.segment(volume, axes="TYX")  # frames numbered alone, measured apart
    assert [int(f.max()) for f in frames] == per_plane
    with pytest.raises(ValueError, match="axes='ZYX'"):
        pair.segment(volume)


def test_a_stack_trains_on_its_boxed_planes_normalised_like_the_stack(two_channel):
    _, image, sup = two_channel
    volume = np.stack([image * 0.2, image, image * 3.0])  # a dim and a bright plane around
    stack = AxisImage.from_array(volume, "ZYX")
    trainer = MutualTrainer(stack, [None, sup, None], TrainConfig(**SETTINGS))
    assert len(trainer.images) == 1
    expected = apply_ranges(volume[1][None], stack.channel_ranges())
    np.testing.assert_allclose(trainer.images[0], expected)
    assert trainer.images[0].max() < 0.5  # not stretched to 1: the bright plane sets the top
    with pytest.raises(ValueError, match="one supervision"):
        MutualTrainer(stack, [sup], TrainConfig(**SETTINGS))
    with pytest.raises(ValueError, match="at least one plane"):
        MutualTrainer(stack, [None, None, None], TrainConfig(**SETTINGS))


def test_channels_sharing_a_name_are_never_picked_by_that_name():
    rng = np.random.default_rng(0)
    data = rng.random((3, 16, 20)).astype(np.float32)
    image = AxisImage.from_array(data, "CYX", channel_names=["DAPI", "GFP", "gfp"])
    with pytest.raises(ValueError, match=r"2 channels called 'GFP' \(indices 1, 2\).*index"):
        image.select(["GFP"])
    np.testing.assert_array_equal(image.select([2]).plane(0)[0], data[2])
    # a model trained on channel 2 of such an image (its name GFP stored with it) was given
    # channel 1, the first called GFP, without a word
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    pair = ModelPair(
        build_unet(arch, 0), build_unet(arch, 1), settings={"channels": [2]},
        channel_names=("GFP",),
    )  # fmt: skip
    np.testing.assert_array_equal(pair.network_input(image).plane(0)[0], data[2])
