import pickle
import warnings

import numpy as np
import pytest
import tifffile
import torch

from napari_mutualseg.checkpoint import CheckpointError
from napari_mutualseg.models import ModelPair, UNet, build_unet

ARCH = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}


def _pair() -> ModelPair:
    return ModelPair(
        build_unet(ARCH, 0), build_unet(ARCH, 1), (2.0, 99.0), {"rounds": 3, "min_size": 5}
    )


def test_round_trip_keeps_weights_normalisation_and_settings(tmp_path):
    pair = _pair()
    pair.history.append({"round": 1, "loss_a": 0.5})
    pair.cell_size = 42.5
    path = pair.save(tmp_path / "m.pt")
    loaded = ModelPair.load(path, device="cpu")
    assert loaded.percentiles == (2.0, 99.0)
    assert loaded.cell_size == 42.5
    assert loaded.settings == {"rounds": 3, "min_size": 5}
    assert loaded.history == [{"round": 1, "loss_a": 0.5}]
    image = np.random.default_rng(0).random((40, 36)).astype(np.float32) * 100
    np.testing.assert_allclose(loaded.predict_proba(image), pair.predict_proba(image), atol=1e-6)


def test_never_overwrites_by_accident(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        _pair().save(path)
    assert path.read_bytes() == b"precious"
    _pair().save(path, overwrite=True)
    assert ModelPair.load(path).model_a.arch == ARCH
    # a notebook saves the pair it loaded over its own file
    loaded = ModelPair.load(path)
    loaded.history.append({"round": 1})
    loaded.save(path, overwrite=True)
    assert ModelPair.load(path).history == [{"round": 1}]


@pytest.mark.parametrize(
    "content",
    [b"", b"not a model at all", pickle.dumps({"format": "something else"})],
)
def test_bad_files_give_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="napari-mutualseg"):
        ModelPair.load(path)


def test_an_image_given_for_a_model_is_named_as_one(tmp_path):
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.zeros((8, 8), np.uint16))
    with pytest.raises(CheckpointError, match=r"cells.tif is a TIFF image, not a napari-mutual"):
        ModelPair.load(image)
    other = tmp_path / "notes.pt"
    other.write_bytes(b"I am not a model")  # starts like no image, nor like a pickle
    # an HDF5 or NumPy file of another tool was not told what to give instead
    with pytest.raises(CheckpointError, match=r"another kind .*; give a file written by") as info:
        ModelPair.load(other)
    assert "Python objects" not in str(info.value)


def test_truncated_and_foreign_files(tmp_path):
    good = _pair().save(tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        ModelPair.load(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a napari-mutualseg model"):
        ModelPair.load(foreign)
    with pytest.raises(FileNotFoundError):
        ModelPair.load(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_loading_never_runs_code_from_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-mutualseg/pair", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError):
        ModelPair.load(path)
    assert not (tmp_path / "PWNED").exists()


def _payload(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(format_version="1"), "format_version"),
        (
            lambda p: p.update(format_version=2, package_version="9.0"),
            r"written by a newer napari-mutualseg \(9\.0, model format 2\) than this one "
            r"\(.*reads format 1 and older\); upgrade it \(pip install --upgrade napari-mutual",
        ),
        (lambda p: p["arch_a"].update(n_classes=1), "n_classes"),
        (lambda p: [p[k].update(in_channels=1000) for k in ("arch_a", "arch_b")], "in_channels"),
        (lambda p: p["arch_b"].update(in_channels=2), "different numbers of channels"),
        (lambda p: p.update(cell_size=-3.0), "cell size"),
        (lambda p: p.update(pixel_size="0.65"), "pixel size '0.65' is not a positive number"),
        (lambda p: p["arch_a"].update(width=True), "width"),
        (lambda p: p["state_a"]["head.weight"].fill_(float("nan")), "NaN"),
        (lambda p: p.update(percentiles=[99.0, 1.0]), "percentiles"),
        (lambda p: p["settings"].update(min_size="16"), "min_size"),
    ],
)
def test_a_wrong_description_is_one_clear_line(tmp_path, change, message):
    path = _pair().save(tmp_path / "m.pt")
    payload = _payload(path)
    change(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message) as info:
        ModelPair.load(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


@pytest.mark.parametrize(("key", "network"), [("state_a", "network A"), ("state_b", "network B")])
def test_weights_that_are_not_finite_are_refused_with_their_network(tmp_path, key, network):
    path = _pair().save(tmp_path / "m.pt")
    payload = _payload(path)
    payload[key]["head.weight"].view(-1)[0] = float("inf")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"{network}'s tensor head.weight") as info:
        ModelPair.load(path)
    assert "damaged" in str(info.value) and "earlier copy" in str(info.value)


def test_a_huge_network_in_a_small_file_is_refused_before_it_is_built(tmp_path, monkeypatch):
    path = _pair().save(tmp_path / "m.pt")
    payload = _payload(path)
    payload["arch_a"]["width"] = 256
    torch.save(payload, path)
    built, init = [], UNet.__init__

    def spy(self, *args, **kwargs):
        built.append(torch.empty(0).device)  # where new tensors go while it is built
        init(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "__init__", spy)
    with pytest.raises(CheckpointError, match="shape"):
        ModelPair.load(path)
    assert built and all(device.type == "meta" for device in built)


def test_a_file_with_code_says_so_without_advising_to_load_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-mutualseg/pair", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused without running") as info:
        ModelPair.load(path)
    assert "weights_only" not in str(info.value)


def test_weights_damaged_after_saving_are_found(tmp_path):
    import zipfile

    path = _pair().save(tmp_path / "m.pt")
    with zipfile.ZipFile(path) as archive:  # the largest tensor record, stored uncompressed
        tensors = [i for i in archive.infolist() if "/data/" in i.filename]
        record = max(tensors, key=lambda i: i.file_size)
        start = record.header_offset + 30 + len(record.filename) + len(record.extra)
    data = bytearray(path.read_bytes())
    data[start : start + 64] = bytes(64)  # as a bad copy or a failing disk leaves them
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged: its weights changed after it was saved"):
        ModelPair.load(damaged)
    ModelPair.load(path)  # the intact file still loads


def test_a_damaged_file_is_told_without_the_readers_internals(tmp_path):
    # bytes changed anywhere in the file (a bad copy, a failing disk) or a file cut short:
    # the zip reader and the unpickler fail with "KeyError: 105", "internal miniz error",
    # "UnicodeDecodeError", which said nothing to a user
    data = _pair().save(tmp_path / "m.pt").read_bytes()
    rng = np.random.default_rng(0)
    damaged = tmp_path / "damaged.pt"
    messages = set()
    for cut in (10, 300, len(data) // 2, len(data) - 10):
        damaged.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as info:
            ModelPair.load(damaged)
        messages.add(str(info.value))
    for _ in range(40):
        flipped = np.frombuffer(data, np.uint8).copy()
        flipped[rng.integers(0, len(data), 5)] = rng.integers(0, 256, 5, dtype=np.uint8)
        damaged.write_bytes(flipped.tobytes())
        with pytest.raises(CheckpointError) as info:
            ModelPair.load(damaged)
        messages.add(str(info.value))
    for message in messages:
        assert "\n" not in message
        assert not any(word in message for word in ("Error", "miniz", "Python objects"))
    assert any("damaged or incomplete" in m and "copy it again" in m for m in messages)


def test_an_empty_model_file_is_called_empty(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"not a readable .* empty \(0 bytes\)"):
        ModelPair.load(path)


def test_a_folder_or_a_zip_of_other_files_given_as_a_model_is_named(tmp_path):
    import zipfile

    # a Fiji ROI set was called a damaged model; a folder was "no model file"
    rois = tmp_path / "RoiSet.zip"
    with zipfile.ZipFile(rois, "w") as archive:
        archive.writestr("cell-00001.roi", b"Iout")
    with pytest.raises(CheckpointError, match=r"zip archive of other files \(cell-00001.roi\)"):
        ModelPair.load(rois)
    with pytest.raises(CheckpointError, match="is a folder, not a napari-mutualseg model"):
        ModelPair.load(tmp_path)


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_a_file_calling_a_blocked_module_says_it_holds_python_objects(tmp_path):
    # torch words this refusal "unsupported GLOBAL posix.system whose module posix is
    # blocked": it was called a damaged file
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-mutualseg/pair", "settings": {"x": _System()}}, path)
    with pytest.raises(CheckpointError, match=r"Python objects \(\w+\.system\).*refused"):
        ModelPair.load(path)


def test_the_smallest_cell_kept_is_part_of_the_fingerprint():
    from helpers import ThresholdNet

    image = np.zeros((16, 16), np.float32)
    image[4:8, 4:8] = 1  # one cell of 16 pixels
    kept = ModelPair(ThresholdNet(), ThresholdNet(), settings={"min_size": 4})
    dropped = kept.copy()
    dropped.settings["min_size"] = 32
    assert kept.segment(image).max() == 1
    assert dropped.segment(image).max() == 0
    # batch records tell a model's own results by it: these are not the same model's
    assert kept.fingerprint() != dropped.fingerprint()


def test_a_model_without_a_stored_min_size_keeps_its_fingerprint():
    # segmented with the default: the digest of a file from before the setting, and of one
    # with the default, is what batch records made with them hold
    without = _pair()
    del without.settings["min_size"]
    default = without.copy()
    default.settings["min_size"] = 16
    assert without.fingerprint() == default.fingerprint()


def test_info_says_the_smallest_cell_a_model_keeps(tmp_path):
    from napari_mutualseg.cli.info import _text, model_card

    card = model_card(str(_pair().save(tmp_path / "m.pt")))
    assert card["min_size"] == 5
    assert "smallest cell kept: 5 px" in _text(card)


def test_numpy_values_are_saved_plain_and_other_objects_refused_before_writing(tmp_path):
    # a NumPy number or a path in the pair made a file that saved, over a good one with
    # overwrite=True, but never loaded again
    pair = _pair()
    pair.cell_size = np.float32(15)
    pair.history.append({"round": 1, "loss_a": np.float64(0.5)})
    pair.settings["min_size"] = np.int64(5)
    pair.channel_names = (np.str_("DAPI"),)
    path = pair.save(tmp_path / "m.pt")
    loaded = ModelPair.load(path)
    assert (loaded.cell_size, loaded.settings["min_size"], loaded.channel_names) == (
        15.0,
        5,
        ("DAPI",),
    )
    assert type(loaded.history[0]["loss_a"]) is float
    before = path.read_bytes()
    pair.settings["images"] = tmp_path / "plate1"
    with pytest.raises(ValueError, match=r"settings\['images'\] is a \w*Path .*Nothing was"):
        pair.save(path, overwrite=True)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "name",
    # Fiji's ROI sets and QuPath's GeoJSON boxes were replaced by a model with overwrite
    ["cells.tif", "cells.ome.tif", "Cells.PNG", "cells.ome.zarr", "cells.csv", "cells.zip",
     "cells.roi", "cells.geojson", "cells.json"],
)  # fmt: skip
def test_a_model_is_never_saved_under_an_image_or_table_name(tmp_path, name):
    image = tmp_path / name
    image.write_bytes(b"the user's image")
    with pytest.raises(ValueError, match=r"an image or a table.*save the model as .*ells\.pt\b"):
        _pair().save(image, overwrite=True)
    assert image.read_bytes() == b"the user's image"


def test_a_model_named_as_an_image_is_told_its_name_without_a_second_pt(tmp_path):
    with pytest.raises(ValueError, match=r"save the model as \S*cells\.pt\. Nothing"):
        _pair().save(tmp_path / "cells.pt.tif")


@pytest.mark.parametrize(
    ("names", "warned"),
    [(("GFP",), True), (("dapi",), False), (None, False)],
)
def test_a_model_given_a_channel_named_otherwise_warns(names, warned):
    # a nuclei model given a one-channel GFP image used it silently
    from napari_mutualseg.images import AxisImage

    pair = _pair()
    pair.channel_names = ("DAPI",)
    pixels = np.random.default_rng(0).random((1, 16, 16), np.float32)  # intensities, no mask
    image = AxisImage.from_array(pixels, "CYX", channel_names=names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pair.network_input(image)
        pair.network_input(image, channels=[0])  # picked by the user: as asked
    said = [str(w.message) for w in caught]
    if warned:
        assert len(said) == 1 and "trained on DAPI and are given GFP" in said[0]
    else:
        assert said == []


def test_two_models_alike_but_for_their_weights_are_told_apart_by_their_repr(tmp_path):
    # trained alike on other images, two files printed the same line
    first, second = _pair(), _pair()
    second.model_a = build_unet(ARCH, 7)
    loaded = [ModelPair.load(p.save(tmp_path / f"{i}.pt")) for i, p in enumerate((first, second))]
    assert repr(loaded[0]) != repr(loaded[1])
    assert repr(loaded[0]) == repr(first) and f"fingerprint {first.fingerprint()})" in repr(first)


def test_a_file_of_the_first_release_loads_with_its_exchange_settings(tmp_path):
    from napari_mutualseg.config import TrainConfig

    # as 0.1.0 wrote it: no checksum, cell size nor channel names, the exchange rule by name
    path = _pair().save(tmp_path / "m.pt")
    payload = _payload(path)
    for key in ("tensors_sha256", "fields_sha256", "cell_size", "channel_names"):
        del payload[key]
    payload["settings"] = {"rounds": 3, "exchange": "literal", "confidence": 0.7}
    torch.save(payload, path)
    loaded = ModelPair.load(path)
    assert (loaded.cell_size, loaded.channel_names) == (None, None)
    config = TrainConfig.from_dict(loaded.settings)
    assert (config.exchange.rule, config.exchange.confidence) == ("literal", 0.7)


def test_a_model_remembers_its_pixel_size_and_warns_of_images_of_other_pixels(tmp_path):
    # a model trained at 0.65 um segmented 0.325 um images (another objective) silently
    from napari_mutualseg.images import AxisImage

    def image(size, unit="µm"):
        pixels = np.random.default_rng(0).random((32, 32), np.float32)
        return AxisImage.from_array(pixels, "YX", pixel_size={"y": size, "x": size}, unit=unit)

    pair = _pair()
    pair.take_pixel_size([image(650, "nm"), image(0.65), AxisImage.from_array(np.ones((8, 8)))])
    loaded = ModelPair.load(pair.save(tmp_path / "m.pt"))
    assert loaded.pixel_size == 0.65 and "pixels of 0.65 µm" in repr(loaded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for size in (0.6, 0.75):
            loaded.network_input(image(size))  # within the tolerance
        loaded.network_input(np.random.default_rng(0).random((32, 32)))  # no size said
        loaded.network_input(image(0.325))
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "pixels of 0.325 µm" in said[0] and "2 times as wide" in said[0]
    # trained on at another pixel size, the networks know cells of both: no size to warn of
    loaded.take_pixel_size([image(0.325)])
    assert loaded.pixel_size is None


def test_training_records_its_images_pixel_size():
    from helpers import TINY, disc_image
    from napari_mutualseg.images import AxisImage
    from napari_mutualseg.supervision import make_supervision
    from napari_mutualseg.training import MutualTrainer

    pixels, boxes = disc_image()
    image = AxisImage.from_array(pixels, "YX", pixel_size={"y": 0.5, "x": 0.5}, unit="µm")
    trainer = MutualTrainer(image, make_supervision(pixels.shape, boxes), TINY)
    assert trainer.pair.pixel_size == 0.5


def test_a_pair_given_to_torch_save_whole_is_told_how_to_save_it(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(_pair(), path)
    with pytest.raises(CheckpointError, match=r"ModelPair\).*refused.* with pair\.save\(path\)"):
        ModelPair.load(path)


def test_a_copy_shares_no_settings_with_its_pair():
    pair = _pair()
    pair.settings["exchange"] = {"confidence": 0.6}
    pair.copy().settings["exchange"]["confidence"] = 0.9
    assert pair.settings["exchange"] == {"confidence": 0.6}


def test_a_pair_that_does_not_fit_its_new_device_stays_whole_where_it_was(monkeypatch):
    # B did not fit on the GPU after A had moved: the pair said the GPU, A was there, B not
    arch = {"in_channels": 1, "n_classes": 3, "width": 4, "depth": 2}
    pair = ModelPair(build_unet(arch, 0), build_unet(arch, 1))
    pair.device = torch.device("meta")  # where it is (no network is moved here)
    moves = []
    monkeypatch.setattr(pair.model_a, "to", lambda device: moves.append(str(device)))

    def no_room(device):
        raise torch.OutOfMemoryError("stands for a GPU without room for B")

    monkeypatch.setattr(pair.model_b, "to", no_room)
    with pytest.raises(torch.OutOfMemoryError):
        pair.to("cpu")
    assert moves == ["cpu", "meta"] and pair.device == torch.device("meta")


@pytest.mark.parametrize("protocol", [pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_a_pair_given_to_pickle_dump_is_told_how_to_save_it_not_called_damaged(tmp_path, protocol):
    # pickle.dump(pair, f) (or joblib.dump) was called "damaged or incomplete: copy it again"
    path = tmp_path / "m.pt"
    path.write_bytes(pickle.dumps(_pair(), protocol=protocol))
    with pytest.raises(CheckpointError, match=r"refused without running.* pair\.save\(path\)"):
        ModelPair.load(path)
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=protocol))
    with pytest.raises(CheckpointError, match="Python pickle") as info:
        ModelPair.load(path)
    assert "damaged" not in str(info.value)


def test_a_pair_saved_with_its_weights_on_a_gpu_loads_on_a_machine_without_one(tmp_path):
    # what torch.save records of tensors that lived on a GPU: without mapping them to the
    # CPU, torch.load fails here with "Attempting to deserialize object on a CUDA device"
    from unittest import mock

    pair = _pair()
    path = pair.save(tmp_path / "m.pt")
    payload = _payload(path)
    with mock.patch("torch.serialization.location_tag", lambda storage: "cuda:0"):
        torch.save(payload, path)
    loaded = ModelPair.load(path, device="cpu")
    assert loaded.fingerprint() == pair.fingerprint()


def test_values_damaged_after_saving_are_found(tmp_path):
    # a byte changed in the stored normalisation (a bad copy, a failing disk) loaded, and
    # every image was then scaled otherwise: only the weights had a checksum, and PyTorch
    # does not check the zip's own
    import struct

    path = _pair().save(tmp_path / "m.pt")
    data = path.read_bytes()
    stored = b"G" + struct.pack(">d", 99.0)  # the upper percentile as the pickle holds it
    assert data.count(stored) == 1
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(data.replace(stored, b"G" + struct.pack(">d", 98.5)))
    with pytest.raises(CheckpointError, match=r"damaged: its normalisation, settings or hist"):
        ModelPair.load(damaged)
