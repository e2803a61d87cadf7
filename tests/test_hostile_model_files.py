"""Model and data files made by someone else, damaged or hostile: one line each, nothing written
where the file says, nothing allocated that the file does not hold, never a traceback."""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ldmkit.cli import main
from ldmkit.errors import UserError
from ldmkit.interop import load_bundle
from ldmkit.interop.weights_io import read_weights
from ldmkit.json_text import loads
from tiny_sd import clip_text_model, save_class_model, write_tokenizer


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_class_model(tmp_path_factory.mktemp("m") / "model.safetensors")


def _rewritten(src, dst, *, meta=None, tensors=None):
    """A copy of ldmkit file `src` with metadata entries replaced (values JSON-encoded; None removes
    an entry) and tensors replaced."""
    with safe_open(str(src), "pt") as f:
        metadata = dict(f.metadata())
    for key, value in (meta or {}).items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value if isinstance(value, str) and key.startswith("raw:") else json.dumps(value)
    metadata = {k.removeprefix("raw:"): v for k, v in metadata.items()}
    weights = {**load_file(str(src)), **(tensors or {})}
    save_file(weights, str(dst), metadata=metadata)
    return dst


def _cli_refuses(capsys, *argv):
    """`ldm ARGV` exits 2 with one error line."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    return err


def test_tokenizer_names_with_folders_are_refused_before_anything_is_written(tmp_path):
    from ldmkit.text import CLIPTextEncoder

    model = clip_text_model()
    files = {p.name: p.read_text() for p in write_tokenizer(tmp_path / "tok").iterdir()}
    target = tmp_path / "outside" / "bashrc.txt"
    target.parent.mkdir()
    target.write_text("the user's own file\n")
    for name in ("../../outside/bashrc.txt", str(target), "sub/vocab.json", "..", "model.py"):
        with pytest.raises(UserError, match="not a plain .json or .txt file name"):
            CLIPTextEncoder.from_parts(model.config.to_dict(), model.state_dict(), {**files, name: "written\n"})
    assert target.read_text() == "the user's own file\n"
    encoder = CLIPTextEncoder.from_parts(model.config.to_dict(), model.state_dict(), files)  # the plain names load
    assert encoder.tokenize(["a cat"]).shape == (1, 77)


@pytest.mark.parametrize("field, value", [("base_channels", 40960), ("time_embed_dim", 10**9),
                                          ("num_classes", 10**10), ("context_dim", 10**9)])
def test_a_config_far_larger_than_its_weights_is_refused_before_it_is_built(model_file, tmp_path, capsys, field, value):
    with safe_open(str(model_file), "pt") as f:
        unet_config = json.loads(f.metadata()["unet_config"])
    bomb = _rewritten(model_file, tmp_path / "bomb.safetensors", meta={"unet_config": {**unet_config, field: value}})
    # built first, each of these asked the allocator for 10-4000 GB (a RuntimeError traceback, or the OOM killer)
    with pytest.raises(UserError, match="do not fit UNet"):
        load_bundle(bomb)
    _cli_refuses(capsys, "info", str(bomb))


@pytest.mark.parametrize("meta", [
    {"class_names": 5}, {"format_version": "abc"}, {"format_version": [1]}, {"sampler_defaults": "abc"},
    {"sampler_defaults": {"spacing": 5}}, {"schedule": [1]}, {"schedule": {"kind": "linear", "num_steps": 10**10}},
    {"schedule": {"kind": "linear", "nonsense": 1}}, {"unet_config": None, "vae_config": None},
])
def test_damaged_metadata_is_one_line(model_file, tmp_path, capsys, meta):
    damaged = _rewritten(model_file, tmp_path / "damaged.safetensors", meta=meta)
    with pytest.raises(UserError):
        load_bundle(damaged)
    _cli_refuses(capsys, "info", str(damaged))


@pytest.mark.parametrize("which, field, value", [
    ("unet_config", "norm_eps", "x"), ("unet_config", "freq_shift", "abc"), ("unet_config", "mid_attention", "yes"),
    ("unet_config", "zero_init_output", 7), ("unet_config", "dropout", float("nan")),
    ("vae_config", "logvar_min", "a"), ("vae_config", "norm_eps", -1.0), ("unet_config", "channel_mult", [1] * 10**5),
    ("unet_config", "num_res_blocks", 10**7), ("unet_config", "dropout", 10**400),
])
def test_config_fields_of_the_wrong_kind_are_refused_at_load(model_file, tmp_path, which, field, value):
    with safe_open(str(model_file), "pt") as f:
        config = json.loads(f.metadata()[which])
    # json.dumps writes NaN as NaN, which Python's reader takes: as a file from elsewhere could hold it
    damaged = _rewritten(model_file, tmp_path / "damaged.safetensors", meta={which: {**config, field: value}})
    with pytest.raises(UserError, match=field if field != "channel_mult" else "levels"):
        load_bundle(damaged)


def test_nan_and_non_float_weights_are_refused(model_file, tmp_path):
    weights = load_file(str(model_file))
    nan = weights["unet.conv_out.weight"].clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match=r"NaN or infinite values \(conv_out.weight\).*blank"):
        load_bundle(_rewritten(model_file, tmp_path / "nan.safetensors", tensors={"unet.conv_out.weight": nan}))
    inf = {"vae.decoder.conv_out.bias": torch.full_like(weights["vae.decoder.conv_out.bias"], float("inf"))}
    with pytest.raises(UserError, match="NaN or infinite"):
        load_bundle(_rewritten(model_file, tmp_path / "inf.safetensors", tensors=inf))
    bool_weight = {"unet.conv_out.weight": weights["unet.conv_out.weight"] > 0}
    with pytest.raises(UserError, match="values of the wrong kind: conv_out.weight torch.bool for torch.float32"):
        load_bundle(_rewritten(model_file, tmp_path / "bool.safetensors", tensors=bool_weight))


def test_json_nested_too_deeply_is_a_value_error_everywhere(tmp_path, capsys):
    deep = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ValueError, match="nested too deeply"):
        loads(deep)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(deep)
    _cli_refuses(capsys, "info", str(folder))
    from ldmkit.eval.samples_io import read_samples_info

    (folder / "samples.json").write_text(deep)
    with pytest.raises(UserError, match="not ldmkit's description of the samples"):
        read_samples_info(folder)
    (folder / "samples.json").write_text(json.dumps({"class_names": ["a"], "settings": 5}))
    with pytest.raises(UserError, match="'settings' must be a JSON object"):
        read_samples_info(folder)


def test_a_damaged_evaluation_classifier_is_one_line(tmp_path):
    from ldmkit.eval.classifier import ClassifierConfig, ClassifierNet, load_classifier, save_classifier

    path = tmp_path / "classifier.safetensors"
    save_classifier(ClassifierNet(ClassifierConfig(in_channels=1, num_classes=3, image_size=(8, 8), widths=(4, 8))),
                    path)
    assert load_classifier(path).config.num_classes == 3
    state = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    good = json.loads(metadata["config"])
    for config in (None, "{oops", "[1]", "{}", json.dumps({**good, "widths": [4, 16]}),
                   json.dumps({**good, "widths": [10**9]}), json.dumps({**good, "widths": [1] * 10**5})):
        damaged = {k: v for k, v in metadata.items() if k != "config"} | ({"config": config} if config else {})
        save_file(state, str(tmp_path / "damaged.safetensors"), metadata=damaged)
        with pytest.raises(UserError):
            load_classifier(tmp_path / "damaged.safetensors")


def test_compvis_weights_of_unexpected_rank_are_one_line(tmp_path, capsys):
    path = tmp_path / "one_tensor.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match="CompVis checkpoint"):
        load_bundle(path)
    _cli_refuses(capsys, "info", str(path))


def test_npz_declaring_arrays_larger_than_memory_is_refused_unread(tmp_path):
    from ldmkit.eval.npz_samples import npz_arrays

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**6, 3, 1024, 1024)})
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue())  # the magic and header, no data
    with pytest.raises(UserError, match=r"declares 2929.7 GiB of arrays, more than this machine's"):
        npz_arrays(str(path), None)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_as_a_model_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # opening it to read would wait for a writer for ever
    with pytest.raises(UserError, match="neither a file nor a folder"):
        load_bundle(fifo)


def test_legacy_torch_files_load_and_an_empty_one_says_so(tmp_path):
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_weights(legacy)["w"], torch.ones(2))  # could not be memory-mapped: refused before
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match="empty.ckpt is empty"):
        read_weights(tmp_path / "empty.ckpt")


def test_a_file_that_is_no_pytorch_file_is_not_called_one_of_python_objects(tmp_path):
    """Seven bytes of text were "it holds Python objects besides tensors": any weights-only failure read so."""
    (tmp_path / "garbage.ckpt").write_text("garbage")
    with pytest.raises(UserError, match=r"garbage.ckpt is not a PyTorch weight file \(neither a zip archive nor a "
                                        r"pickle\)$"):
        read_weights(tmp_path / "garbage.ckpt")
