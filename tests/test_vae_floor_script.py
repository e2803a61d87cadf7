"""benchmarks/quality/vae_floor.py: a model file's VAE judged on a dataset split, in float32."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ldmkit.train.inference_file import load_inference_file
from script_module import load_script
from test_train_e2e import write_color_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality" / "vae_floor.py"


def test_the_floor_of_each_model_on_each_split(fp32_file, tmp_path):
    from ldmkit.data import load_image_dataset
    from ldmkit.eval import reconstruction_metrics

    data = write_color_dataset(tmp_path / "data", per_class=2, size=16)
    out = tmp_path / "floor.json"
    assert load_script(SCRIPT).main(["--data", str(data), "--split", "train", "--image-size", "16", "--threads", "1",
                           "--models", str(fp32_file), "--out", str(out)]) == 0
    images = torch.stack([x for x, _ in load_image_dataset(str(data), "train", image_size=16, flip=False)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["split"], r["images"], r["model"]) for r in rows] == [("train", len(images), str(fp32_file))]
    # the same numbers as encoding and decoding the images by hand
    vae = load_inference_file(fp32_file, "cpu", require_unet=False)[1].float().eval()
    with torch.no_grad():
        expected = reconstruction_metrics(images, vae.decode(vae.encode(images)).float())
    assert abs(rows[0]["psnr"] - expected["psnr"]) < 1e-6 and abs(rows[0]["ssim"] - expected["ssim"]) < 1e-6
