// The training page: offers the server's data sets, checks the architecture as it is typed
// (POST /api/train/check), starts, pauses and stops a job, and follows its events
// (GET /api/train/events, server-sent) into the curves, the first convolution's filters and a
// probe picture's maps. document.body.dataset carries what a test reads: state (idle,
// training, paused, done, error), heldOut (the last held-out accuracy), points (curve points),
// filterUpdates and filtersChanged (whether the filters differ from the first ones shown).
"use strict";

const $ = (id) => document.getElementById(id);
const body = document.body.dataset;
let source = null;
let losses = [];
let accuracies = [];
let firstFilters = null;
let checkTimer = null;

function post(url, payload) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: payload === undefined ? "" : JSON.stringify(payload),
  }).then((r) => r.json().then((json) => ({ ok: r.ok, json })));
}

function colour(value, range) {
  const t = Math.max(-1, Math.min(1, value / (range || 1)));
  const end = t < 0 ? [33, 102, 172] : [178, 24, 43];
  const s = Math.abs(t);
  return end.map((e) => Math.round(255 + (e - 255) * s));
}

function mapCanvas(rows, scale) {
  let range = 0;
  for (const row of rows) for (const v of row) range = Math.max(range, Math.abs(v));
  const canvas = document.createElement("canvas");
  canvas.className = "map";
  canvas.width = rows[0].length;
  canvas.height = rows.length;
  canvas.style.width = canvas.width * scale + "px";
  canvas.style.height = canvas.height * scale + "px";
  const c = canvas.getContext("2d");
  const pixels = c.createImageData(canvas.width, canvas.height);
  rows.forEach((row, y) =>
    row.forEach((v, x) => pixels.data.set([...colour(v, range), 255], 4 * (y * canvas.width + x)))
  );
  c.putImageData(pixels, 0, 0);
  return canvas;
}

function drawCurve() {
  const canvas = $("curve");
  const c = canvas.getContext("2d");
  c.fillStyle = "#fff";
  c.fillRect(0, 0, canvas.width, canvas.height);
  c.strokeStyle = "#ccc";
  c.strokeRect(0.5, 0.5, canvas.width - 1, canvas.height - 1);
  const epochs = Math.max(1, Number($("epochs").value));
  const x = (e) => 10 + ((canvas.width - 20) * e) / epochs;
  const maxLoss = Math.max(1e-9, ...losses.map((p) => p[1]));
  const line = (points, y, style) => {
    c.strokeStyle = style;
    c.lineWidth = 2;
    c.beginPath();
    points.forEach(([e, v], i) => (i ? c.lineTo(x(e), y(v)) : c.moveTo(x(e), y(v))));
    c.stroke();
  };
  const h = canvas.height - 20;
  line(losses, (v) => 10 + h * (1 - v / maxLoss), "#2166ac");
  line(accuracies, (v) => 10 + h * (1 - v), "#b2182b");
  body.points = String(losses.length + accuracies.length);
}

function showFilters(event) {
  const filters = $("filters");
  filters.textContent = "";
  for (const f of event.filters) filters.appendChild(mapCanvas(f, 12));
  const maps = $("maps");
  maps.textContent = "";
  maps.appendChild(mapCanvas(event.probe[0], 3));
  for (const m of event.maps) maps.appendChild(mapCanvas(m, 3));
  const signature = JSON.stringify(event.filters);
  if (firstFilters === null) firstFilters = signature;
  body.filterUpdates = String(Number(body.filterUpdates || 0) + 1);
  body.filtersChanged = String(signature !== firstFilters);
}

function follow() {
  if (source) source.close();
  source = new EventSource("/api/train/events");
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "start") {
      $("status").textContent = `training on ${event.images} images (${event.held_out} held out), ${event.epochs} epochs`;
    } else if (event.type === "progress") {
      losses.push([event.epoch - 1 + event.images / event.of, event.loss]);
      $("status").textContent = `epoch ${event.epoch}: ${event.images} of ${event.of} images, loss ${event.loss.toFixed(4)}, accuracy ${(100 * event.accuracy).toFixed(1)}%`;
      drawCurve();
    } else if (event.type === "epoch") {
      losses.push([event.epoch, event.train_loss]);
      if (event.held_out_accuracy !== null) accuracies.push([event.epoch, event.held_out_accuracy]);
      body.heldOut = String(event.held_out_accuracy);
      $("status").textContent = `epoch ${event.epoch}: training loss ${event.train_loss.toFixed(4)}, held-out accuracy ${(100 * event.held_out_accuracy).toFixed(2)}% (${Math.round(event.images_per_second)} images/s)`;
      drawCurve();
    } else if (event.type === "filters") {
      showFilters(event);
    } else if (event.type === "paused" || event.type === "resumed") {
      body.state = event.type === "paused" ? "paused" : "training";
      $("pause").textContent = event.type === "paused" ? "resume" : "pause";
    } else if (event.type === "done") {
      body.state = "done";
      body.accuracy = String(event.accuracy);
      $("status").textContent = `${event.stopped ? "stopped" : "done"}: held-out accuracy ${(100 * event.accuracy).toFixed(2)}%`;
      $("use").disabled = false;
    } else if (event.type === "error") {
      body.state = "error";
      $("status").textContent = "error: " + event.message;
      $("status").className = "error";
    } else if (event.type === "end") {
      source.close();
      $("start").disabled = false;
      $("pause").disabled = true;
      $("stop").disabled = true;
    }
  };
}

function check() {
  post("/api/train/check", { data: $("data").value, arch: $("arch").value }).then(({ ok, json }) => {
    const out = $("check");
    if (ok && json.ok) {
      out.textContent = json.layers.join("\n");
      out.className = "legend";
    } else {
      out.textContent = (json.error || "cannot check");
      out.className = "error";
    }
    body.checked = String(ok && json.ok);
  });
}

$("arch").addEventListener("input", () => {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(check, 250);
});
$("data").addEventListener("change", check);
$("start").addEventListener("click", () => {
  losses = [];
  accuracies = [];
  firstFilters = null;
  body.filterUpdates = "0";
  body.filtersChanged = "false";
  const payload = { data: $("data").value, arch: $("arch").value, epochs: Number($("epochs").value) };
  post("/api/train/start", payload).then(({ ok, json }) => {
    if (!ok) {
      $("status").textContent = "error: " + json.error;
      $("status").className = "error";
      return;
    }
    $("status").className = "";
    body.state = "training";
    $("start").disabled = true;
    $("pause").disabled = false;
    $("stop").disabled = false;
    $("use").disabled = true;
    follow();
  });
});
$("pause").addEventListener("click", () =>
  post(body.state === "paused" ? "/api/train/resume" : "/api/train/pause")
);
$("stop").addEventListener("click", () => post("/api/train/stop"));
$("use").addEventListener("click", () =>
  post("/api/train/use").then(({ ok, json }) => {
    $("status").textContent = ok
      ? `the drawing page now uses this model${json.saved ? " (saved to " + json.saved + ")" : ""}`
      : "error: " + json.error;
    body.used = String(ok);
  })
);

fetch("/api/train/data")
  .then((r) => r.json())
  .then((json) => {
    for (const choice of json.choices) {
      const option = document.createElement("option");
      option.value = choice.spec;
      option.textContent = `${choice.spec} (${choice.classes.length} classes, ${choice.shape.channels}x${choice.shape.height}x${choice.shape.width})`;
      $("data").appendChild(option);
    }
    body.ready = "true";
    check();
  });
drawCurve();
