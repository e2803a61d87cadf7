// Drives `ldm serve`'s page in jsdom against a live server, as a user would: the form is built,
// a start image is chosen (img2img), paint is laid over it (inpainting), the start image is
// dropped, a long job shows its steps and progress bar and can be stopped, a bad strength is
// refused. Each check prints a line; the script exits 1 at the first one that fails. Not part
// of the test suite (it needs node and jsdom from npm). With `ldm serve` in another terminal:
//
//   ldm serve --model emoji --device cpu --port 8765 --quiet
//   npm install jsdom && node scripts/check_serve_page.js http://127.0.0.1:8765
//
// jsdom has no canvas, so a stub 2D context keeps an RGBA buffer (fillRect, arc + fill,
// getImageData, putImageData) and toDataURL encodes it as a real PNG, which the server decodes.
"use strict";
const { JSDOM } = require("jsdom");
const zlib = require("zlib");

const server = process.argv[2];
const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function check(what, ok, detail) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail === undefined ? "" : ": " + detail}`);
  if (!ok) process.exit(1);
}

// ---- a PNG encoder (RGBA, no filtering), so that the server gets real images from the stub
function crc32(bytes) {
  let crc = ~0;
  for (const byte of bytes) {
    let c = (crc ^ byte) & 0xff;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    crc = (crc >>> 8) ^ c;
  }
  return ~crc >>> 0;
}

function pngChunk(type, data) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

function encodePng(width, height, rgba) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8;  // bits per channel
  header[9] = 6;  // RGBA
  const row = 1 + 4 * width;  // a filter byte (0: none), then the pixels
  const raw = Buffer.alloc(height * row);
  for (let y = 0; y < height; y++) Buffer.from(rgba.buffer, y * 4 * width, 4 * width).copy(raw, y * row + 1);
  const signature = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]);
  return Buffer.concat([signature, pngChunk("IHDR", header), pngChunk("IDAT", zlib.deflateSync(raw)),
                        pngChunk("IEND", Buffer.alloc(0))]);
}

// ---- the stub canvas and image: what the page's script calls, on an RGBA buffer
function hexColour(style) {
  const match = /^#(..)(..)(..)$/.exec(style);
  return match ? [1, 2, 3].map((i) => parseInt(match[i], 16)) : [0, 0, 0];
}

function installStubs(window) {
  window.URL.createObjectURL = () => "blob:start";
  window.URL.revokeObjectURL = () => {};
  const canvasProto = window.HTMLCanvasElement.prototype;
  canvasProto.getContext = function () {
    const canvas = this;
    const pixels = () => {
      if (!canvas.rgba || canvas.rgba.length !== canvas.width * canvas.height * 4) {
        canvas.rgba = new Uint8ClampedArray(canvas.width * canvas.height * 4);
      }
      return canvas.rgba;
    };
    const setPixel = (i, j, colour) => pixels().set([...colour, 255], 4 * (j * canvas.width + i));
    let circle = null;
    return {
      fillStyle: "#000000",
      fillRect(x, y, w, h) {
        for (let j = y; j < y + h; j++) for (let i = x; i < x + w; i++) setPixel(i, j, hexColour(this.fillStyle));
      },
      drawImage() {  // "the photo": a fixed pattern
        const px = pixels();
        for (let k = 0; k < px.length; k += 4) px.set([k % 251, (k * 7) % 253, 90, 255], k);
      },
      clearRect() { pixels().fill(0); },
      beginPath() { circle = null; },
      arc(x, y, r) { circle = [x, y, r]; },
      fill() {
        const [x, y, r] = circle;
        for (let j = 0; j < canvas.height; j++) {
          for (let i = 0; i < canvas.width; i++) {
            if ((i + 0.5 - x) ** 2 + (j + 0.5 - y) ** 2 <= r * r) setPixel(i, j, hexColour(this.fillStyle));
          }
        }
      },
      getImageData() { return { data: pixels().slice() }; },
      createImageData(w, h) { return { data: new Uint8ClampedArray(w * h * 4) }; },
      putImageData(image) { pixels().set(image.data); },
    };
  };
  canvasProto.toDataURL = function () {
    const rgba = this.rgba || new Uint8ClampedArray(this.width * this.height * 4);
    return "data:image/png;base64," + encodePng(this.width, this.height, rgba).toString("base64");
  };
  canvasProto.getBoundingClientRect = () => ({ left: 0, top: 0, width: 256, height: 256 });  // shown at 256 px
  canvasProto.setPointerCapture = () => {};
  const imageProto = window.HTMLImageElement.prototype;  // a 640x480 photo that loads at once
  Object.defineProperty(imageProto, "src", {
    set(value) { this.source = value; setTimeout(() => this.onload && this.onload(), 0); },
    get() { return this.source; },
  });
  Object.defineProperty(imageProto, "naturalWidth", { get: () => 640 });
  Object.defineProperty(imageProto, "naturalHeight", { get: () => 480 });
}

function maskColumns(dataUrl) {  // the columns of the mask PNG with any white pixel
  const png = Buffer.from(dataUrl.split(",")[1], "base64");
  const width = png.readUInt32BE(16), height = png.readUInt32BE(20);
  const idat = png.subarray(33 + 8, png.length - 12 - 4);
  const raw = zlib.inflateSync(idat), columns = new Set();
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) if (raw[y * (1 + 4 * width) + 1 + 4 * x] === 255) columns.add(x);
  }
  return [...columns].sort((a, b) => a - b);
}

(async () => {
  const html = await (await fetch(server + "/")).text();
  const sent = [];
  const dom = new JSDOM(html, {
    url: server + "/", runScripts: "dangerously", pretendToBeVisual: true,
    beforeParse(window) {
      installStubs(window);
      window.fetch = (path, options) => {
        if (options && options.body) sent.push(JSON.parse(options.body));
        return fetch(new URL(path, server + "/").href, options);
      };
    },
  });
  const { window } = dom;
  const $ = (id) => window.document.getElementById(id);
  const submit = () => $("form").dispatchEvent(new window.Event("submit", { cancelable: true }));
  const answered = async () => {
    for (let k = 0; k < 300 && $("go").disabled; k++) await wait(100);
  };
  const chooseStartImage = async () => {
    const file = new window.File(["x"], "holiday.jpg", { type: "image/jpeg" });
    Object.defineProperty($("init_file"), "files", { value: [file], configurable: true });
    $("init_file").dispatchEvent(new window.Event("change"));
    await wait(50);
  };

  await wait(500);
  check("the form is built from /api/info", $("model").textContent.includes("class-conditional"),
        $("model").textContent);
  check("no start image at first", $("start").hidden);

  await chooseStartImage();
  check("an upload is shown at the model's size", !$("start").hidden && $("init_canvas").width === 64,
        $("status").textContent);

  $("n").value = "2";
  $("strength").value = "0.5";
  submit();
  await answered();
  const img2img = sent[sent.length - 1];
  check("img2img: two images", $("images").querySelectorAll("img").length === 2, $("status").textContent);
  check("img2img: start image and strength sent, no mask",
        img2img.init_image.startsWith("data:image/png") && img2img.strength === 0.5 && !("mask" in img2img));

  const pointer = (type, x, y) => {
    const event = new window.MouseEvent(type, { clientX: x, clientY: y, buttons: 1 });
    event.pointerId = 1;
    $("mask_canvas").dispatchEvent(event);
  };
  pointer("pointerdown", 20, 20);
  for (let y = 20; y < 240; y += 8) pointer("pointermove", 20, y);
  $("strength").value = "";
  submit();
  await answered();
  const inpaint = sent[sent.length - 1];
  const columns = maskColumns(inpaint.mask);  // 20 px of 256 shown = column 5 of 64, brush 5 px
  check("inpaint: two images", $("images").querySelectorAll("img").length === 2, $("status").textContent);
  check("inpaint: the painted stroke is the mask's white", columns.join(",") === "3,4,5,6", columns.join(","));
  check("inpaint: strength left to the server's default", !("strength" in inpaint));

  $("drop_init").click();
  check("the start image can be dropped", $("start").hidden && $("init_file").value === "");
  submit();
  await answered();
  check("then requests are plain again", !("init_image" in sent[sent.length - 1]), $("status").textContent);

  $("n").value = "40";
  $("steps").value = "50";
  const seen = [];
  const watch = setInterval(() => {
    if (!$("bar").hidden) seen.push(`${$("status").textContent} [${$("bar").value}/${$("bar").max}]`);
  }, 100);
  submit();
  await answered();
  clearInterval(watch);
  check("a long job shows its steps with the bar", seen.some((text) => /step \d+ of 50 \[\d+\/50\]/.test(text)),
        seen.slice(0, 2).join(" | "));
  check("the bar goes when the images come", $("bar").hidden && $("status").textContent.startsWith("40 images"),
        $("status").textContent);
  check("the request named its job", /^[A-Za-z0-9_-]+$/.test(sent[sent.length - 1].job_id));

  submit();  // the same long job again, stopped once it runs
  for (let k = 0; k < 100 && $("bar").hidden; k++) await wait(100);
  check("a running job offers Stop", !$("stop").hidden);
  $("stop").click();
  await answered();
  check("Stop ends it at its next step, not as an error",
        /^stopped at step \d+ of 50$/.test($("status").textContent) && $("status").className === "",
        $("status").textContent);
  check("and the Stop button goes", $("stop").hidden);

  $("n").value = "2";
  $("steps").value = "25";
  await chooseStartImage();
  $("strength").value = "1.5";
  submit();
  await answered();
  check("a bad strength is the server's message, in red",
        $("status").className === "error" && $("status").textContent.includes("strength must be"),
        $("status").textContent);
  process.exit(0);
})().catch((err) => { console.error(err); process.exit(1); });
