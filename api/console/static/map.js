"use strict";
// The embedding map: up to 100,000 points drawn into one ImageData per frame (no object per
// point), a grid over the points to find the one under the mouse, wheel to zoom, drag to pan.
// Uses `base`, `api`, `auth`, `el` and `$` from console.js.

const PALETTE = [
  [37, 99, 235], [217, 119, 6], [22, 163, 74], [220, 38, 38], [147, 51, 234], [8, 145, 178],
  [219, 39, 119], [101, 163, 13], [234, 88, 12], [79, 70, 229], [13, 148, 136], [161, 98, 7],
];
const OTHER = [150, 150, 150];
const NONE = [210, 210, 210];
const GRID = 128;

const state = {
  n: 0, ids: null, x: null, y: null, doc: null, documents: [], rgb: null,
  marks: { duplicates: new Set(), outliers: new Set(), picked: new Set() },
  view: { scale: 1, dx: 0, dy: 0 }, bounds: null, grid: null, index: new Map(), hover: -1,
};

function documentColour(i) {
  // HSL (saturation 60 %, lightness 45 %) with golden-angle hues: neighbouring document
  // numbers get far-apart colours.
  const hue = (i * 137.508) % 360;
  const f = (k) => {
    const t = (k + hue / 30) % 12;
    return Math.round(255 * (0.45 - 0.27 * Math.max(-1, Math.min(t - 3, 9 - t, 1))));
  };
  return [f(0), f(8), f(4)];
}

function toScreen(i, canvas) {
  const { minX, minY, span } = state.bounds;
  const size = Math.min(canvas.width, canvas.height) - 20;
  const sx = ((state.x[i] - minX) / span) * size + (canvas.width - size) / 2;
  const sy = canvas.height - (((state.y[i] - minY) / span) * size + (canvas.height - size) / 2);
  return [(sx - canvas.width / 2) * state.view.scale + canvas.width / 2 + state.view.dx,
          (sy - canvas.height / 2) * state.view.scale + canvas.height / 2 + state.view.dy];
}

function draw() {
  const canvas = $("#map");
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  const pixels = image.data;
  const { width, height } = canvas;
  // Squares of `size` pixels: larger when there are few points, 2 at 20,000 and more.
  const size = state.n < 2000 ? 5 : state.n < 20000 ? 3 : 2;
  const half = Math.floor(size / 2);
  for (let i = 0; i < state.n; i++) {
    const [sx, sy] = toScreen(i, canvas);
    const px = Math.round(sx) - half;
    const py = Math.round(sy) - half;
    if (px < 0 || py < 0 || px > width - size || py > height - size) continue;
    for (let dy = 0; dy < size; dy++) {
      for (let dx = 0; dx < size; dx++) {
        const at = ((py + dy) * width + px + dx) * 4;
        pixels[at] = state.rgb[3 * i];
        pixels[at + 1] = state.rgb[3 * i + 1];
        pixels[at + 2] = state.rgb[3 * i + 2];
        pixels[at + 3] = 255;
      }
    }
  }
  ctx.putImageData(image, 0, 0);
  ring(ctx, canvas, state.marks.duplicates, "#111", 4);
  ring(ctx, canvas, state.marks.outliers, "#dc2626", 6);
  ring(ctx, canvas, state.marks.picked, "#000", 8, 2.5);
  if (state.hover >= 0) ring(ctx, canvas, new Set([state.ids[state.hover]]), "#000", 5, 1.5);
}

function ring(ctx, canvas, chunks, colour, radius, width = 1) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  for (const id of chunks) {
    const i = state.index.get(id);
    if (i === undefined) continue;
    const [sx, sy] = toScreen(i, canvas);
    ctx.beginPath();
    ctx.arc(sx, sy, radius, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

// A grid of point indexes over the map's bounds, to find the points near the mouse.
function buildGrid() {
  const { minX, minY, span } = state.bounds;
  const cells = Array.from({ length: GRID * GRID }, () => []);
  for (let i = 0; i < state.n; i++) {
    const cx = Math.min(GRID - 1, Math.floor(((state.x[i] - minX) / span) * GRID));
    const cy = Math.min(GRID - 1, Math.floor(((state.y[i] - minY) / span) * GRID));
    cells[cy * GRID + cx].push(i);
  }
  state.grid = cells;
}

function pointAt(mx, my) {
  const canvas = $("#map");
  const size = Math.min(canvas.width, canvas.height) - 20;
  const { minX, minY, span } = state.bounds;
  // The mouse in map coordinates (the inverse of toScreen).
  const sx = (mx - canvas.width / 2 - state.view.dx) / state.view.scale + canvas.width / 2;
  const sy = (my - canvas.height / 2 - state.view.dy) / state.view.scale + canvas.height / 2;
  const x = ((sx - (canvas.width - size) / 2) / size) * span + minX;
  const y = ((canvas.height - sy - (canvas.height - size) / 2) / size) * span + minY;
  const reach = 1 + Math.ceil((6 / state.view.scale / size) * GRID);
  const cx = Math.floor(((x - minX) / span) * GRID);
  const cy = Math.floor(((y - minY) / span) * GRID);
  let best = -1;
  let bestDistance = 36; // within 6 pixels
  for (let gy = Math.max(0, cy - reach); gy <= Math.min(GRID - 1, cy + reach); gy++) {
    for (let gx = Math.max(0, cx - reach); gx <= Math.min(GRID - 1, cx + reach); gx++) {
      for (const i of state.grid[gy * GRID + gx]) {
        const [px, py] = toScreen(i, canvas);
        const d = (px - mx) ** 2 + (py - my) ** 2;
        if (d < bestDistance) [best, bestDistance] = [i, d];
      }
    }
  }
  return best;
}

async function getJson(url) {
  const response = await fetch(url, { headers: auth() });
  if (!response.ok) throw new Error(await detail(response));
  return response.json();
}

async function loadMap(form) {
  const status = $("#map-status");
  const collection = encodeURIComponent(form.collection.value);
  status.textContent = "Computing the map…";
  try {
    const [meta, buffer] = await Promise.all([
      getJson(`${base}/data/map/${collection}`),
      fetch(`${base}/data/map/${collection}/points`, { headers: auth() }).then((r) => {
        if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
        return r.arrayBuffer();
      }),
    ]);
    const n = meta.points;
    state.n = n;
    state.ids = new Float64Array(buffer, 0, n);
    state.x = new Float32Array(buffer, 8 * n, n);
    state.y = new Float32Array(buffer, 12 * n, n);
    state.doc = new Uint32Array(buffer, 16 * n, n);
    state.documents = meta.documents;
    state.index = new Map(Array.from(state.ids, (id, i) => [id, i]));
    state.marks.duplicates = new Set(meta.duplicates.flatMap(([a, b]) => [a, b]));
    state.marks.outliers = new Set(meta.outliers);
    let [minX, maxX, minY, maxY] = [Infinity, -Infinity, Infinity, -Infinity];
    for (let i = 0; i < n; i++) {
      minX = Math.min(minX, state.x[i]); maxX = Math.max(maxX, state.x[i]);
      minY = Math.min(minY, state.y[i]); maxY = Math.max(maxY, state.y[i]);
    }
    state.bounds = { minX, minY, span: Math.max(maxX - minX, maxY - minY, 1e-9) };
    state.view = { scale: 1, dx: 0, dy: 0 };
    buildGrid();
    await colour(form);
    await pick(form);
    const sample = n < meta.total ? ` (a sample of ${meta.total.toLocaleString()})` : "";
    status.textContent = `${n.toLocaleString()} chunks${sample}, ${meta.documents.length.toLocaleString()} documents; ` +
      (meta.duplicates_looked_for
        ? `${meta.duplicates.length} near-duplicate pairs (black rings), `
        : `near-duplicates looked for only in indexed collections of up to ${meta.duplicates_max_chunks.toLocaleString()} chunks, `) +
      `${meta.outliers.length} outliers (red rings). ` +
      `PCA of the embeddings; wheel to zoom, drag to pan.`;
    $("#map").dataset.points = String(n);
    draw();
  } catch (error) {
    status.textContent = error.message;
  }
}

// Each point's colour, once per colouring: by document, or by the server's groups.
async function colour(form) {
  const legend = $("#map-legend");
  legend.replaceChildren();
  state.rgb = new Uint8Array(3 * state.n);
  if (form.by.value === "document") {
    const colours = state.documents.map((_, d) => documentColour(d));
    for (let i = 0; i < state.n; i++) state.rgb.set(colours[state.doc[i]], 3 * i);
    return;
  }
  const collection = encodeURIComponent(form.collection.value);
  const params = new URLSearchParams({ by: form.by.value, field: form.field.value });
  const { labels, groups } = await getJson(`${base}/data/map/${collection}/colors?${params}`);
  const colours = labels.map((_, i) => (i < labels.length - 2 ? PALETTE[i % PALETTE.length] : i === labels.length - 2 ? OTHER : NONE));
  for (let i = 0; i < state.n; i++) state.rgb.set(colours[groups[i]], 3 * i);
  labels.forEach((label, i) => {
    const swatch = el("span", "", { class: "swatch" });
    swatch.style.background = `rgb(${colours[i].join(",")})`;
    legend.append(swatch, ` ${label} `);
  });
}

// The chunks to ring: given in the URL (an answer's passages), or found by a search.
async function pick(form) {
  const given = new URLSearchParams(location.search).get("chunks");
  state.marks.picked = new Set((given || "").split(",").filter(Boolean).map(Number));
  if (!form.query.value.trim()) return;
  const response = await fetch(`${api}/v1/search`, {
    method: "POST",
    headers: { ...auth(), "Content-Type": "application/json" },
    body: JSON.stringify({ query: form.query.value, collection: form.collection.value, k: 10 }),
  });
  if (!response.ok) throw new Error(await detail(response));
  state.marks.picked = new Set((await response.json()).passages.map((p) => p.chunk_id));
}

function openChunk(id) {
  state.marks.picked = new Set([...state.marks.picked, id]);
  htmx.ajax("GET", `${base}/parts/chunks/${id}`, { target: "#map-side" });
  draw();
}

// Canvas pixels of a mouse event (the canvas may be drawn smaller than its pixels).
function mouse(event) {
  const canvas = event.target;
  return [event.offsetX * (canvas.width / canvas.clientWidth), event.offsetY * (canvas.height / canvas.clientHeight)];
}

function setUp(form) {
  const canvas = $("#map");
  const params = new URLSearchParams(location.search);
  if (params.get("collection")) form.collection.value = params.get("collection");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    loadMap(form);
  });
  let drag = null;
  canvas.addEventListener("mousedown", (e) => {
    const [x, y] = mouse(e);
    drag = { x, y, moved: false };
  });
  canvas.addEventListener("mouseup", (e) => {
    if (drag && !drag.moved && state.n) {
      const i = pointAt(...mouse(e));
      if (i >= 0) openChunk(state.ids[i]);
    }
    drag = null;
  });
  canvas.addEventListener("mousemove", (e) => {
    if (!state.n) return;
    const [x, y] = mouse(e);
    if (drag && (Math.abs(x - drag.x) > 3 || Math.abs(y - drag.y) > 3 || drag.moved)) {
      state.view.dx += x - drag.x;
      state.view.dy += y - drag.y;
      Object.assign(drag, { x, y, moved: true });
      return requestAnimationFrame(draw);
    }
    const i = pointAt(x, y);
    const tip = $("#map-tip");
    tip.hidden = i < 0;
    if (i >= 0) {
      tip.textContent = state.documents[state.doc[i]];
      tip.style.left = `${e.offsetX + 12}px`;
      tip.style.top = `${e.offsetY + 12}px`;
    }
    if (i !== state.hover) {
      state.hover = i;
      requestAnimationFrame(draw);
    }
  });
  canvas.addEventListener("wheel", (e) => {
    if (!state.n) return;
    e.preventDefault();
    const factor = e.deltaY < 0 ? 1.25 : 0.8;
    const [x, y] = mouse(e);
    // Zoom about the mouse: the point under it stays put.
    state.view.dx = (state.view.dx - (x - canvas.width / 2)) * factor + (x - canvas.width / 2);
    state.view.dy = (state.view.dy - (y - canvas.height / 2)) * factor + (y - canvas.height / 2);
    state.view.scale *= factor;
    requestAnimationFrame(draw);
  });
  $("#map-side").addEventListener("click", (e) => {
    const link = e.target.closest("a[data-chunk]");
    if (!link) return;
    e.preventDefault();
    openChunk(Number(link.dataset.chunk));
  });
  loadMap(form);
}

// Where point i is on the canvas (in CSS pixels from its corner), for tests and scripts
// that point at one.
window.pgragMap = {
  screenOf: (i) => {
    const canvas = $("#map");
    const [x, y] = toScreen(i, canvas);
    return [x * (canvas.clientWidth / canvas.width), y * (canvas.clientHeight / canvas.height)];
  },
  count: () => state.n,
  chunkId: (i) => state.ids[i],
};

htmx.onLoad((node) => {
  const form = node.id === "map-controls" ? node : $("#map-controls", node);
  if (form) setUp(form);
});
