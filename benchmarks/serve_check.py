"""`ldm serve` as a user runs it: start the command, load the page, ask for images, stop it with
Ctrl-C (SIGINT), and time each part.

    python3 benchmarks/serve_check.py --model emoji --n 64 3 --repeat 3 --out serve.json

The server runs as its own process (`python -m ldmkit.cli serve --port 0`), and this script
reads the address from the line that announces it, so what is timed is the command's startup, the page, the
API and the shutdown, not an in-process stand-in. A table is printed last.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _get(url: str) -> tuple[bytes, float]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        return response.read(), time.perf_counter() - start


def _post(url: str, payload: dict) -> tuple[dict, float]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read()), time.perf_counter() - start


def _png_data_url(pixels) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _start_fields(start: str, size: int) -> dict:
    """The request fields of `--start`: img2img's start image, inpainting's mask too."""
    if start == "none":
        return {}
    import numpy as np

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    red, green = np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))
    image = np.stack([red, green, np.full((size, size), 128, np.uint8)], axis=-1)
    fields = {"init_image": _png_data_url(image)}
    if start == "inpaint":
        mask = np.zeros((size, size), np.uint8)
        mask[:, : size // 2] = 255
        fields["mask"] = _png_data_url(mask)
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="emoji", help="what `ldm serve --model` gets")
    parser.add_argument("--n", type=int, nargs="+", default=[64],
                        help="images per request: --repeat requests of each size, in this order")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps per request")
    parser.add_argument("--repeat", type=int, default=3, help="requests to time")
    parser.add_argument("--device", default="auto", help="`ldm serve --device`")
    parser.add_argument("--compile", default="auto", help="`ldm serve --compile`")
    parser.add_argument("--warm-up", type=int, nargs="+", default=None, help="`ldm serve --warm-up`")
    parser.add_argument("--prompt", default=None, help="the requests' prompt (text-to-image models)")
    parser.add_argument("--start", choices=("none", "img2img", "inpaint"), default="none",
                        help="send a start image (a colour gradient of the model's size; inpaint: and a "
                        "mask of its left half)")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    from PIL import Image

    start = time.perf_counter()
    command = [sys.executable, "-m", "ldmkit.cli", "serve", "--model", args.model, "--port", "0", "--quiet",
               "--device", args.device, "--compile", args.compile, "--max-images", str(max(args.n))]
    command += ["--warm-up", *map(str, args.warm_up)] if args.warm_up else []
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        while first.startswith("warming up"):  # --warm-up's lines come before the address
            first = server.stdout.readline()
        found = re.search(r"at (http://\S+/)", first)
        if not found:
            raise SystemExit(f"ldm serve did not start: {first!r} (exit status {server.poll()})")
        url = found.group(1)
        result: dict = {"model": args.model, "n": args.n, "steps": args.steps, "start": args.start,
                        "first_line": first.strip(),
                        "startup_s": time.perf_counter() - start}
        page, result["page_s"] = _get(url)
        info, result["info_s"] = _get(url + "api/info")
        result["page_bytes"], result["info"] = len(page), json.loads(info)
        start_fields = _start_fields(args.start, result["info"]["image_size"])
        runs = []
        for k, n in enumerate(n for n in args.n for _ in range(args.repeat)):
            request = {"n": n, "steps": args.steps, "seed": 1000 * k}
            if args.prompt is not None:
                request["prompt"] = args.prompt
            request.update(start_fields)
            answer, wall = _post(url + "api/generate", request)
            image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0].split(",", 1)[1])))
            runs.append({"wall_s": wall, "server_s": answer["seconds"], "images": len(answer["images"]),
                         "size": list(image.size), "img_per_s": len(answer["images"]) / wall})
        result["requests"] = runs
    finally:
        stop = time.perf_counter()
        server.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = server.communicate(timeout=120)
    later_lines = rest.strip().splitlines()
    result.update(stop_s=time.perf_counter() - stop, exit_status=server.returncode,
                  later_lines=later_lines, last_line=later_lines[-1] if later_lines else "")

    print(f"{result['first_line']}\n")
    print(f"{'part':<28}{'seconds':>10}  note")
    print(f"{'startup (until serving)':<28}{result['startup_s']:>10.2f}")
    print(f"{'GET /':<28}{result['page_s']:>10.3f}  {result['page_bytes']} bytes")
    print(f"{'GET /api/info':<28}{result['info_s']:>10.3f}")
    for k, run in enumerate(runs):
        print(f"{f'POST /api/generate #{k + 1}':<28}{run['wall_s']:>10.2f}  {run['images']} images "
              f"{run['size'][0]} px, server {run['server_s']:.2f} s, {run['img_per_s']:.1f} img/s")
    print(f"{'Ctrl-C to exit':<28}{result['stop_s']:>10.2f}  exit status {result['exit_status']}, "
          f"last line {result['last_line']!r}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if result["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
