// The drawing page: every stroke is sent as a PNG to /api/predict?maps=true; the answer is
// drawn as probability bars and one small canvas per feature map. At most one request is in
// flight; strokes made meanwhile are sent when it returns, so the page always ends up showing
// the latest drawing. document.body.dataset.state is "busy" while a request is outstanding.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
let drawing = false;
let last = null;
let inFlight = false;
let next = null;
let predictions = 0;
// The picture whose maps are on the page, for explaining a clicked cell; and each shown map
// canvas by node (-1: the input) and channel.
let shownPicture = null;
let mapCanvases = new Map();

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
}

function pointer(event) {
  const box = pad.getBoundingClientRect();
  return [
    ((event.clientX - box.left) * pad.width) / box.width,
    ((event.clientY - box.top) * pad.height) / box.height,
  ];
}

function segment(from, to) {
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  last = pointer(event);
  segment(last, last);
  schedule();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const point = pointer(event);
  segment(last, point);
  last = point;
  schedule();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (!drawing) return;
    drawing = false;
    schedule();
  });
}
document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  document.getElementById("top").textContent = "";
  document.getElementById("probabilities").textContent = "";
  document.getElementById("layers").textContent = "";
});

document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (!file) return;
  const url = URL.createObjectURL(file);
  const picture = new Image();
  picture.onload = () => {
    clearPad();
    const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
    const w = picture.width * scale;
    const h = picture.height * scale;
    ctx.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  picture.src = url;
  request(() => Promise.resolve([file, file.type || "application/octet-stream"]));
});

// Sends the drawing as it is now, or, while a request is in flight, remembers that it must be
// sent when that one returns. `inFlight` is set before the canvas is encoded (`toBlob` is
// asynchronous): set after it, several strokes in a row each started a request, and their
// answers came back in any order.
function schedule() {
  request(() => new Promise((resolve) => pad.toBlob((blob) => resolve([blob, "image/png"]), "image/png")));
}

// `make` gives the body and its type; only the latest one asked for while busy is kept.
function request(make) {
  if (inFlight) {
    next = make;
    return;
  }
  inFlight = true;
  document.body.dataset.state = "busy";
  make().then(([blob, type]) => send(blob, type));
}

function send(blob, type) {
  fetch("/api/predict?maps=true", { method: "POST", headers: { "Content-Type": type }, body: blob })
    .then((response) => response.json().then((json) => ({ ok: response.ok, json })))
    .then(({ ok, json }) => {
      if (!ok) throw new Error(json.error || "request failed");
      shownPicture = [blob, type];
      show(json);
      document.getElementById("status").textContent = "";
    })
    .catch((err) => {
      document.getElementById("status").textContent = "error: " + err.message;
      document.getElementById("status").className = "legend error";
    })
    .finally(() => {
      inFlight = false;
      if (next) {
        const make = next;
        next = null;
        request(make);
      } else {
        document.body.dataset.state = "idle";
      }
    });
}

// Blue for negative, white for 0, red for positive, full strength at +-range (as cnn::viz).
function colour(value, range) {
  const t = Math.max(-1, Math.min(1, value / (range || 1)));
  const end = t < 0 ? [33, 102, 172] : [178, 24, 43];
  const s = Math.abs(t);
  return end.map((e) => Math.round(255 + (e - 255) * s));
}

function mapCanvas(rows, range, scale) {
  const height = rows.length;
  const width = rows[0].length;
  const canvas = document.createElement("canvas");
  canvas.className = "map";
  canvas.width = width;
  canvas.height = height;
  canvas.style.width = width * scale + "px";
  canvas.style.height = height * scale + "px";
  canvas.paint = (marked) => paint(canvas, rows, range, marked);
  canvas.paint(new Set());
  return canvas;
}

// Draws a map; the values at the offsets in `marked` in yellow (the window of a clicked cell).
function paint(canvas, rows, range, marked) {
  const width = rows[0].length;
  const c = canvas.getContext("2d");
  const pixels = c.createImageData(width, rows.length);
  rows.forEach((row, y) =>
    row.forEach((value, x) => {
      const [r, g, b] = marked.has(y * width + x) ? [255, 212, 0] : colour(value, range);
      pixels.data.set([r, g, b, 255], 4 * (y * width + x));
    })
  );
  c.putImageData(pixels, 0, 0);
  canvas.dataset.marked = String(marked.size);
}

function unmarkAll() {
  for (const byChannel of mapCanvases.values())
    for (const canvas of byChannel.values()) if (canvas.dataset.marked !== "0") canvas.paint(new Set());
  document.querySelectorAll("pre.arithmetic").forEach((pre) => pre.remove());
}

// A click on a map asks the server how that value was computed, shows the arithmetic under
// the layer and marks the window on the maps of the nodes it read.
function explainCell(node, channel, flat, canvas, section, event) {
  if (!shownPicture) return;
  const box = canvas.getBoundingClientRect();
  const x = Math.floor(((event.clientX - box.left) * canvas.width) / box.width);
  const y = Math.floor(((event.clientY - box.top) * canvas.height) / box.height);
  const position = flat ? { channel: y * canvas.width + x, y: 0, x: 0 } : { channel, y, x };
  const query = `node=${node}&channel=${position.channel}&y=${position.y}&x=${position.x}`;
  const [blob, type] = shownPicture;
  fetch(`/api/cell?${query}`, { method: "POST", headers: { "Content-Type": type }, body: blob })
    .then((response) => response.json().then((json) => ({ ok: response.ok, json })))
    .then(({ ok, json }) => {
      unmarkAll();
      const pre = document.createElement("pre");
      pre.className = "arithmetic";
      pre.id = "arithmetic";
      pre.textContent = ok ? json.text : "error: " + json.error;
      section.after(pre);
      if (!ok) return;
      const windows = (json.cell.arithmetic.windows || []).concat(json.cell.arithmetic.window || []);
      for (const window of windows) {
        const read = json.reads[window.input];
        const maps = mapCanvases.get(read);
        if (window.channel === null || !maps || !maps.get(window.channel)) continue;
        const target = maps.get(window.channel);
        const marked = new Set();
        for (const cell of window.cells) if (cell) marked.add(cell.y * target.width + cell.x);
        target.paint(marked);
      }
    });
}

function maxAbs(maps) {
  let m = 0;
  for (const map of maps) for (const row of map) for (const v of row) m = Math.max(m, Math.abs(v));
  return m || 1;
}

// A layer's maps as canvases; flat outputs (dense) as one map in rows of 16 values. `node`:
// the node's index (-1 for the input), whose cells a click explains.
function layerSection(title, maps, node) {
  const section = document.createElement("section");
  const heading = document.createElement("h3");
  const range = maxAbs(maps);
  heading.textContent = `${title}   (scale ±${range.toPrecision(3)})`;
  section.appendChild(heading);
  const holder = document.createElement("div");
  holder.className = "maps";
  let shown = maps;
  if (maps[0].length === 1 && maps[0][0].length === 1) {
    const values = maps.map((m) => m[0][0]);
    const width = Math.min(16, values.length);
    const rows = [];
    for (let i = 0; i < values.length; i += width) {
      const row = values.slice(i, i + width);
      while (row.length < width) row.push(0);
      rows.push(row);
    }
    shown = [rows];
  }
  const size = Math.max(shown[0].length, shown[0][0].length);
  const scale = Math.max(2, Math.min(16, Math.floor(112 / size)));
  const byChannel = new Map();
  shown.forEach((map, channel) => {
    const canvas = mapCanvas(map, range, scale);
    canvas.dataset.node = String(node);
    canvas.dataset.channel = String(channel);
    if (node >= 0) {
      canvas.title = "click a cell to see how it was computed";
      canvas.addEventListener("click", (event) =>
        explainCell(node, channel, shown !== maps, canvas, section, event)
      );
    }
    byChannel.set(channel, canvas);
    holder.appendChild(canvas);
  });
  mapCanvases.set(node, byChannel);
  section.appendChild(holder);
  return section;
}

function show(result) {
  predictions += 1;
  document.body.dataset.predictions = String(predictions);
  document.body.dataset.probability = String(result.probability);
  const top = document.getElementById("top");
  top.textContent = `${result.class} ${(100 * result.probability).toFixed(1)}%`;
  top.dataset.class = result.class;
  const bars = document.getElementById("probabilities");
  bars.textContent = "";
  const ranked = result.classes
    .map((name, i) => [name, result.probabilities[i]])
    .sort((a, b) => b[1] - a[1]);
  ranked.forEach(([name, p], i) => {
    const bar = document.createElement("div");
    bar.className = i === 0 ? "bar top" : "bar";
    bar.innerHTML = `<span class="name"></span><span class="fill"></span><span class="value"></span>`;
    bar.querySelector(".name").textContent = name;
    bar.querySelector(".fill").style.width = Math.max(1, 240 * p) + "px";
    bar.querySelector(".value").textContent = (100 * p).toFixed(1) + "%";
    bars.appendChild(bar);
  });
  const layers = document.getElementById("layers");
  layers.textContent = "";
  mapCanvases = new Map();
  if (result.input) layers.appendChild(layerSection("input (as the model sees it)", result.input, -1));
  for (const layer of result.layers || []) {
    const line = `${layer.index} ${layer.layer}  ${shapeText(layer.input)} -> ${shapeText(layer.output)}  ${layer.params} params  ${layer.flops} FLOPs`;
    layers.appendChild(layerSection(line, layer.maps, layer.index));
  }
}

function shapeText(s) {
  return s.height === 1 && s.width === 1 ? `${s.channels}` : `${s.channels}x${s.height}x${s.width}`;
}

clearPad();
fetch("/api/model")
  .then((r) => r.json())
  .then((m) => {
    document.getElementById("model-line").textContent =
      `model: ${m.layers.map((l) => l.layer).join(", ")}; classes ${m.classes.join(", ")}; ${m.params} parameters`;
  });
