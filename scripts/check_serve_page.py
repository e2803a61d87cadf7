"""Drive `ldm serve`'s page in a real browser (headless Chromium), as a user would.

A start image is uploaded (img2img), paint is laid over it with the mouse (inpainting), the start
image is dropped, a long job shows its steps and progress bar and is stopped, bad strengths are
refused. Unlike a DOM stub, the browser decodes the upload, draws the canvases, encodes the PNGs
the server receives and loads the images it answers; the script checks those pixels. Each check
prints a line; the script exits 1 at the first that fails. Not part of the test suite (it needs a
browser). On Debian:

    apt-get install chromium && pip install playwright
    python scripts/check_serve_page.py            # starts `ldm serve --model emoji --device cpu`

`--url URL` drives a server that is already running instead; `--browser PATH` names another
Chromium (default: $CHROMIUM or /usr/bin/chromium; playwright's own download works too).
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import numpy as np
from PIL import Image


def check(what: str, ok: bool, detail: object = None) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail is not None else ""), flush=True)
    if not ok:
        sys.exit(1)


def decode(data_url: str) -> np.ndarray:
    """A data URL's image as uint8 [H, W, C]."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


@contextmanager
def serving(url: str | None):
    """The server's address: `url`, or a fresh `ldm serve` on a free port, ended afterwards."""
    if url:
        yield url.rstrip("/")
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ldmkit.cli", "serve", "--model", "emoji", "--device", "cpu",
                               "--port", str(port), "--quiet"])
    address = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(address + "/api/info", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"ldm serve ended with exit status {server.returncode}")
                time.sleep(0.1)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)


def photo(path: str) -> None:
    """A 640x480 JPEG, left half red, right half blue: its centre square, scaled to the model's
    size, is red in the left half and blue in the right."""
    pixels = np.zeros((480, 640, 3), np.uint8)
    pixels[:, :320] = (220, 30, 30)
    pixels[:, 320:] = (30, 40, 220)
    Image.fromarray(pixels).save(path, quality=95)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running `ldm serve` (default: start one)")
    parser.add_argument("--browser", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                        help="the Chromium to drive (default: $CHROMIUM or /usr/bin/chromium)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    upload = "/tmp/ldmkit_check_photo.jpg"
    photo(upload)
    with serving(args.url) as address, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=args.browser if os.path.exists(args.browser) else None)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        sent: list[dict] = []
        page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/api/generate") else None)
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(address + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('class-conditional')")
        check("the form is built from /api/info", True, page.text_content("#model"))
        check("no start image at first", page.is_hidden("#start"))

        def answered(timeout_ms: float = 600_000) -> None:  # after a submit: its answer came and was shown
            page.wait_for_function("!document.getElementById('go').disabled", timeout=timeout_ms)

        def submit() -> None:
            with page.expect_request("**/api/generate"):
                page.click("#go")

        def shown_images() -> list[int]:  # the natural widths of the answered images, once all loaded
            page.wait_for_function("[...document.querySelectorAll('#images img')].every(i => i.complete)")
            return page.eval_on_selector_all("#images img", "images => images.map(i => i.naturalWidth)")

        page.set_input_files("#init_file", upload)
        page.wait_for_function("!document.getElementById('start').hidden")
        size = page.eval_on_selector("#init_canvas", "c => c.width")
        shown = np.array(page.eval_on_selector(
            "#init_canvas", "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"),
            np.uint8).reshape(size, size, 4)
        left, right = shown[:, : size // 2 - 2, :3].mean((0, 1)), shown[:, size // 2 + 2:, :3].mean((0, 1))
        check("the upload is drawn at the model's size, its centre square", size == 64 and left[0] > 180
              and left[2] < 70 and right[2] > 180 and right[0] < 70, f"{size} px, left {left.round()}, right "
              f"{right.round()}")

        page.fill("#n", "2")
        page.fill("#strength", "0.5")
        submit()
        answered()
        img2img = sent[-1]
        start = decode(img2img["init_image"])
        check("img2img: the start image sent is the one shown", start.shape == (64, 64, 3)
              and np.abs(start.astype(int) - shown[..., :3]).max() <= 2, start.shape)
        check("img2img: strength 0.5, no mask", img2img["strength"] == 0.5 and "mask" not in img2img)
        check("img2img: two images shown", shown_images() == [64, 64], page.text_content("#status"))

        box = page.locator("#mask_canvas").bounding_box()  # shown at 256 px: 4 screen px a model px
        page.mouse.move(box["x"] + 20, box["y"] + 20)
        page.mouse.down()
        for y in (93, 166, 240):  # a quick stroke: few pointer events, far apart (it painted three dots)
            page.mouse.move(box["x"] + 20, box["y"] + y)
        page.mouse.up()
        page.fill("#strength", "")
        submit()
        answered()
        inpaint = sent[-1]
        mask = decode(inpaint["mask"])[..., 0]
        columns = sorted({int(c) for c in np.nonzero(mask > 127)[1]})
        rows = np.nonzero(mask[:, 5] > 127)[0]
        check("inpaint: the mouse's stroke is the mask's white", columns and columns[0] >= 2 and columns[-1] <= 8
              and 5 in columns and rows.min() <= 6 and rows.max() >= 57, f"columns {columns}, rows "
              f"{rows.min()}-{rows.max()}")
        check("inpaint: a quick stroke is one line, not dots", len(rows) == rows.max() - rows.min() + 1,
              rows.tolist())
        check("inpaint: the mask is black and white", set(np.unique(mask)) <= {0, 255}, np.unique(mask)[:6].tolist())
        check("inpaint: strength left to the server", "strength" not in inpaint)
        check("inpaint: two images shown", shown_images() == [64, 64], page.text_content("#status"))

        def halves_sent(left: tuple, right: tuple) -> tuple[set, set]:
            """Upload a 640x480 mask of two colours (its centre square: left | right), generate, and
            return the grey levels of the mask sent in the left and right thirds."""
            pixels = np.zeros((480, 640, 3), np.uint8)
            pixels[:, :320], pixels[:, 320:] = left, right
            Image.fromarray(pixels).save("/tmp/ldmkit_check_mask.png")
            page.evaluate("() => { document.getElementById('status').textContent = ''; }")
            page.set_input_files("#mask_file", "/tmp/ldmkit_check_mask.png")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('mask:')")
            submit()
            answered()
            mask = decode(sent[-1]["mask"])[..., 0]
            return set(np.unique(mask[:, :30]).tolist()), set(np.unique(mask[:, 34:]).tolist())

        check("a mask file, the keyboard's way to paint, is the mask sent",
              halves_sent((0, 0, 0), (255, 255, 255)) == ({0}, {255}), page.text_content("#status"))
        check("a coloured mask paints what --mask redraws (grey level >= 128): green yes, magenta no",
              halves_sent((0, 255, 0), (255, 0, 255)) == ({255}, {0}), page.text_content("#status"))

        page.click("#drop_init")
        check("the start image can be dropped", page.is_hidden("#start") and page.input_value("#init_file") == "")
        submit()
        answered()
        check("then requests are plain again", "init_image" not in sent[-1], page.text_content("#status"))

        page.fill("#n", "8")
        page.fill("#steps", "50")
        submit()
        page.wait_for_function("!document.getElementById('bar').hidden", timeout=60_000)
        page.wait_for_function("/step [1-9]\\d* of 50/.test(document.getElementById('status').textContent)")
        progress = (page.text_content("#status"), page.eval_on_selector("#bar", "b => [b.value, b.max]"))
        check("a long job shows its steps with the bar", progress[1][1] == 50 and 0 < progress[1][0] <= 50,
              progress)
        answered()
        status = page.text_content("#status")
        check("the bar goes when the images come", page.is_hidden("#bar") and status.startswith("8 images"),
              status)
        check("the request named its job", re.fullmatch(r"[A-Za-z0-9_-]+", sent[-1]["job_id"]) is not None)
        names = page.eval_on_selector_all("#images a", "links => links.map(a => a.download)")
        captions = page.eval_on_selector_all("#images figcaption", "cs => cs.map(c => c.textContent)")
        ids = {text.split(": ", 1)[1]: value for value, text in page.eval_on_selector_all(
            "#class option", "os => os.map(o => [o.value, o.textContent])") if value}
        wanted = [f"{k:05d}_seed{c.split(' ')[1]}_class{ids[c.split(' · ', 1)[1]]}.png" for k, c in enumerate(captions)]
        check("each download is named by its index, seed and class id", names == wanted, names[:3])

        submit()  # the same long job again, stopped once it runs
        page.wait_for_function("!document.getElementById('stop').hidden", timeout=60_000)
        focused = "() => document.activeElement && document.activeElement.id"
        check("the focus moves from Generate (now disabled) to Stop", page.evaluate(focused) == "stop",
              page.evaluate(focused))
        page.click("#stop")
        answered()
        check("and back to Generate once the job ends", page.evaluate(focused) == "go", page.evaluate(focused))
        status, colour = page.text_content("#status"), page.get_attribute("#status", "class")
        check("Stop ends it at its next step, not as an error",
              re.fullmatch(r"stopped at step \d+ of 50", status) is not None and colour in ("", None), status)
        check("and the Stop button goes", page.is_hidden("#stop"))

        page.fill("#n", "2")
        page.fill("#steps", "25")
        page.set_input_files("#init_file", upload)
        page.wait_for_function("!document.getElementById('start').hidden")
        page.fill("#strength", "0.33")  # off a 0.05 step: a browser would refuse to send it
        submit()
        answered()
        check("a strength of 0.33 is sent", sent[-1]["strength"] == 0.33, page.text_content("#status"))
        page.fill("#strength", "1.5")
        count = len(sent)
        page.click("#go")
        page.wait_for_timeout(500)
        check("a strength above 1 is the browser's to refuse: nothing sent", len(sent) == count
              and page.eval_on_selector("#strength", "s => !s.checkValidity()"))
        page.fill("#strength", "0")
        page.click("#go")
        page.wait_for_timeout(500)
        check("a strength of 0 is the browser's to refuse too: nothing sent", len(sent) == count)
        page.fill("#strength", "")

        page.evaluate("() => { const f = document.getElementById('form'); f.requestSubmit(); f.requestSubmit(); }")
        answered()
        check("a second submit while a job runs (Ctrl+Enter's way) sends nothing", len(sent) == count + 1,
              len(sent) - count)
        count = len(sent)
        page.fill("#brush", "2.5")  # no part of a request: it blocked Generate, without a word
        submit()
        check("while a job runs, the last request's images are dimmed",
              page.eval_on_selector("#images", "g => g.classList.contains('previous')"))
        answered()
        check("a brush size off its step does not block Generate", len(sent) == count + 1)
        check("and the new images are not dimmed", not page.eval_on_selector(
            "#images", "g => g.classList.contains('previous')"))
        page.fill("#strength", "0")
        page.click("#drop_init")
        submit()  # the hidden strength of 0 blocked Generate, and the browser could not show it
        answered()
        check("a bad strength left behind a dropped start image does not block Generate",
              len(sent) == count + 2 and "init_image" not in sent[-1] and "strength" not in sent[-1])
        page.set_input_files("#init_file", upload)
        page.wait_for_function("!document.getElementById('start').hidden")
        page.fill("#strength", "")
        not_image = "/tmp/ldmkit_check_not_image.png"
        with open(not_image, "w") as file:
            file.write("not an image")
        page.set_input_files("#init_file", not_image)
        page.wait_for_function("document.getElementById('status').className === 'error'")
        check("a file that is no image drops the start image shown before", page.is_hidden("#start"),
              page.text_content("#status"))
        check("no script error on the page", not errors, errors)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
