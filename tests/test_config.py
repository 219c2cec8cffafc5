"""Training settings: what TrainConfig refuses, and what it says when it does."""

import numpy as np
import pytest
import torch

from napari_mutualseg import config as config_module
from napari_mutualseg.checkpoint import ARCH_LIMITS
from napari_mutualseg.config import ExchangeSettings, TrainConfig

MOST_WIDTH = ARCH_LIMITS["width"][1]
MOST_DEPTH = ARCH_LIMITS["depth"][1]


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"rounds": 2.5}, r"rounds must be a whole number of at least 1, got 2\.5"),
        ({"rounds": "2"}, r"rounds must be a whole number of at least 1, got '2'"),
        ({"rounds": True}, r"rounds must be a whole number of at least 1, got True"),
        ({"steps_per_round": 1.5}, r"steps_per_round must be a whole number .* got 1\.5"),
        ({"seed": -1_000_000}, r"seed must be a whole number from 0 to \d+, got -1000000"),
        ({"seed": 1.5}, r"seed must be a whole number from 0 to \d+, got 1\.5"),
        ({"percentiles": (1,)}, r"percentiles must be two numbers .*0 <= low < high <= 100"),
        ({"percentiles": (99, 1)}, r"percentiles must be two numbers .* got \(99, 1\)"),
        ({"min_change": -1}, r"min_change must be a number in \[0, 1\].* got -1"),
        ({"min_change": 5}, r"min_change must be a number in \[0, 1\].* got 5"),
        ({"exchange": "literal"}, r"exchange must be an ExchangeSettings .* got 'literal'"),
        ({"device": 0}, r"device must be text such as 'auto', 'cpu' or 'cuda:0' .* got 0"),
        ({"exchange": {"treshold": 1}}, r"exchange has no setting 'treshold'"),
        (
            {"exchange": ExchangeSettings(min_core_fraction=-1)},
            r"min_core_fraction must be a number in \[0, 1\], got -1",
        ),
        (
            {"exchange": ExchangeSettings(fg_threshold=1)},
            r"fg_threshold must be a number in \(0, 1\), got 1",
        ),
        (
            {"exchange": ExchangeSettings(leak_fraction=0)},
            r"leak_fraction must be a number in \(0, 1\], got 0",
        ),
        (
            {"exchange": ExchangeSettings(leak_fraction=-3)},
            r"leak_fraction must be a number in \(0, 1\], got -3",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_setting_value_and_range(settings, said):
    with pytest.raises(ValueError, match=said):
        TrainConfig(**settings)


@pytest.mark.parametrize(
    ("make", "settings", "said"),
    [
        (TrainConfig, {"round": 5}, r"TrainConfig has no setting 'round' \(did you mean 'rounds'"),
        (TrainConfig, {"steps": 5}, r"'steps' \(did you mean 'steps_per_round'\?\)"),
        (TrainConfig, {"confidence": 0.7}, r"an exchange setting: exchange=\{'confidence'"),
        (ExchangeSettings, {"confidance": 0.7}, r"did you mean 'confidence'"),
    ],
)
def test_a_misspelled_setting_names_the_one_meant(make, settings, said):
    with pytest.raises(TypeError, match=said):
        make(**settings)


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"width": MOST_WIDTH + 1}, rf"width must be a whole number from 1 to {MOST_WIDTH}"),
        (
            {"depth": MOST_DEPTH + 1, "patch_size": 2 ** (MOST_DEPTH + 1)},
            rf"depth must be a whole number from 1 to {MOST_DEPTH}",
        ),
        (
            {"exchange": ExchangeSettings(width_b=MOST_WIDTH + 1)},
            rf"width_b must be a whole number from 1 to {MOST_WIDTH}",
        ),
    ],
)
def test_networks_a_model_file_would_refuse_are_refused_before_training(settings, said):
    with pytest.raises(ValueError, match=said):
        TrainConfig(**settings)


def test_the_largest_networks_a_model_file_takes_are_accepted():
    config = TrainConfig(width=MOST_WIDTH, depth=MOST_DEPTH, patch_size=2**MOST_DEPTH)
    assert (config.width, config.depth) == (MOST_WIDTH, MOST_DEPTH)


def test_numpy_whole_numbers_are_taken_as_plain_ints():
    config = TrainConfig(rounds=np.int64(3), seed=np.uint32(7))
    assert (config.rounds, config.seed) == (3, 7)
    assert type(config.rounds) is int and type(config.seed) is int


def test_input_settings_left_out_hold_their_defaults_and_are_marked_unset():
    config = TrainConfig()
    assert config.percentiles == (1.0, 99.8) and config.rgb == "channels"
    assert config.unset == {"percentiles", "channels", "rgb"}
    given = TrainConfig(percentiles=(1, 99.8), channels=[0], rgb="channels")
    assert given.unset == frozenset() and given.percentiles == config.percentiles


def test_numpy_numbers_and_switches_are_taken_as_plain_values():
    # the settings go into the model file, which refuses NumPy objects when it is read
    config = TrainConfig(
        learning_rate=np.float32(1e-3),
        later_lr_factor=np.float64(0.5),
        min_change=np.float32(0.01),
        parallel=np.True_,
        exchange=ExchangeSettings(
            confidence=np.float32(0.6), width_b=np.int64(8), agreement=np.bool_(True)
        ),
    )
    values = config.to_dict()
    plain = [*values.values(), *values.pop("exchange").values()]
    assert not [v for v in plain if type(v).__module__ == "numpy"]
    assert config.learning_rate == pytest.approx(1e-3) and config.exchange.width_b == 8
    assert config.exchange.agreement is True and config.parallel is True


def test_a_pair_trained_with_numpy_settings_loads_again(tmp_path):
    from napari_mutualseg.models import ModelPair
    from napari_mutualseg.unet import build_unet

    config = TrainConfig(learning_rate=np.float32(1e-3), exchange={"ema": np.float64(0.5)})
    arch = {"in_channels": 1, "n_classes": 3, "width": 2, "depth": 1}
    pair = ModelPair(build_unet(arch, 0), build_unet(arch, 1), settings=config.to_dict())
    loaded = ModelPair.load(pair.save(tmp_path / "pair.pt"), device="cpu")
    assert loaded.settings["exchange"]["ema"] == 0.5


@pytest.mark.parametrize("switch", ["agreement", "flip_labels", "ellipse_background"])
def test_exchange_switches_must_be_true_or_false(switch):
    with pytest.raises(ValueError, match=rf"{switch} must be True or False, got 'no'"):
        TrainConfig(exchange={switch: "no"})


def test_parallel_must_be_true_or_false():
    with pytest.raises(ValueError, match=r"parallel must be True or False, got 2"):
        TrainConfig(parallel=2)
    assert TrainConfig(parallel=0).parallel is False


def test_sizes_left_out_are_those_recommended_for_the_device(monkeypatch):
    # TrainConfig(rounds=3) on a laptop must not train a GPU-sized pair for half an hour
    cpu = TrainConfig(device="cpu", rounds=3)
    assert (cpu.steps_per_round, cpu.batch_size, cpu.patch_size, cpu.depth) == (100, 4, 128, 3)
    assert cpu == TrainConfig.recommended("cpu", rounds=3)
    assert TrainConfig(device="cpu", depth=4, batch_size=2).depth == 4
    monkeypatch.setattr(config_module, "select_device", lambda device: torch.device("cuda", 0))
    gpu = TrainConfig()
    assert (gpu.steps_per_round, gpu.batch_size, gpu.patch_size, gpu.depth) == (200, 8, 256, 4)


def test_a_torch_device_is_held_as_its_name_which_a_model_file_takes(tmp_path):
    # held as the object, it trained, then the pair could not be saved
    settings = TrainConfig(device=torch.device("cpu"), depth=2)
    assert settings.device == "cpu" and settings.to_dict()["device"] == "cpu"
    assert TrainConfig(device=None).device == "auto"


def test_exchange_thresholds_that_no_object_could_pass_are_refused():
    # every box would fall back to its round-1 label, even under a perfect prediction
    with pytest.raises(ValueError, match=r"leak_fraction 0.5 is below the least object .*0\.79"):
        TrainConfig(exchange={"min_core_fraction": 1, "core_scale": 1, "leak_fraction": 0.5})
    TrainConfig(exchange={"min_core_fraction": 1, "core_scale": 1, "leak_fraction": 0.8})
