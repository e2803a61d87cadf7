"""`ldm generate` keeps its work: each batch is written as it is made, an interrupted job keeps
its files and `--skip-existing` makes exactly the rest; a big job skips the grid unless asked;
an --out that cannot be a folder fails before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_class_model

from ldmkit.cli import generate as generate_cli
from ldmkit.cli import main
from ldmkit.pipeline import LatentDiffusionPipeline

CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_tiny_class_model(tmp_path_factory.mktemp("model") / "model.safetensors", CLASSES)


def generate(model_file: Path, out: Path, *flags: str) -> int:
    return main(["generate", "--model", str(model_file), "--n", "6", "--steps", "2", "--batch-size", "2",
                 "--device", "cpu", "--quiet", "--out", str(out), *flags])


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(Image.open(path)) for path in sorted(folder.glob("0*.png"))}


def interrupt_after_batches(monkeypatch, batches: int) -> None:
    """A Ctrl-C while the pipeline makes batch `batches` (0-based), after the earlier ones came out."""
    real_iter = LatentDiffusionPipeline.iter_uint8

    def interrupted(self, seeds, labels, **options):
        for k, images in enumerate(real_iter(self, seeds, labels, **options)):
            if k == batches:
                raise KeyboardInterrupt
            yield images

    monkeypatch.setattr(LatentDiffusionPipeline, "iter_uint8", interrupted)


def test_an_interrupted_job_keeps_its_batches_and_resumes_exactly(model_file, tmp_path, monkeypatch, capsys):
    assert generate(model_file, tmp_path / "whole") == 0  # 6 images, round the classes, in batches of 2
    whole = pngs(tmp_path / "whole")
    assert len(whole) == 6

    interrupt_after_batches(monkeypatch, 2)
    assert generate(model_file, tmp_path / "cut") == 130
    assert "interrupted: 4 of 6 images written" in capsys.readouterr().err
    assert len(pngs(tmp_path / "cut")) == 4 and not (tmp_path / "cut" / "grid.png").exists()
    assert not list((tmp_path / "cut").glob(".*.tmp"))  # no half-written file left
    monkeypatch.undo()

    made = []
    real_latents = LatentDiffusionPipeline.generate_latents

    def recorded(self, seeds, labels, **sampling):
        made.extend(seeds)
        return real_latents(self, seeds, labels, **sampling)

    monkeypatch.setattr(LatentDiffusionPipeline, "generate_latents", recorded)
    assert generate(model_file, tmp_path / "cut", "--skip-existing") == 0
    assert made == [4, 5]  # only the two images the interrupt left
    assert "wrote 2 images" in capsys.readouterr().out
    resumed = pngs(tmp_path / "cut")
    assert resumed.keys() == whole.keys() and all(np.array_equal(resumed[k], whole[k]) for k in whole)
    grids = [np.asarray(Image.open(folder / "grid.png")) for folder in (tmp_path / "cut", tmp_path / "whole")]
    assert np.array_equal(*grids)


def test_without_skip_existing_every_image_is_made_again(model_file, tmp_path):
    assert generate(model_file, tmp_path) == 0
    Image.new("RGB", (16, 16), (0, 0, 0)).save(tmp_path / "00000_seed0_class0.png")
    assert generate(model_file, tmp_path) == 0
    assert np.asarray(Image.open(tmp_path / "00000_seed0_class0.png")).any()  # the black stand-in was replaced


def test_a_big_job_skips_the_grid_unless_asked(model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate_cli, "GRID_MAX_IMAGES", 4)
    assert generate(model_file, tmp_path / "a") == 0
    assert not (tmp_path / "a" / "grid.png").exists()
    assert "no grid of 6 images (more than 4: pass --grid PATH for one)" in capsys.readouterr().out
    assert generate(model_file, tmp_path / "b", "--grid", str(tmp_path / "big_grid.png")) == 0
    assert (tmp_path / "big_grid.png").is_file()


def test_an_out_that_cannot_be_a_folder_fails_before_the_model_loads(model_file, tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(LatentDiffusionPipeline, "from_pretrained", never)
    (tmp_path / "taken").write_text("a file")
    assert generate(model_file, tmp_path / "taken") == 2
    assert f"--out {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err


def test_kept_files_of_another_size_give_a_line_not_a_traceback(model_file, tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "00000_seed0_class0.png")  # made by some other model
    assert generate(model_file, tmp_path, "--skip-existing") == 2
    err = capsys.readouterr().err
    assert "wrote 5 images" in err and "differ in size or mode" in err and "Traceback" not in err
    assert len(pngs(tmp_path)) == 6 and not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("flags, message", [
    (["--steps", "100000"], "steps must be an integer from 1 to 1000, got 100000"),
    (["--cfg-rescale", "5"], "guidance rescale must be in [0, 1], got 5.0"),
    (["--cfg", "nan"], "the guidance scale cfg (--cfg) must be a finite number, got nan"),  # was black images, exit 0
    (["--seed", "-1"], "seed (--seed) must be from 0 to 2**63 - n, got -1"),
    (["--negative-prompt", "blurry"], "--negative-prompt needs a text-to-image model"),  # was ignored
])
def test_sampling_mistakes_stop_before_the_progress_bar(model_file, tmp_path, capsys, flags, message):
    assert main(["generate", "--model", str(model_file), "--n", "1", "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "generating" not in err


def test_grid_mistakes_and_a_full_disk_are_one_line(model_file, tmp_path, monkeypatch, capsys):
    assert generate(model_file, tmp_path / "a", "--grid", str(tmp_path)) == 2
    assert "is a folder; give the grid's file name" in capsys.readouterr().err

    def full_disk(image, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ldmkit.data.images.save_png", full_disk)
    assert generate(model_file, tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "00000_seed0_class0.png: No space left on device" in err


def test_skip_existing_refuses_the_images_of_a_model_with_other_classes(model_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate(model_file, out, "--n", "2") == 0
    assert (out / "samples.json").read_text().count("red") == 1  # what the ids in the names are
    (out / "samples.json").write_text('{"class_names": ["cat", "dog", "cow"]}')  # as another model left it
    before = pngs(out)
    assert generate(model_file, out, "--skip-existing") == 2
    assert f"--skip-existing: the images in {out}/ are of a model with other classes" in capsys.readouterr().err
    after = pngs(out)  # nothing made, nothing lost
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)


def test_skip_existing_keeps_only_whole_images_of_the_same_job(model_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate(model_file, out) == 0
    before = pngs(out)
    assert generate(model_file, out, "--skip-existing", "--steps", "3") == 2  # other settings: refused
    err = capsys.readouterr().err
    assert f"--skip-existing: the images in {out}/ were made with other settings (steps 2, now 3)" in err
    assert generate(model_file, out, "--skip-existing", "--cfg", "2") == 0  # the default, given: the same job
    assert "wrote 0 images" in capsys.readouterr().out
    (out / "00001_seed1_class1.png").write_bytes(b"")  # a file cut short (a full disk, a killed copy)
    assert generate(model_file, out, "--skip-existing") == 0
    assert "wrote 1 images" in capsys.readouterr().out
    after = pngs(out)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # remade exactly


def test_another_jobs_images_that_would_stay_beside_this_ones_are_refused(model_file, tmp_path, capsys):
    """A second job into the same folder overwrote its first images and left the rest: the grid and
    `ldm eval --samples` then mixed two models' or settings' images. Overwriting them all is no
    better: interrupted, then resumed with --skip-existing, it kept the first job's as its own."""
    out = tmp_path / "out"
    assert generate(model_file, out) == 0  # 6 images
    before = pngs(out)
    for n in ("2", "6"):  # fewer images, or as many (each of the first job's would be overwritten)
        assert generate(model_file, out, "--n", n, "--steps", "3") == 2
        err = capsys.readouterr().err
        assert f"{out}/ holds 6 images of another job (00000_seed0_class0.png, ...; steps 2, now 3)" in err
    after = pngs(out)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # nothing overwritten
    assert generate(model_file, out, "--n", "2") == 0  # the same job, fewer images: its own files may stay
    (out / "samples.json").unlink()
    assert generate(model_file, out, "--n", "1") == 2  # images of unknown origin
    assert "no samples.json says which job made them" in capsys.readouterr().err


def test_a_model_that_fails_to_load_leaves_no_out_folder(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "out")]) == 2
    assert "no such model" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "notes.txt").write_text("a file")
    assert main(["generate", "--model", str(tmp_path / "no-such-model"), "--out",
                 str(tmp_path / "notes.txt" / "out")]) == 2  # checked before the model is looked for
    assert f"cannot make the --out folder {tmp_path / 'notes.txt' / 'out'}: {tmp_path / 'notes.txt'} is a file" \
        in capsys.readouterr().err


def test_start_image_mistakes_are_named(model_file, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert generate(model_file, tmp_path / "a", "--init-image", str(tmp_path / "photos")) == 2
    assert f"--init-image {tmp_path / 'photos'} is a folder; give an image file" in capsys.readouterr().err
    Image.new("RGB", (256, 256)).save(tmp_path / "big.png")  # 16 times the model's 16 px: hours on a CPU
    assert generate(model_file, tmp_path / "a", "--init-image", str(tmp_path / "big.png")) == 2
    assert "image size 256x256 is more than 8 times this model's 16x16" in capsys.readouterr().err
    assert generate(model_file, tmp_path / "a", "--init-image", str(tmp_path / "big.png"), "--fit") == 0


def test_cfg_for_an_unconditional_model_is_a_warning(tmp_path, capsys):
    unconditional = save_tiny_class_model(tmp_path / "model.safetensors", [])
    assert main(["generate", "--model", str(unconditional), "--n", "1", "--steps", "1", "--cfg", "3", "--device",
                 "cpu", "--quiet", "--out", str(tmp_path / "out")]) == 0
    assert "warning: --cfg has no effect: this model is unconditional" in capsys.readouterr().err
