"""A damaged or mislabelled diffusers folder is one line from `ldm info` / `ldm convert`, never a
traceback (a user-testing report: KeyError, TypeError, AttributeError and transformers' validation
errors from a dozen small damages), and settings no model can generate with are refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_text_to_image import sd_folder  # noqa: F401 (fixture)

from ldmkit.cli import main


def set_field(part: str, key: str, value) -> Callable[[Path], None]:
    """Set one field of `part`/config.json."""
    def damage(folder: Path) -> None:
        path = folder / part / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    return damage


def write(relative: str, text: str, *, alone: bool = False) -> Callable[[Path], None]:
    """Replace a file (`alone`: the only file left in its folder)."""
    def damage(folder: Path) -> None:
        path = folder / relative
        if alone:
            for other in path.parent.glob("*"):
                other.unlink()
        path.write_text(text)
    return damage


def copy(source: str, target: str) -> Callable[[Path], None]:
    return lambda folder: shutil.copy(folder / source, folder / target) and None


def bigger_tokenizer(folder: Path) -> None:
    """A tokenizer of 100 more tokens than the text encoder has embeddings (generation hit an IndexError)."""
    from tiny_sd import write_tokenizer

    shutil.rmtree(folder / "tokenizer")
    vocab_path = write_tokenizer(folder / "tokenizer") / "vocab.json"
    vocab = json.loads(vocab_path.read_text())
    vocab.update({f"extra{k}</w>": len(vocab) + k for k in range(100)})
    vocab_path.write_text(json.dumps(vocab))


DAMAGES = {
    "tokenizer bigger than the encoder's vocabulary": bigger_tokenizer,
    "text encoder config of a UNet": copy("unet/config.json", "text_encoder/config.json"),
    "text encoder config a list": write("text_encoder/config.json", "[]"),
    "text encoder activation unknown": set_field("text_encoder", "hidden_act", "nope"),
    "tokenizer.json garbage": write("tokenizer/tokenizer.json", "garbage", alone=True),
    "tokenizer.json empty object": write("tokenizer/tokenizer.json", "{}", alone=True),
    "UNet layers_per_block null": set_field("unet", "layers_per_block", None),
    "UNet block_out_channels a string": set_field("unet", "block_out_channels", "abc"),
    "UNet sample_size negative": set_field("unet", "sample_size", -3),
    "VAE scaling_factor a string": set_field("vae", "scaling_factor", "abc"),
    "VAE scaling_factor zero": set_field("vae", "scaling_factor", 0),
    "a VAE's config in unet/": copy("vae/config.json", "unet/config.json"),
}


READABLE_BUT_UNUSABLE = {"UNet sample_size negative", "VAE scaling_factor zero"}  # settings, not damage


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_folder_is_one_line(sd_folder, tmp_path, capsys, damage):  # noqa: F811
    folder = Path(shutil.copytree(sd_folder, tmp_path / "sd"))
    DAMAGES[damage](folder)
    for argv in (["info", str(folder)], ["convert", str(folder), str(tmp_path / "out.safetensors")]):
        capsys.readouterr()
        status = main(argv)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        if argv[0] == "info" and damage in READABLE_BUT_UNUSABLE:  # described, and said why it cannot generate
            assert status == 0 and "warning: this model cannot generate" in err, damage
        else:
            assert status == 2, damage
    assert not (tmp_path / "out.safetensors").exists()


def test_conversion_options_no_model_can_use_are_refused(sd_folder, tmp_path, capsys):  # noqa: F811
    from ldmkit.errors import UserError
    from ldmkit.interop import convert

    for options, message in [({"image_size": 15}, "is not a multiple of the VAE's factor 2"),
                             ({"image_size": 100000}, "the image size must be a whole number from 1 to 16384"),
                             ({"image_size": "abc"}, "the image size must be a whole number"),
                             ({"prediction": "bogus"}, "prediction must be one of eps, v, x0")]:
        with pytest.raises(UserError, match=message):
            convert(sd_folder, tmp_path / "out.safetensors", **options)
    assert not (tmp_path / "out.safetensors").exists()
