// Drives `ldm serve`'s page in jsdom against a live server, as a user would: the form is built,
// a start image is chosen (img2img), paint is laid over it (inpainting), a start image is dropped,
// a long job shows its steps and progress bar, a bad strength is refused. Not part of the test
// suite (it needs node and jsdom from npm). With `ldm serve` running in another terminal:
//
//   ldm serve --model emoji --device cpu --port 8765 --quiet
//   npm install jsdom && node scripts/check_serve_page.js http://127.0.0.1:8765
//
// jsdom has no canvas, so a stub 2D context keeps an RGBA buffer (fillRect, arc + fill,
// getImageData, putImageData) and toDataURL encodes it as a real PNG, which the server decodes;
// the mask the page sent is written to ./mask.txt (a data URL) for a look.
const { JSDOM } = require("jsdom");
const zlib = require("zlib");
const url = process.argv[2];

function crc32(buf) { let c, crc = ~0; for (const b of buf) { c = (crc ^ b) & 0xff; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; crc = (crc >>> 8) ^ c; } return ~crc >>> 0; }
function chunk(type, data) { const len = Buffer.alloc(4); len.writeUInt32BE(data.length); const td = Buffer.concat([Buffer.from(type), data]); const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(td)); return Buffer.concat([len, td, crc]); }
function png(w, h, rgba) {
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 6;
  const raw = Buffer.alloc(h * (1 + 4 * w)); for (let y = 0; y < h; y++) { raw[y * (1 + 4 * w)] = 0; Buffer.from(rgba.buffer, y * 4 * w, 4 * w).copy(raw, y * (1 + 4 * w) + 1); }
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", ihdr), chunk("IDAT", zlib.deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}
function parseColor(s) { const m = /^#(..)(..)(..)$/.exec(s); return m ? [1, 2, 3].map((i) => parseInt(m[i], 16)) : [0, 0, 0]; }

(async () => {
  const html = await (await fetch(url + "/")).text();
  const dom = new JSDOM(html, { url: url + "/", runScripts: "dangerously", pretendToBeVisual: true,
    beforeParse(window) {
      window.fetch = (u, o) => fetch(new URL(u, url + "/").href, o);
      window.URL.createObjectURL = () => "blob:start"; window.URL.revokeObjectURL = () => {};
      const P = window.HTMLCanvasElement.prototype;
      P.getContext = function () {
        const canvas = this;
        const buf = () => { if (!canvas._px || canvas._px.length !== canvas.width * canvas.height * 4) canvas._px = new Uint8ClampedArray(canvas.width * canvas.height * 4); return canvas._px; };
        let path = null;
        return { fillStyle: "#000",
          fillRect(x, y, w, h) { const px = buf(), c = parseColor(this.fillStyle); for (let j = y; j < y + h; j++) for (let i = x; i < x + w; i++) { const k = 4 * (j * canvas.width + i); px.set([...c, 255], k); } },
          drawImage() { const px = buf(); for (let k = 0; k < px.length; k += 4) px.set([k % 251, (k * 7) % 253, 90, 255], k); },  // "the photo"
          clearRect() { buf().fill(0); }, beginPath() { path = null; }, arc(x, y, r) { path = [x, y, r]; },
          fill() { const px = buf(), c = parseColor(this.fillStyle), [x, y, r] = path; for (let j = 0; j < canvas.height; j++) for (let i = 0; i < canvas.width; i++) if ((i + 0.5 - x) ** 2 + (j + 0.5 - y) ** 2 <= r * r) px.set([...c, 255], 4 * (j * canvas.width + i)); },
          getImageData() { return { data: buf().slice() }; }, createImageData(w, h) { return { data: new Uint8ClampedArray(w * h * 4) }; },
          putImageData(d) { buf().set(d.data); } };
      };
      P.toDataURL = function () { const px = this._px || new Uint8ClampedArray(this.width * this.height * 4); return "data:image/png;base64," + png(this.width, this.height, px).toString("base64"); };
      P.getBoundingClientRect = function () { return { left: 0, top: 0, width: 256, height: 256 }; };
      P.setPointerCapture = () => {};
      // the start image "loads" at once
      Object.defineProperty(window.HTMLImageElement.prototype, "src", { set(v) { this._src = v; setTimeout(() => this.onload && this.onload(), 0); }, get() { return this._src; } });
      Object.defineProperty(window.HTMLImageElement.prototype, "naturalWidth", { get() { return 640; } });
      Object.defineProperty(window.HTMLImageElement.prototype, "naturalHeight", { get() { return 480; } });
    } });
  const { window } = dom, $ = (id) => window.document.getElementById(id);
  const sent = [];
  const realFetch = window.fetch; window.fetch = (u, o) => { if (o && o.body) sent.push(JSON.parse(o.body)); return realFetch(u, o); };
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  await wait(500);
  console.log("model line:", $("model").textContent, "| start hidden:", $("start").hidden, "| brush:", $("brush").value);
  // choose a file
  const file = new window.File(["x"], "holiday.jpg", { type: "image/jpeg" });
  Object.defineProperty($("init_file"), "files", { value: [file], configurable: true });
  $("init_file").dispatchEvent(new window.Event("change"));
  await wait(50);
  console.log("after upload: start hidden:", $("start").hidden, "| status:", $("status").textContent, "| canvas", $("init_canvas").width, "x", $("init_canvas").height);
  // img2img first
  $("n").value = "2"; $("strength").value = "0.5";
  $("form").dispatchEvent(new window.Event("submit", { cancelable: true }));
  await wait(4000);
  console.log("img2img: status:", $("status").textContent, "| images:", $("images").querySelectorAll("img").length, "| sent keys:", Object.keys(sent[0]).join(","), "strength", sent[0].strength, "mask" in sent[0]);
  // paint the left quarter and inpaint
  const down = (x, y, type) => { const e = new window.MouseEvent(type, { clientX: x, clientY: y, buttons: 1 }); e.pointerId = 1; $("mask_canvas").dispatchEvent(e); };
  down(20, 20, "pointerdown"); for (let y = 20; y < 240; y += 8) down(20, y, "pointermove");
  $("strength").value = "";
  $("form").dispatchEvent(new window.Event("submit", { cancelable: true }));
  await wait(4000);
  const mask = sent[1].mask;
  console.log("inpaint: status:", $("status").textContent, "| images:", $("images").querySelectorAll("img").length, "| mask sent:", typeof mask, mask && mask.length, "| strength sent:", sent[1].strength);
  require("fs").writeFileSync("mask.txt", mask || "");
  $("drop_init").click();
  console.log("dropped: start hidden:", $("start").hidden, "| file value:", JSON.stringify($("init_file").value));
  $("form").dispatchEvent(new window.Event("submit", { cancelable: true }));
  await wait(3000);
  console.log("plain: keys:", Object.keys(sent[2]).join(","), "| status:", $("status").textContent);
  // a longer job: the page shows its steps while the request is out
  $("n").value = "40"; $("steps").value = "50";
  const seen = new Set();
  const watch = setInterval(() => { seen.add($("status").textContent + (window.document.getElementById("bar").hidden ? "" : ` [bar ${$("bar").value}/${$("bar").max}]`)); }, 100);
  $("form").dispatchEvent(new window.Event("submit", { cancelable: true }));
  for (let k = 0; k < 100 && $("go").disabled; k++) await wait(200);
  clearInterval(watch);
  console.log("long job, statuses seen:", [...seen].filter((t) => t.includes("step")).slice(0, 4).join(" | "), "| then:", $("status").textContent, "| bar hidden:", $("bar").hidden, "| job_id sent:", sent[3].job_id);
  $("steps").value = "25"; $("n").value = "2";
  // a bad strength the server refuses
  $("init_file").dispatchEvent(new window.Event("change")); await wait(50);
  $("strength").value = "1.5";
  $("form").dispatchEvent(new window.Event("submit", { cancelable: true }));
  await wait(3000);
  console.log("bad strength: status:", $("status").textContent, "| class:", $("status").className);
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
