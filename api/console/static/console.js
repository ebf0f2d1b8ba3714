"use strict";
// The console's own script: the API key, and what htmx does not do here: uploads, an answer
// streamed from the SSE route, and the live chart of a job's rates. Text from the server is
// always set with textContent, never parsed as HTML.

const KEY = "pgrag-key";
const base = document.body.dataset.base;
const api = document.body.dataset.api;
const page = document.body.dataset.page;
const token = () => sessionStorage.getItem(KEY);
const auth = () => ({ Authorization: `Bearer ${token()}` });
const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

async function detail(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// ---------------------------------------------------------------------------- signing in

function showSignIn(message) {
  sessionStorage.removeItem(KEY);
  $("#nav").replaceChildren();
  $("#content").replaceChildren();
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
  $("#signin-key").focus();
}

function load() {
  $("#signin").hidden = true;
  htmx.ajax("GET", `${base}/parts/nav`, { target: "#nav" });
  htmx.ajax("GET", `${base}/parts/${page}${location.search}`, { target: "#content" });
}

document.addEventListener("htmx:configRequest", (event) => {
  if (token()) event.detail.headers.Authorization = `Bearer ${token()}`;
});

document.addEventListener("htmx:responseError", (event) => {
  const xhr = event.detail.xhr;
  if (xhr.status === 401) return showSignIn("Unknown or revoked API key.");
  let message = `${xhr.status} ${xhr.statusText}`;
  try {
    message = JSON.parse(xhr.responseText).detail || message;
  } catch {}
  const target = event.detail.target;
  target.replaceChildren(el("p", typeof message === "string" ? message : JSON.stringify(message), { class: "error", role: "alert" }));
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  const handler = { signin: signIn, upload, ask }[form.id];
  if (handler) {
    event.preventDefault();
    handler(form);
  }
});

document.addEventListener("click", (event) => {
  if (event.target.id === "signout") showSignIn("Signed out.");
});

function signIn(form) {
  sessionStorage.setItem(KEY, form.key.value.trim());
  form.reset();
  load();
}

// ---------------------------------------------------------------------------- uploads

async function upload(form) {
  const error = $(".error", form);
  error.textContent = "";
  const data = new FormData();
  for (const file of form.files.files) data.append("files", file, file.name);
  const name = encodeURIComponent(form.collection.value);
  const button = $("button", form);
  button.disabled = true;
  const response = await fetch(`${api}/v1/collections/${name}/documents?create=${form.create.checked}`, {
    method: "POST",
    headers: auth(),
    body: data,
  });
  button.disabled = false;
  if (response.status !== 202) return (error.textContent = await detail(response));
  const job = await response.json();
  location.href = `${base}/jobs?job=${job.id}`;
}

// ---------------------------------------------------------------------------- jobs

// Rates from the counters the job's part shows, sampled each time it refreshes.
const samples = new Map();

function chartJob(card) {
  const id = card.dataset.job;
  const now = performance.now() / 1000;
  const series = samples.get(id) || [];
  series.push({ t: now, docs: Number(card.dataset.docs), chunks: Number(card.dataset.chunks) });
  samples.set(id, series.slice(-120));
  const rates = [];
  for (let i = 1; i < series.length; i++) {
    const dt = series[i].t - series[i - 1].t;
    rates.push({ docs: (series[i].docs - series[i - 1].docs) / dt, chunks: (series[i].chunks - series[i - 1].chunks) / dt });
  }
  const canvas = $(".rate-chart", card);
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "#ddd";
  ctx.strokeRect(0.5, 0.5, width - 1, height - 1);
  ctx.fillStyle = "#666";
  ctx.font = "11px sans-serif";
  if (!rates.length) return ctx.fillText("Rates are drawn here while the page watches the job run.", 8, 16);
  const top = Math.max(1, ...rates.map((r) => Math.max(r.docs, r.chunks)));
  ctx.fillText(`${top.toFixed(1)}/s`, 4, 12);
  for (const [field, colour] of [["docs", "#2563eb"], ["chunks", "#d97706"]]) {
    ctx.strokeStyle = colour;
    ctx.beginPath();
    rates.forEach((r, i) => {
      const x = rates.length > 1 ? (i / (rates.length - 1)) * (width - 8) + 4 : width / 2;
      const y = height - 4 - (r[field] / top) * (height - 20);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
}

// ---------------------------------------------------------------------------- ask

// Server-sent events from a fetch body: EventSource cannot send the Authorization header.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) type = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { type, data: JSON.parse(data) };
    }
  }
}

function openPassage(passage) {
  const dialog = $("#passage");
  $(".title", dialog).textContent = `[${passage.n}] ${passage.title || passage.external_id}`;
  $(".source", dialog).textContent = `${passage.external_id} · chunk ${passage.chunk_id} · #${passage.ord}`;
  $(".text", dialog).textContent = passage.text;
  $(".scores", dialog).textContent = Object.entries(passage.scores || {})
    .map(([stage, score]) => `${stage} ${Number(score).toFixed(3)}`)
    .join(" · ");
  dialog.showModal();
}

function citationButton(n, passages) {
  const button = el("button", `[${n}]`, { type: "button", class: "cite", "data-n": n });
  button.addEventListener("click", () => passages.has(n) && openPassage(passages.get(n)));
  return button;
}

// The answer's text with each [n] (or [n, m]) as a button that opens passage n.
function linkCitations(text, passages) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(/\[(\d+(?:\s*,\s*\d+)*)\]/g)) {
    parts.push(document.createTextNode(text.slice(last, match.index)));
    for (const n of match[1].split(",")) parts.push(citationButton(Number(n), passages));
    last = match.index + match[0].length;
  }
  parts.push(document.createTextNode(text.slice(last)));
  return parts;
}

async function ask(form) {
  const section = $("#answer");
  const tokens = $(".tokens", section);
  const status = $(".status", section);
  section.hidden = false;
  tokens.replaceChildren();
  tokens.dataset.tokens = "0";
  delete section.dataset.firstTokenMs;
  delete section.dataset.state;
  delete section.dataset.read;
  $(".citations", section).replaceChildren();
  $(".timings tbody", section).replaceChildren();
  $(".short span", section).textContent = "";
  status.textContent = "queued";
  const started = performance.now();
  const body = { question: form.question.value, collection: form.collection.value };
  if (form.generator.value) body.generator = form.generator.value;
  const response = await fetch(`${api}/v1/ask`, {
    method: "POST",
    headers: { ...auth(), "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status !== 202) return (status.textContent = await detail(response));
  const { id } = await response.json();
  const stream = await fetch(`${api}/v1/answers/${id}`, { headers: auth() });
  if (!stream.ok) return (status.textContent = await detail(stream));
  const passages = new Map();
  for await (const event of events(stream)) {
    const data = event.data;
    if (event.type === "status") {
      status.textContent = data.state;
      if (data.passages) {
        // generating: the generator reads passages [1] to [m] (the reranked ones near the best)
        section.dataset.read = String(data.passages);
        status.textContent += data.passages > 1 ? ` from [1]-[${data.passages}]` : " from [1]";
      }
    }
    else if (event.type === "passages") {
      for (const p of data.passages) passages.set(p.n, p);
      const link = $(".on-map", section);
      if (link) {
        const ids = data.passages.map((p) => p.chunk_id).join(",");
        link.href = `${base}/map?collection=${encodeURIComponent(body.collection)}&chunks=${ids}`;
      }
    } else if (event.type === "token") {
      if (!section.dataset.firstTokenMs) section.dataset.firstTokenMs = (performance.now() - started).toFixed(1);
      tokens.append(document.createTextNode(data.text));
      tokens.dataset.tokens = String(Number(tokens.dataset.tokens) + 1);
    } else if (event.type === "done") {
      status.textContent = "done";
      tokens.replaceChildren(...linkCitations(data.answer || "", passages));
      $(".short span", section).textContent = data.short_answer || "(none)";
      for (const c of data.citations || []) {
        const item = el("li");
        item.append(citationButton(c.n, passages), ` ${c.title || c.external_id} `, el("span", c.external_id, { class: "muted" }));
        $(".citations", section).append(item);
      }
      for (const [stage, ms] of Object.entries(data.timings || {})) {
        const row = el("tr");
        row.append(el("th", stage), el("td", Number(ms).toFixed(1), { class: "num" }));
        $(".timings tbody", section).append(row);
      }
      section.dataset.state = "done";
    } else if (event.type === "error") {
      status.textContent = `error: ${data.reason}`;
      section.dataset.state = "error";
    }
  }
}

// ---------------------------------------------------------------------------- start

htmx.onLoad((node) => {
  const card = node.id === "job" ? node : $("#job", node);
  if (card) chartJob(card);
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("current", link.dataset.page === page);
});

// After htmx has set itself up (its own DOMContentLoaded listener was added first).
document.addEventListener("DOMContentLoaded", () => (token() ? load() : showSignIn()));
