// The seed's worked example as a sequence of steps: the image, the features, then for each
// feature every window position (its 9 products, their mean, the map filling in), then ReLU,
// then pooling. All values come from GET /api/example; the products are shown so the mean can
// be checked by eye.
"use strict";

let data = null;
let steps = [];
let current = 0;
let timer = null;

const $ = (id) => document.getElementById(id);

function colour(value) {
  const t = Math.max(-1, Math.min(1, value));
  const end = t < 0 ? [33, 102, 172] : [178, 24, 43];
  const s = Math.abs(t);
  return "rgb(" + end.map((e) => Math.round(255 + (e - 255) * s)).join(",") + ")";
}

// A map as a table of numbers; `mark(r, c)` returns "window", "hidden" or "".
function grid(title, map, mark = () => "") {
  const panel = document.createElement("div");
  panel.className = "panel";
  const heading = document.createElement("div");
  heading.className = "title";
  heading.textContent = title;
  panel.appendChild(heading);
  const table = document.createElement("table");
  table.className = "grid";
  map.forEach((row, r) => {
    const tr = table.insertRow();
    row.forEach((value, c) => {
      const td = tr.insertCell();
      td.textContent = value.toFixed(2);
      td.style.background = colour(value);
      if (Math.abs(value) > 0.6) td.style.color = "#fff";
      const cls = mark(r, c);
      if (cls) td.className = cls;
      if (cls === "hidden") {
        // Not computed yet at this step: no number, no colour.
        td.style.background = "#f6f6f6";
        td.style.color = "transparent";
      }
    });
  });
  panel.appendChild(table);
  return panel;
}

function build() {
  const ex = data.example;
  const stride = data.stride;
  steps = [];
  steps.push({ kind: "image" });
  steps.push({ kind: "features" });
  ex.features.forEach((feature, f) => {
    const map = ex.conv[f];
    map.forEach((row, r) => row.forEach((_, c) => steps.push({ kind: "window", f, r, c, stride })));
  });
  steps.push({ kind: "relu" });
  ex.features.forEach((_, f) => steps.push({ kind: "pool", f }));
  steps.push({ kind: "verdict" });
  $("slider").max = String(steps.length - 1);
}

function render() {
  const ex = data.example;
  const step = steps[current];
  const stage = $("stage");
  stage.textContent = "";
  $("slider").value = String(current);
  $("counter").textContent = `step ${current + 1} of ${steps.length}`;
  const text = $("explanation");
  if (step.kind === "image") {
    text.textContent = `The ${data.letter} as the computer sees it: a 9x9 grid of numbers, +1 where the stroke is, -1 elsewhere.`;
    stage.appendChild(grid(`image ${data.letter} (9x9)`, ex.image));
  } else if (step.kind === "features") {
    text.textContent = "Three features (filters), small 3x3 patterns taken from a standard X: two diagonals and their crossing. Each slides over the image and gives one feature map.";
    for (const f of ex.features) stage.appendChild(grid(`feature ${f.name}`, f.weights));
  } else if (step.kind === "window") {
    const { f, r, c, stride } = step;
    const feature = ex.features[f];
    const top = r * stride;
    const left = c * stride;
    const products = feature.weights.map((row, i) => row.map((w, j) => w * ex.image[top + i][left + j]));
    const sum = products.flat().reduce((a, b) => a + b, 0);
    const value = ex.conv[f][r][c];
    const width = ex.conv[f][0].length;
    const index = r * width + c;
    stage.appendChild(
      grid(`image: window at row ${top}, column ${left}`, ex.image, (i, j) =>
        i >= top && i < top + 3 && j >= left && j < left + 3 ? "window" : ""
      )
    );
    stage.appendChild(grid(`feature ${feature.name}`, feature.weights));
    stage.appendChild(grid("products (pixel x feature)", products));
    stage.appendChild(
      grid(`feature map ${feature.name} (${ex.conv[f].length}x${width})`, ex.conv[f], (i, j) => {
        const k = i * width + j;
        return k === index ? "window" : k > index ? "hidden" : "";
      })
    );
    text.textContent = `Feature ${feature.name}, window at (${top}, ${left}): the 9 products add up to ${sum.toFixed(0)}; their mean ${sum.toFixed(0)}/9 = ${(sum / 9).toFixed(2)} goes into the map at (${r}, ${c}) (engine: ${value.toFixed(4)}). Near 1: the window matches the feature; near -1: its opposite. Then the window moves ${stride} pixel${stride > 1 ? "s" : ""} on.`;
  } else if (step.kind === "relu") {
    text.textContent = "ReLU, max(0, x): negative values become 0, the rest stay as they are.";
    ex.features.forEach((feature, f) => {
      stage.appendChild(grid(`conv ${feature.name}`, ex.conv[f]));
      stage.appendChild(grid(`ReLU ${feature.name}`, ex.relu[f]));
    });
  } else if (step.kind === "pool") {
    const feature = ex.features[step.f];
    const how = data.pool === "max" ? "largest value" : "mean";
    text.textContent = `Pooling ${feature.name}: 2x2 windows, stride 2; each keeps the ${how} of its window (partial windows at the border are kept), so a ${ex.relu[step.f].length}x${ex.relu[step.f][0].length} map shrinks to ${ex.pool[step.f].length}x${ex.pool[step.f][0].length}. The feature is still found, only where is blurred, which is what makes the network tolerant of shifted and distorted letters.`;
    stage.appendChild(grid(`ReLU ${feature.name}`, ex.relu[step.f]));
    stage.appendChild(grid(`${data.pool} pool ${feature.name}`, ex.pool[step.f]));
  } else if (step.kind === "verdict") {
    const v = ex.verdict;
    const scores = v.classes.map((c, i) => `${c} ${v.scores[i].toFixed(3)}`).join(", ");
    text.textContent = `The verdict. A fully connected (dense) layer lets every pooled value vote: each class multiplies the pooled values by its weights and adds the products up. The weights here are set by hand (a trained network learns them from labels): each class's are the pooled maps of its standard letter, scaled to length 1, so pooled maps shaped like that letter's score high. Scores: ${scores}. The network says ${v.class}.`;
    const verdict = document.createElement("div");
    verdict.id = "verdict";
    verdict.dataset.class = v.class;
    verdict.className = "verdict";
    verdict.textContent = `${data.letter} is read as ${v.class} (${scores})`;
    stage.appendChild(verdict);
    ex.features.forEach((feature, f) => stage.appendChild(grid(`${data.pool} pool ${feature.name}`, ex.pool[f])));
    v.classes.forEach((c, k) =>
      ex.features.forEach((feature, f) => stage.appendChild(grid(`weights for ${c} on ${feature.name}`, v.weights[k][f])))
    );
  }
}

function go(index) {
  current = Math.max(0, Math.min(steps.length - 1, index));
  render();
}

function load() {
  const query = new URLSearchParams({ letter: $("letter").value, stride: $("stride").value, pool: $("pool").value });
  fetch("/api/example?" + query)
    .then((r) => r.json())
    .then((json) => {
      if (json.error) throw new Error(json.error);
      data = json;
      build();
      go(Math.min(current, steps.length - 1));
    })
    .catch((err) => ($("explanation").textContent = "error: " + err.message));
}

$("prev").addEventListener("click", () => go(current - 1));
$("next").addEventListener("click", () => go(current + 1));
$("slider").addEventListener("input", (e) => go(Number(e.target.value)));
$("play").addEventListener("click", () => {
  if (timer) {
    clearInterval(timer);
    timer = null;
    $("play").textContent = "play";
    return;
  }
  $("play").textContent = "pause";
  timer = setInterval(() => {
    if (current >= steps.length - 1) {
      clearInterval(timer);
      timer = null;
      $("play").textContent = "play";
      return;
    }
    go(current + 1);
  }, 400);
});
for (const id of ["letter", "stride", "pool"]) $(id).addEventListener("change", load);
load();
