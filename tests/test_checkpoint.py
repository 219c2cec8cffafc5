import pickle

import numpy as np
import pytest
import torch

from napari_mutualseg.checkpoint import CheckpointError
from napari_mutualseg.models import ModelPair, build_unet

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


@pytest.mark.parametrize(
    "content",
    [b"", b"not a model at all", pickle.dumps({"format": "something else"})],
)
def test_bad_files_give_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="napari-mutualseg"):
        ModelPair.load(path)


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
