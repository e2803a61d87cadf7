#!/usr/bin/env python3
"""Build ldmkit's embedded "emoji" dataset from the npm package emoji-datasource-google.

Run once by a maintainer (needs npm and network, or an already unpacked package):

    python scripts/build_emoji_dataset.py                      # npm pack into a temp dir
    python scripts/build_emoji_dataset.py --package-dir DIR    # DIR holds emoji.json, img/

Writes `src/ldmkit/data/assets/emoji64.npz` (np.savez_compressed) with

- `images`      uint8 [N, 64, 64, 3], each 64 px Noto Emoji PNG composited on white;
- `labels`      int64 [N], index into `class_names`;
- `class_names` str [K], the 10 emoji.json `category` values (Unicode's emoji categories), sorted;
- `is_val`      bool [N], a fixed held-out split: round(5%) of each class, seeded;
- `unified`     str [N], the emoji's code points, so every image can be traced back;

and `EMOJI_NOTICE.txt` with the images' attribution and Apache-2.0 licence text.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE_SPEC = "emoji-datasource-google@16.0.0"
IMAGE_SIZE = 64
VAL_FRACTION = 0.05
VAL_SEED = 0
# None: "Component" (skin-tone swatches and hair pieces, 9 images) is one of Unicode's 10 emoji
# categories, and the bundled emoji model is conditioned on all 10.
SKIPPED_CATEGORIES: set[str] = set()
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "ldmkit" / "data" / "assets"
DEFAULT_LICENSE = Path("/usr/share/common-licenses/Apache-2.0")

NOTICE_HEADER = """\
ldmkit embedded "emoji" dataset (emoji64.npz)
=============================================

The images in emoji64.npz are the 64x64 pixel Google emoji images of the npm package
{spec} (https://github.com/iamcal/emoji-data), composited on a
white background by scripts/build_emoji_dataset.py. Their labels come from that package's
emoji.json ("category" field), which is distributed under the MIT License (text at the end).

The images are from Noto Emoji (https://github.com/googlefonts/noto-emoji), v2.048,
Copyright Google Inc., available under the Apache License, Version 2.0 (full text below).
Noto Emoji's flag images (from its third_party/region-flags directory) are in the public
domain or otherwise exempt from copyright.

Changes made: each image was alpha-composited onto an opaque white background and
converted to 8-bit RGB; skin-tone variants were left out.

------------------------------------------------------------------------------------------

"""


def fetch_package(workdir: Path) -> Path:
    """`npm pack` the pinned package into `workdir` and unpack it; returns the package dir."""
    subprocess.run(["npm", "pack", PACKAGE_SPEC], cwd=workdir, check=True)
    (tarball,) = workdir.glob("emoji-datasource-google-*.tgz")
    with tarfile.open(tarball) as archive:
        archive.extractall(workdir, filter="data")
    return workdir / "package"


def composite_on_white(path: Path) -> np.ndarray:
    """RGBA PNG -> uint8 [64, 64, 3] on white (transparent pixels can hide any colour)."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    if rgba.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise SystemExit(f"{path}: expected {IMAGE_SIZE}x{IMAGE_SIZE}, got {rgba.size}")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def held_out_mask(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """round(VAL_FRACTION) of each class (at least one), chosen by a seeded permutation."""
    rng = np.random.default_rng(VAL_SEED)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        count = max(1, round(VAL_FRACTION * len(members)))
        is_val[rng.permutation(members)[:count]] = True
    return is_val


def build(package_dir: Path, out_dir: Path, license_file: Path) -> None:
    """Read the unpacked package, write emoji64.npz and EMOJI_NOTICE.txt into `out_dir`."""
    entries = json.loads((package_dir / "emoji.json").read_text(encoding="utf-8"))
    image_dir = package_dir / "img" / "google" / "64"
    # Top-level entries are the base emoji; skin-tone variants live under "skin_variations".
    kept = [
        entry
        for entry in sorted(entries, key=lambda entry: entry["sort_order"])
        if entry["category"] not in SKIPPED_CATEGORIES
        and entry.get("has_img_google", False)
        and (image_dir / entry["image"]).is_file()
    ]
    class_names = sorted({entry["category"] for entry in kept})
    images = np.stack([composite_on_white(image_dir / entry["image"]) for entry in kept])
    labels = np.array([class_names.index(entry["category"]) for entry in kept], dtype=np.int64)
    is_val = held_out_mask(labels, len(class_names))

    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / "emoji64.npz",
        images=images,
        labels=labels,
        class_names=np.array(class_names),
        is_val=is_val,
        unified=np.array([entry["unified"] for entry in kept]),
    )
    notice = (
        NOTICE_HEADER.format(spec=PACKAGE_SPEC)
        + license_file.read_text(encoding="utf-8")
        + "\n" + "-" * 90 + "\n\nemoji-datasource-google (emoji.json):\n\n"
        + (package_dir / "LICENSE").read_text(encoding="utf-8")
    )
    (out_dir / "EMOJI_NOTICE.txt").write_text(notice, encoding="utf-8")

    size_mb = (out_dir / "emoji64.npz").stat().st_size / 1e6
    print(f"{len(kept)} images ({int(is_val.sum())} val), {len(class_names)} classes, {size_mb:.2f} MB")
    for index, name in enumerate(class_names):
        print(f"  {index}: {name}: {int((labels == index).sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package-dir", type=Path, help="an unpacked emoji-datasource-google package")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="assets folder to write")
    parser.add_argument("--license-file", type=Path, default=DEFAULT_LICENSE,
                        help="the Apache-2.0 licence text to append to the notice")
    args = parser.parse_args()
    if not args.license_file.is_file():
        raise SystemExit(f"Apache-2.0 licence text not found at {args.license_file}; pass --license-file")
    if args.package_dir is not None:
        build(args.package_dir, args.out, args.license_file)
        return
    with tempfile.TemporaryDirectory() as workdir:
        build(fetch_package(Path(workdir)), args.out, args.license_file)


if __name__ == "__main__":
    main()
