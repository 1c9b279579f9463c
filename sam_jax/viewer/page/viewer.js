// The viewer page: draws the planes the server sends (sam_jax/viewer/app.py documents the API) and turns clicks and
// dragged boxes into voxel indices. The page's requests carry the access token in the cookie its own load set. Display orientation as in sam_jax/viewer/planes.py: axial rows run from high to low y, columns along
// x; coronal/sagittal rows from high to low z, columns along x / y.
"use strict";

const $ = (id) => document.getElementById(id);
const AXES = { axial: 2, coronal: 1, sagittal: 0 };
const LEVELS = 65535;
const MASK_RGBA = [255, 64, 64, 110];
const CONTOUR_RGBA = [64, 255, 96, 255];
const PROMPT_COLOURS = { user: "#3cf", negative: "#f33", propagated: "#fc3", dragging: "#fff" };

const viewer = {
  session: null, info: null, modality: "t1n", axis: "axial", index: {}, windows: {}, showGT: true,
  plane: null, labels: null, rows: 0, cols: 0, zoom: 1, summary: null, lastLatency: null, pending: 0,
  press: null,  // the mouse button held on the image: {start, end} plane pixels, negative
};
window.viewer = viewer;

function busy(delta) {
  viewer.pending += delta;
  document.body.dataset.busy = viewer.pending > 0 ? "1" : "0";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(path, options = {}) {
  busy(1);
  try {
    const response = await fetch(path, options);
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return response;
  } finally {
    busy(-1);
  }
}

async function post(path, body = {}) {
  const response = await api(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return response.json();
}

// Voxel (x, y, z) of a plane pixel and back; the inverse of planes.plane.
function voxelOf(col, row) {
  const [X, Y, Z] = viewer.info.shape;
  const i = viewer.index[viewer.axis];
  if (viewer.axis === "axial") return [col, Y - 1 - row, i];
  if (viewer.axis === "coronal") return [col, i, Z - 1 - row];
  return [i, col, Z - 1 - row];
}

function pixelOf(x, y, z) {
  const [X, Y, Z] = viewer.info.shape;
  if (viewer.axis === "axial") return z === viewer.index.axial ? [x, Y - 1 - y] : null;
  if (viewer.axis === "coronal") return y === viewer.index.coronal ? [x, Z - 1 - z] : null;
  return x === viewer.index.sagittal ? [y, Z - 1 - z] : null;
}
viewer.pixelOf = pixelOf;

async function loadCases() {
  const listing = await (await api("/api/cases")).json();
  $("data-dir").textContent = listing.data_dir;
  const list = $("cases");
  list.replaceChildren();
  for (const c of listing.cases) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.textContent = `${c.case}${c.has_seg ? "" : " (no segmentation)"}`;
    button.dataset.case = c.case;
    button.onclick = () => openCase(c.case).catch((e) => showError(`${c.case}: ${e.message}`));
    item.append(button);
    list.append(item);
  }
}

async function openCase(caseId) {
  showError("");
  const info = await post("/api/sessions", { case: caseId });
  viewer.session = `/api/sessions/${info.session}`;
  viewer.info = info;
  viewer.windows = {};
  for (const m of info.modalities) viewer.windows[m] = info.windows[m].slice();
  const [X, Y] = info.shape;
  viewer.index = { axial: Math.floor((info.slices[0] + info.slices[1]) / 2), coronal: Math.floor(Y / 2),
                   sagittal: Math.floor(X / 2) };
  for (const b of document.querySelectorAll("#cases button")) b.classList.toggle("open", b.dataset.case === caseId);
  $("case-name").textContent = `${info.case} (${info.domain})`;
  $("show-gt").disabled = !info.has_seg;
  $("download").hidden = true;
  $("saved").textContent = "";
  $("toolbar").hidden = false;
  const modalities = $("modalities");
  modalities.replaceChildren();
  for (const m of info.modalities) {
    const button = document.createElement("button");
    button.textContent = m;
    button.dataset.modality = m;
    button.onclick = () => { viewer.modality = m; updateWindowSliders(); refresh(); };
    modalities.append(button);
  }
  updateWindowSliders();
  await refresh();
  pollProgress(viewer.session);
}

function updateWindowSliders() {
  const [lo, hi] = viewer.info.ranges[viewer.modality];
  const [wlo, whi] = viewer.windows[viewer.modality];
  $("level").value = Math.round(1000 * ((wlo + whi) / 2 - lo) / (hi - lo));
  $("width").value = Math.max(1, Math.round(1000 * (whi - wlo) / (hi - lo)));
  for (const b of document.querySelectorAll("#modalities button")) {
    b.classList.toggle("on", b.dataset.modality === viewer.modality);
  }
}

function windowFromSliders() {
  const [lo, hi] = viewer.info.ranges[viewer.modality];
  const level = lo + (hi - lo) * $("level").value / 1000;
  const width = (hi - lo) * $("width").value / 1000;
  viewer.windows[viewer.modality] = [level - width / 2, level + width / 2];
  drawImage();
}

async function pollProgress(session) {
  while (session === viewer.session) {
    let summary;
    try {
      summary = await (await api(session)).json();
    } catch (e) {
      showError(e.message);
      return;
    }
    showSummary(summary);
    if ((summary.embedded >= summary.slices && summary.warmed) || summary.error) return;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

function showSummary(summary) {
  viewer.summary = summary;
  const done = summary.embedded >= summary.slices;
  $("progress").textContent = summary.error ? `embeddings stopped: ${summary.error}`
    : !done ? `embedding slices ${summary.embedded}/${summary.slices}…`
    : summary.warmed ? `ready: all ${summary.slices} slices embedded` : "compiling the decoder…";
  $("dice").textContent = summary.dice === null ? "" : `Dice ${(100 * summary.dice).toFixed(1)}`;
  $("voxels").textContent = `${summary.voxels} voxels`;
}

async function refresh() {
  const axis = viewer.axis;
  const n = viewer.info.shape[AXES[axis]];
  $("slice").max = n - 1;
  $("slice").value = viewer.index[axis];
  $("slice-label").textContent = `${axis} ${viewer.index[axis]}`;
  const query = `axis=${axis}&index=${viewer.index[axis]}`;
  const [image, labels] = await Promise.all([
    api(`${viewer.session}/image?modality=${viewer.modality}&${query}`), api(`${viewer.session}/labels?${query}`),
  ]);
  viewer.rows = Number(image.headers.get("X-Rows"));
  viewer.cols = Number(image.headers.get("X-Cols"));
  viewer.plane = new Uint16Array(await image.arrayBuffer());
  viewer.labels = new Uint8Array(await labels.arrayBuffer());
  resize();
  drawImage();
  drawLabels();
}

async function refreshLabels() {
  const query = `axis=${viewer.axis}&index=${viewer.index[viewer.axis]}`;
  viewer.labels = new Uint8Array(await (await api(`${viewer.session}/labels?${query}`)).arrayBuffer());
  drawLabels();
}

function resize() {
  viewer.zoom = Math.max(1, Math.floor(Math.min(720 / viewer.cols, 720 / viewer.rows)));
  for (const canvas of document.querySelectorAll("#stage canvas")) {
    if (canvas.width !== viewer.cols || canvas.height !== viewer.rows) {
      canvas.width = viewer.cols;
      canvas.height = viewer.rows;
    }
    canvas.style.width = `${viewer.cols * viewer.zoom}px`;
    canvas.style.height = `${viewer.rows * viewer.zoom}px`;
  }
}

function drawImage() {
  if (!viewer.plane) return;
  const [lo, hi] = viewer.info.ranges[viewer.modality];
  const [wlo, whi] = viewer.windows[viewer.modality];
  const context = $("image").getContext("2d");
  const out = context.createImageData(viewer.cols, viewer.rows);
  const scale = (hi - lo) / LEVELS;
  for (let i = 0; i < viewer.plane.length; i++) {
    const value = lo + viewer.plane[i] * scale;
    const grey = Math.max(0, Math.min(255, (255 * (value - wlo)) / (whi - wlo)));
    out.data.set([grey, grey, grey, 255], 4 * i);
  }
  context.putImageData(out, 0, 0);
}

function drawLabels() {
  const { rows, cols, labels } = viewer;
  const mask = $("mask").getContext("2d").createImageData(cols, rows);
  const marks = $("marks").getContext("2d");
  const contour = marks.createImageData(cols, rows);
  const gt = (r, c) => r >= 0 && r < rows && c >= 0 && c < cols && (labels[r * cols + c] & 2);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      if (labels[i] & 1) mask.data.set(MASK_RGBA, 4 * i);
      if (viewer.showGT && gt(r, c) && !(gt(r - 1, c) && gt(r + 1, c) && gt(r, c - 1) && gt(r, c + 1))) {
        contour.data.set(CONTOUR_RGBA, 4 * i);
      }
    }
  }
  $("mask").getContext("2d").putImageData(mask, 0, 0);
  marks.putImageData(contour, 0, 0);
  const summary = viewer.summary || { clicks: [], boxes: [] };
  for (const click of summary.clicks) {
    const pixel = pixelOf(click.x, click.y, click.z);
    if (!pixel) continue;
    marks.fillStyle = !click.by_user ? PROMPT_COLOURS.propagated
      : click.positive ? PROMPT_COLOURS.user : PROMPT_COLOURS.negative;
    marks.fillRect(pixel[0] - 1, pixel[1], 3, 1);  // a small plus, visible at any zoom
    marks.fillRect(pixel[0], pixel[1] - 1, 1, 3);
  }
  for (const box of viewer.axis === "axial" ? summary.boxes : []) {
    const a = pixelOf(box.x0, box.y0, box.z), b = pixelOf(box.x1, box.y1, box.z);
    if (a && b) outline(marks, a, b, box.by_user ? PROMPT_COLOURS.user : PROMPT_COLOURS.propagated);
  }
  if (viewer.press) outline(marks, viewer.press.start, viewer.press.end, PROMPT_COLOURS.dragging);
}

// A one-pixel rectangle through plane pixels a and b, its opposite corners.
function outline(context, a, b, colour) {
  const [c0, c1] = [Math.min(a[0], b[0]), Math.max(a[0], b[0])];
  const [r0, r1] = [Math.min(a[1], b[1]), Math.max(a[1], b[1])];
  context.fillStyle = colour;
  context.fillRect(c0, r0, c1 - c0 + 1, 1);
  context.fillRect(c0, r1, c1 - c0 + 1, 1);
  context.fillRect(c0, r0, 1, r1 - r0 + 1);
  context.fillRect(c1, r0, 1, r1 - r0 + 1);
}

async function change(path, body) {
  showError("");
  const start = performance.now();
  try {
    const summary = await post(`${viewer.session}/${path}`, body);
    showSummary(summary);
    await refreshLabels();
    viewer.lastLatency = { path, page: performance.now() - start, server: summary.milliseconds };
    $("latency").textContent = `${path} ${viewer.lastLatency.page.toFixed(0)} ms (server ${summary.milliseconds} ms)`;
    return summary;
  } catch (e) {
    showError(e.message);
  }
}

// The plane pixel under the mouse, kept inside the plane when the mouse leaves it mid-drag.
function pixelUnder(event) {
  const rect = $("marks").getBoundingClientRect();
  const col = Math.floor((event.clientX - rect.left) / viewer.zoom);
  const row = Math.floor((event.clientY - rect.top) / viewer.zoom);
  return [Math.max(0, Math.min(viewer.cols - 1, col)), Math.max(0, Math.min(viewer.rows - 1, row))];
}

// Press and release on one voxel: a click. Press, drag to another voxel, release: a box, those two its corners.
function onPress(event) {
  event.preventDefault();
  if (!viewer.session) return;
  if (viewer.axis !== "axial") {
    showError("clicks and boxes segment axial slices: switch the view to axial");
    return;
  }
  const start = pixelUnder(event);
  viewer.press = { start, end: start, negative: event.shiftKey || event.button === 2 };
}

function onDrag(event) {
  if (!viewer.press) return;
  const end = pixelUnder(event);
  if (end[0] === viewer.press.end[0] && end[1] === viewer.press.end[1]) return;
  viewer.press.end = end;
  drawLabels();
}

function onRelease(event) {
  const press = viewer.press;
  if (!press) return;
  viewer.press = null;
  press.end = pixelUnder(event);
  const [x, y, z] = voxelOf(...press.start);
  if (press.end[0] === press.start[0] && press.end[1] === press.start[1]) {
    change("click", { x, y, z, positive: !press.negative });
    return;
  }
  const [x1, y1] = voxelOf(...press.end);
  change("box", { x0: Math.min(x, x1), y0: Math.min(y, y1), x1: Math.max(x, x1), y1: Math.max(y, y1), z });
}

function step(delta) {
  const n = viewer.info.shape[AXES[viewer.axis]];
  const next = Math.max(0, Math.min(n - 1, viewer.index[viewer.axis] + delta));
  if (next !== viewer.index[viewer.axis]) {
    viewer.index[viewer.axis] = next;
    refresh().catch((e) => showError(e.message));
  }
}

$("marks").addEventListener("mousedown", onPress);
window.addEventListener("mousemove", onDrag);
window.addEventListener("mouseup", onRelease);  // a drag may end outside the image
$("marks").addEventListener("contextmenu", (event) => event.preventDefault());
$("stage").addEventListener("wheel", (event) => { event.preventDefault(); step(Math.sign(event.deltaY)); },
                            { passive: false });
$("slice").addEventListener("input", () => step(Number($("slice").value) - viewer.index[viewer.axis]));
$("axis").addEventListener("change", () => { viewer.axis = $("axis").value; refresh(); });
$("level").addEventListener("input", windowFromSliders);
$("width").addEventListener("input", windowFromSliders);
$("show-gt").addEventListener("change", () => { viewer.showGT = $("show-gt").checked; drawLabels(); });
$("propagate").onclick = () => change("propagate", { z: viewer.index.axial });
$("undo").onclick = () => change("undo");
$("clear-slice").onclick = () => change("clear", { z: viewer.index.axial });
$("clear-all").onclick = () => change("clear");
$("save").onclick = async () => {
  showError("");
  try {
    const saved = await post(`${viewer.session}/save`);
    $("saved").textContent = `saved ${saved.path}`;
    $("download").href = saved.download;
    $("download").download = saved.path.split("/").pop();
    $("download").hidden = false;
  } catch (e) {
    showError(e.message);
  }
};

loadCases().catch((e) => showError(e.message));
