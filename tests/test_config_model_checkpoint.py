"""Override parser, ImageNet weights offline/cached, checkpoint round trip and refusal of foreign files."""

import re
import urllib.error

import pytest
import torch

from src.core.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_model, save_checkpoint
from src.core.model import (
    MelanomaNet,
    WeightsUnavailable,
    build_model,
    imagenet_weights,
    weights_cache_path,
)
from src.core.runtime import Runtime
from src.training.config import ConfigError, apply_overrides

from helpers import file_size_limit

DEFAULTS = {"BATCH_SIZE": 32, "LEARNING_RATE": 0.001, "AMP": True, "ARCH": "resnet50"}


def test_overrides_good_values():
    c = apply_overrides(
        DEFAULTS, ["--BATCH_SIZE=8", "--LEARNING_RATE=3e-4", "--AMP=false", "--ARCH=resnet18"]
    )
    assert c == {"BATCH_SIZE": 8, "LEARNING_RATE": 3e-4, "AMP": False, "ARCH": "resnet18"}
    assert apply_overrides(DEFAULTS, ["--LEARNING_RATE=1"])["LEARNING_RATE"] == 1.0  # int text for a float
    assert DEFAULTS["BATCH_SIZE"] == 32  # the defaults are not modified


@pytest.mark.parametrize(
    "arg,message",
    [
        ("--BATCH_SIZE=3.5", "--BATCH_SIZE=3.5: expected a int (the default is 32)"),
        ("--AMP=maybe", "--AMP=maybe: expected True or False (the default is True)"),
        ("--LEARNING_RATE=fast", "--LEARNING_RATE=fast: expected a float"),
        ("--EPOCHS=3", "unknown setting 'EPOCHS'. Valid settings: AMP, ARCH, BATCH_SIZE, LEARNING_RATE"),
        ("BATCH_SIZE=3", "expected --NAME=value, got 'BATCH_SIZE=3'"),
    ],
)
def test_overrides_bad_values(arg, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(DEFAULTS, [arg])
    assert message in str(e.value)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty torch cache and a download that fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


def test_offline_without_cached_weights_names_the_file(no_network):
    with pytest.raises(WeightsUnavailable) as e:
        build_model("resnet50", pretrained=True)
    msg = str(e.value)
    expected = no_network / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert f"Expected file: {expected}" in msg and "--PRETRAINED=False" in msg
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in msg


def cache_under_its_hash(monkeypatch, state) -> None:
    """Put `state` in the torch cache under a torchvision-style name carrying its own SHA-256 prefix,
    as a genuine download would be, and point resnet50's weights at that name."""
    import hashlib
    import shutil
    import types

    import src.core.model as model_module

    path = weights_cache_path(imagenet_weights("resnet50"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / "incoming.pth"
    torch.save(state, tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    url = f"https://download.pytorch.org/models/resnet50-{sha[:8]}.pth"
    shutil.move(tmp, path.parent / f"resnet50-{sha[:8]}.pth")
    monkeypatch.setattr(model_module, "imagenet_weights", lambda arch: types.SimpleNamespace(url=url))


def test_weights_in_torch_cache_load_without_network(no_network, monkeypatch):
    import torchvision

    reference = torchvision.models.resnet50(weights=None)
    cache_under_its_hash(monkeypatch, reference.state_dict())
    model = build_model("resnet50", pretrained=True)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[2].bn3.running_var, reference.layer4[2].bn3.running_var)
    assert model.backbone.fc.out_features == 1


class PlantedPayload:
    """Unpickling this writes a marker file: proof that pickled code ran."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_pickle_in_the_weight_cache_is_refused_and_never_run(no_network, tmp_path):
    PlantedPayload.marker = tmp_path / "pwned"
    path = weights_cache_path(imagenet_weights("resnet18"))  # the real published name, resnet18-f37072fd.pth
    path.parent.mkdir(parents=True)
    torch.save({"conv1.weight": PlantedPayload()}, path)
    with pytest.raises(WeightsUnavailable, match="is not the published file: its SHA-256 is"):
        build_model("resnet18", pretrained=True)
    assert not PlantedPayload.marker.exists()


def test_pickle_whose_hash_matches_its_name_is_still_never_run(no_network, tmp_path, monkeypatch):
    PlantedPayload.marker = tmp_path / "pwned"
    cache_under_its_hash(monkeypatch, {"conv1.weight": PlantedPayload()})
    with pytest.raises(WeightsUnavailable, match="could not be loaded as plain weights"):
        build_model("resnet50", pretrained=True)
    assert not PlantedPayload.marker.exists()


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model = MelanomaNet("resnet18").eval()
    ckpt = {
        "format": FORMAT,
        "arch": "resnet18",
        "img_size": 32,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "threshold": 0.3,
        "temperature": 1.5,
        "model_state": model.state_dict(),
        "config": {"SEED": 1},
    }
    save_checkpoint(ckpt, tmp_path / "a.pth")
    raw = torch.load(tmp_path / "a.pth", weights_only=True)  # loads without running pickled code
    assert raw["threshold"] == 0.3
    back, info = load_model(tmp_path / "a.pth")
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(back(x), model(x))
    assert torch.equal(back.mean, model.mean) and torch.equal(
        back.std, model.std
    )  # normalisation travels along
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_checkpoint_write_is_an_os_error_and_keeps_the_old_file(tmp_path):
    import errno

    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path)
    old = path.read_bytes()
    with file_size_limit(4096), pytest.raises(OSError) as caught:  # torch alone says "unexpected pos"
        save_checkpoint({"epoch": 2, "weights": torch.zeros(10_000)}, path)
    assert caught.value.errno == errno.EFBIG
    assert path.read_bytes() == old and not list(tmp_path.glob(".*.tmp"))


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is not a readable PyTorch checkpoint"),
        (b"PK\x03\x04 garbage", "is not a readable PyTorch checkpoint"),
        ("foreign", "is not a checkpoint of this project"),
        ("evil", "refusing to load it (weights_only=True)"),
    ],
)
def test_bad_checkpoints_are_refused_clearly(tmp_path, content, message, capsys):
    path = tmp_path / "x.pth"
    if content == "foreign":
        torch.save({"state_dict": {}}, path)
    elif content == "evil":
        torch.save({"format": FORMAT, "payload": Evil()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "amp, bf16, expected", [(True, True, torch.bfloat16), (True, False, torch.float16), (False, True, None)]
)
def test_inference_autocast_follows_the_training_runs_amp_setting(monkeypatch, amp, bf16, expected):
    # Evaluation must compute what the run's own validation computed: an AMP=False run in fp32.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    rt = Runtime.for_inference({"config": {"AMP": amp}})
    assert rt.device.type == "cuda" and rt.amp_dtype == expected
