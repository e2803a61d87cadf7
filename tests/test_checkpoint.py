"""Checkpoints: atomic round trip, crash mid-save, corrupt files, RNG state round trip."""
from __future__ import annotations

import os
import random

import pytest
import torch

from ldmkit.errors import UserError
from ldmkit.train import checkpoint as ckpt
from ldmkit.train.rng import capture_rng_state, restore_rng_state


def _state(value: float) -> dict:
    return {
        "step": 7,
        "model": {"w": torch.full((3, 4), value), "b": torch.arange(4.0)},
        "data": {"offset": 123},
        "rng": capture_rng_state(),
        "note": "hello",
        "maybe": None,
        "losses": [1.0, 2.5],
    }


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_training_state(path, _state(1.5))
    loaded = ckpt.load_training_state(path)
    assert loaded["step"] == 7 and loaded["note"] == "hello" and loaded["maybe"] is None
    assert torch.equal(loaded["model"]["w"], torch.full((3, 4), 1.5))
    assert loaded["data"] == {"offset": 123}
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_training_state(path, _state(1.0))

    real_save = torch.save

    def save_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the new bytes are (partly) on disk...
        f.write(b"\x00" * 10)
        raise OSError("disk died mid-write")  # ...and then the process dies

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(OSError):
        ckpt.save_training_state(path, _state(2.0))
    monkeypatch.undo()

    loaded = ckpt.load_training_state(path)
    assert torch.equal(loaded["model"]["w"], torch.full((3, 4), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_is_an_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    """torch.save into the file turned ENOSPC into a RuntimeError from its zip writer ("unexpected
    pos"), printed as a traceback; and an error without a file name named none."""
    import errno

    import ldmkit.atomic

    path = tmp_path / "checkpoint.pt"
    ckpt.save_training_state(path, _state(1.0))

    class FullDisk:
        def __init__(self, *args, **kwargs) -> None:
            self.file = open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ldmkit.atomic, "open", FullDisk, raising=False)
    with pytest.raises(OSError) as caught:
        ckpt.save_training_state(path, _state(2.0))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(path))
    monkeypatch.undo()
    assert torch.equal(ckpt.load_training_state(path)["model"]["w"], torch.full((3, 4), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_crash_at_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_training_state(path, _state(1.0))
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        ckpt.save_training_state(path, _state(3.0))
    monkeypatch.undo()
    assert torch.equal(ckpt.load_training_state(path)["model"]["w"], torch.full((3, 4), 1.0))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_a_user_error(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_training_state(path, _state(1.0))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 50)
    else:
        path.write_bytes(b"")
    with pytest.raises(UserError, match="unreadable or corrupt"):
        ckpt.load_training_state(path)


def test_missing_and_foreign_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        ckpt.load_training_state(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not an ldmkit"):
        ckpt.load_training_state(foreign)


def test_code_is_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "payload": Evil()}, path)
    with pytest.raises(UserError):
        ckpt.load_training_state(path)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    random.seed(3)
    torch.manual_seed(3)
    ckpt.save_training_state(path, {"rng": capture_rng_state()})
    expected = (random.random(), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(ckpt.load_training_state(path)["rng"])
    got = (random.random(), torch.rand(3))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])


# -- the inference file ---------------------------------------------------------------------------


def _micro_models():
    from ldmkit.models import UNET_PRESETS, VAE_PRESETS, AutoencoderKL, UNet

    torch.manual_seed(0)
    vae = AutoencoderKL(VAE_PRESETS["tiny"](block_channels=(8, 16), norm_groups=4, mid_attention=False))
    vae.set_latent_stats(shift=[0.1, 0.2, 0.3, 0.4], scale=2.0)
    unet = UNet(UNET_PRESETS["tiny"](base_channels=16, channel_mult=(1, 2), attention_levels=(1,), head_dim=16,
                                     norm_groups=4, num_classes=3, zero_init_output=False))
    return unet.eval(), vae.eval()


def test_inference_file_rebuilds_both_models_from_its_metadata(tmp_path):
    from ldmkit.train import RunConfig, load_inference_file, read_inference_metadata, save_inference_file

    unet, vae = _micro_models()
    run_config = RunConfig(image_size=8).to_dict()
    save_inference_file(tmp_path / "model.safetensors", unet=unet, vae=vae, run_config=run_config,
                        extra={"class_names": ["a", "b", "c"], "step": 12, "schedule": {"kind": "linear"}})
    for where in (tmp_path / "model.safetensors", tmp_path):  # the file, or the RUN folder holding it
        unet2, vae2, meta = load_inference_file(where, "cpu")
        assert meta["class_names"] == ["a", "b", "c"] and meta["step"] == 12 and meta["image_size"] == 8
        assert meta["channels"] == 3 and meta["prediction"] == "eps" and meta["schedule"] == {"kind": "linear"}
        assert meta["unet_config"] == unet.config.to_dict() and meta["run_config"] == run_config
        x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([3.0, 700.0]), torch.tensor([0, 3])
        with torch.no_grad():
            assert torch.equal(unet2(x, t, class_labels=y), unet(x, t, class_labels=y))
            assert torch.equal(vae2.decode(x), vae.decode(x))
    assert read_inference_metadata(tmp_path)["ldmkit_version"]


def test_inference_file_errors(tmp_path):
    from safetensors.torch import save_file

    from ldmkit.train import load_inference_file, save_inference_file

    with pytest.raises(UserError, match="no such model file"):
        load_inference_file(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="holds no model.safetensors"):
        load_inference_file(tmp_path)
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(UserError, match="not an ldmkit model file"):
        load_inference_file(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_inference_file(tmp_path / "junk.safetensors")
    _, vae = _micro_models()
    save_inference_file(tmp_path / "vae.safetensors", unet=None, vae=vae, run_config={})
    with pytest.raises(UserError, match="only a VAE"):
        load_inference_file(tmp_path / "vae.safetensors")
    unet, vae2, _ = load_inference_file(tmp_path, require_unet=False)  # a --stage vae RUN folder
    assert unet is None and torch.equal(vae2.latent_scale, vae.latent_scale)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_get_the_mode_a_new_file_gets(tmp_path, umask):
    """safetensors' save_file makes 0600 files: a model converted by one account was unreadable by
    the server's; every atomic save now gives 0o666 less the umask, as `open` does."""
    from ldmkit.atomic import atomic_save_safetensors, atomic_write_text

    before = os.umask(umask)
    try:
        saved = atomic_save_safetensors(tmp_path / "m.safetensors", {"w": torch.zeros(2)})
        text = atomic_write_text(tmp_path / "c.json", "{}")
    finally:
        os.umask(before)
    assert {oct(p.stat().st_mode & 0o777) for p in (saved, text)} == {oct(0o666 & ~umask)}
