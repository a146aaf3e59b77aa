// The playground: a client of the public API only (the same routes and bodies as any other client).
// The API key stays in sessionStorage (gone when the tab closes) and travels only in the Authorization header:
// progress events are read with fetch() and parsed here, so the key never lands in a URL or an access log.
"use strict";

const KEY_STORAGE = "erasure-playground.api-key";
const TERMINAL = new Set(["ready", "succeeded", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);
const state = { erasures: [], models: [], watchedId: null, watcher: null, reportId: null };

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function say(text, isError = false) {
  const el = $("message");
  el.textContent = text;
  el.className = isError ? "message error" : "message";
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  const data = resp.headers.get("content-type")?.includes("json") ? await resp.json() : null;
  if (!resp.ok) {
    const err = data?.error;
    throw new Error(err ? `${resp.status} ${err.code}: ${err.message}` : `${resp.status} ${resp.statusText}`);
  }
  return data;
}

function setBadge(el, status) {
  el.textContent = status;
  el.className = `badge ${status}`;
}

// ---- API key -------------------------------------------------------------------------------------------------

function showKeyState() {
  $("key-state").textContent = apiKey() ? "key set for this tab" : "no key (works only with auth off)";
}

function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  $("api-key").value = "";
  showKeyState();
  loadAll();
}

// ---- models and erasures -------------------------------------------------------------------------------------

async function loadModels() {
  const list = await api("GET", "/v1/models");
  state.models = list.data;
  const select = $("model");
  const current = select.value;
  select.replaceChildren(...state.models.map((m) => new Option(`${m.id} (${m.output})`, m.id)));
  if (current) select.value = current;
}

function modelOutput(name) {
  return state.models.find((m) => m.id === name)?.output || "image";
}

async function loadErasures() {
  const ticked = new Set(tickedIds());
  state.erasures = (await api("GET", "/v1/erasures")).data;
  const rows = state.erasures.map((e) => erasureRow(e, ticked.has(e.id)));
  $("erasure-list").replaceChildren(...rows);
}

function erasureRow(erasure, ticked) {
  const row = document.createElement("tr");
  row.dataset.id = erasure.id;
  row.dataset.status = erasure.status;
  if (erasure.id === state.watchedId) row.classList.add("watched");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.className = "use-erasure";
  box.value = erasure.id;
  box.checked = ticked;
  box.disabled = erasure.status !== "ready";
  box.addEventListener("click", (ev) => ev.stopPropagation());
  const cells = [erasure.id, erasure.concept?.concept ?? "", erasure.method, erasure.model, erasure.status];
  const first = document.createElement("td");
  first.append(box);
  row.append(first, ...cells.map((text) => Object.assign(document.createElement("td"), { textContent: text })));
  row.addEventListener("click", () => watch(erasure.id));
  return row;
}

function tickedIds() {
  return [...document.querySelectorAll(".use-erasure:checked")].map((box) => box.value);
}

async function loadAll() {
  try {
    await loadModels();
    await loadErasures();
    say("");
  } catch (err) {
    say(String(err.message || err), true);
  }
}

function parseList(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean);
}

async function createErasure(event) {
  event.preventDefault();
  let options;
  try {
    options = JSON.parse($("options").value || "{}");
  } catch (err) {
    say(`options is not JSON: ${err.message}`, true);
    return;
  }
  const body = {
    concept: $("concept").value.trim(),
    synonyms: parseList($("synonyms").value),
    method: $("method").value,
    model: $("model").value,
    options,
  };
  try {
    $("create-btn").disabled = true;
    const erasure = await api("POST", "/v1/erasures", body);
    say(`created ${erasure.id} (${erasure.status})`);
    await loadErasures();
    const box = document.querySelector(`.use-erasure[value="${erasure.id}"]`);
    if (box && !box.disabled) box.checked = true;
    watch(erasure.id);
  } catch (err) {
    say(String(err.message || err), true);
  } finally {
    $("create-btn").disabled = false;
  }
}

// ---- progress over server-sent events ------------------------------------------------------------------------

function parseEvent(block) {
  const event = { event: "message", data: "", id: null };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") event.data += (event.data ? "\n" : "") + value;
    else if (field === "event") event.event = value;
    else if (field === "id") event.id = value;
  }
  return event.data ? event : null;
}

function logEvent(event) {
  const item = document.createElement("li");
  item.dataset.event = event.event;
  item.textContent = `#${event.id} ${event.event} ${event.data}`;
  const log = $("event-log");
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

function showErasureProgress(data) {
  setBadge($("progress-status"), data.status);
  $("progress-bar").value = data.progress ?? 0;
  const parts = [];
  if (data.total_steps) parts.push(`step ${data.step}/${data.total_steps}`);
  for (const [name, value] of Object.entries(data.losses || {})) parts.push(`${name} ${Number(value).toFixed(4)}`);
  if (data.eta_s != null) parts.push(`eta ${Math.round(data.eta_s)} s`);
  if (data.error) parts.push(`${data.error.code}: ${data.error.message}`);
  $("progress-detail").textContent = parts.join(" · ");
}

function handleEvent(event) {
  logEvent(event);
  const data = JSON.parse(event.data);
  if (event.event === "erasure") {
    showErasureProgress(data);
    const row = document.querySelector(`#erasure-list tr[data-id="${data.id}"]`);
    if (row && row.dataset.status !== data.status && TERMINAL.has(data.status)) loadErasures();
  } else if (event.event === "report" && data.id === state.reportId) {
    showReportProgress(data);
  }
}

async function readStream(resp, onEvent) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (!event) continue;
      onEvent(event);
      if (event.event === "end") return true;
    }
  }
}

// Follows one erasure's events until the stream ends; reconnects with Last-Event-ID when the connection drops.
async function watch(erasureId) {
  if (state.watcher) state.watcher.abort();
  const controller = new AbortController();
  state.watcher = controller;
  if (state.watchedId !== erasureId) $("event-log").replaceChildren();
  state.watchedId = erasureId;
  $("watched-id").textContent = erasureId;
  document.querySelectorAll("#erasure-list tr").forEach((r) => r.classList.toggle("watched", r.dataset.id === erasureId));
  let lastId = null;
  while (!controller.signal.aborted) {
    try {
      const extra = lastId ? { "Last-Event-ID": lastId } : {};
      const resp = await fetch(`/v1/erasures/${encodeURIComponent(erasureId)}/events`, {
        headers: headers(extra), signal: controller.signal,
      });
      if (!resp.ok) {
        say(`events: ${resp.status}`, true);
        return;
      }
      const ended = await readStream(resp, (event) => {
        if (event.id) lastId = event.id;
        handleEvent(event);
      });
      if (ended) return;
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// ---- generation ----------------------------------------------------------------------------------------------

function mediaElement(item, format) {
  if (format === "mp4") {
    const video = document.createElement("video");
    Object.assign(video, { src: `data:video/mp4;base64,${item.b64_json}`, autoplay: true, loop: true, muted: true });
    return video;
  }
  const mime = format === "png" ? "image/png" : `image/${format}`;
  return Object.assign(document.createElement("img"), { src: `data:${mime};base64,${item.b64_json}`, alt: "" });
}

async function generateSet(erasures, target) {
  const model = $("model").value;
  const prompt = $("gen-prompt").value;
  const seed = Number($("gen-seed").value || 0);
  const steps = $("gen-steps").value ? Number($("gen-steps").value) : undefined;
  let result;
  let format = "png";
  if (modelOutput(model) === "video") {
    format = "webp";  // an animated image: plays everywhere without a video codec
    result = await api("POST", "/v1/videos/generations", { prompt, model, erasures, seed, steps, response_format: format });
  } else {
    const n = Number($("gen-n").value || 1);
    result = await api("POST", "/v1/images/generations", { prompt, model, erasures, seed, steps, n });
  }
  target.replaceChildren(...result.data.map((item) => mediaElement(item, item.format || format)));
  return result;
}

async function generate(event) {
  event.preventDefault();
  // An erasure acts on the model it was made for: only the ticked ones of the selected model are sent.
  const model = $("model").value;
  const chosen = tickedIds().filter((id) => state.erasures.find((e) => e.id === id)?.model === model);
  $("after-set").textContent = chosen.length ? chosen.join(", ") : "no erasure (tick one above)";
  try {
    $("gen-btn").disabled = true;
    say("generating…");
    await generateSet([], $("before-images"));
    const after = await generateSet(chosen, $("after-images"));
    say(`generated with seed ${after.seed}; applied: ${after.erasures.join(", ") || "none"}`);
  } catch (err) {
    say(String(err.message || err), true);
  } finally {
    $("gen-btn").disabled = false;
  }
}

// ---- reports -------------------------------------------------------------------------------------------------

const PERCENT = (rate) => (typeof rate === "number" ? `${(100 * rate).toFixed(0)}%` : "");

// The judged rates per prompt group (target, paraphrases, neighbours, ...) without and with the erasure, and what
// the attack found: the figures a person checks first. The whole report stays below as JSON.
function keyFigures(report) {
  const rows = [["", "prompts", "target rate without", "with", "judged correct without → with", "pixel change"]];
  for (const section of ["efficacy", "robustness", "usability"]) {
    for (const [group, figures] of Object.entries(report[section] || {})) {
      if (figures && typeof figures.base === "number") {
        const accuracy = typeof figures.accuracy_base === "number"
          ? `${PERCENT(figures.accuracy_base)} → ${PERCENT(figures.accuracy_erased)}` : "";
        const change = figures.image_change?.mean_abs_pixel_diff;
        rows.push([section, group, PERCENT(figures.base), PERCENT(figures.erased), accuracy,
          typeof change === "number" ? change.toFixed(3) : ""]);
      }
    }
  }
  const attack = report.robustness?.attack;
  if (attack && typeof attack.best_rate === "number") {
    const found = attack.found ? "found" : "not found";
    rows.push(["attack", `${found}: +${attack.raise_pts} pts`, PERCENT(attack.erased_rate_without_attack),
      PERCENT(attack.best_rate), "", ""]);
  }
  return rows;
}

function showReport(record) {
  const report = record.report || {};
  const rows = keyFigures(report).map((cells, index) => {
    const row = document.createElement("tr");
    const tag = index === 0 ? "th" : "td";
    row.append(...cells.map((text) => Object.assign(document.createElement(tag), { textContent: text })));
    return row;
  });
  $("report-figures").replaceChildren(...rows);
  $("report-json").textContent = JSON.stringify(report, null, 2);
}

function showReportProgress(record) {
  setBadge($("report-status"), record.status);
  const p = record.progress || {};
  const fraction = typeof p === "number" ? p : p.fraction || (p.total ? p.step / p.total : 0);
  $("report-bar").value = TERMINAL.has(record.status) ? 1 : fraction;
  $("report-detail").textContent = p.phase ? `${p.phase} ${p.step}/${p.total}` : "";
}

async function showGrid(erasureId, reportId) {
  const resp = await fetch(`/v1/erasures/${erasureId}/reports/${reportId}/grid.png`, { headers: headers() });
  if (!resp.ok) throw new Error(`grid: ${resp.status}`);
  const img = $("report-grid");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(await resp.blob());
  img.hidden = false;
}

// Polls the report record (the source of truth for its result); the event stream shows its progress meanwhile.
async function followReport(erasureId, reportId) {
  for (;;) {
    const record = await api("GET", `/v1/erasures/${erasureId}/reports/${reportId}`);
    showReportProgress(record);
    if (TERMINAL.has(record.status)) {
      showReport(record);
      if (record.status === "succeeded" || record.status === "ready") await showGrid(erasureId, reportId);
      else say(`report ${record.status}: ${record.error?.message || ""}`, true);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function requestReport() {
  const erasureId = state.watchedId;
  if (!erasureId) {
    say("watch an erasure first (click its row)", true);
    return;
  }
  try {
    $("report-btn").disabled = true;
    $("report-grid").hidden = true;
    const body = { seeds: Number($("report-seeds").value || 2), attack: $("report-attack").checked };
    const record = await api("POST", `/v1/erasures/${erasureId}/reports`, body);
    state.reportId = record.id;
    $("report-id").textContent = record.id;
    setBadge($("report-status"), record.status);
    watch(erasureId);  // the stream stays open while the report runs
    await followReport(erasureId, record.id);
    say(`report ${record.id} done`);
  } catch (err) {
    say(String(err.message || err), true);
  } finally {
    $("report-btn").disabled = false;
  }
}

// ---- wiring --------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", saveKey);
  $("create-form").addEventListener("submit", createErasure);
  $("refresh-btn").addEventListener("click", loadErasures);
  $("generate-form").addEventListener("submit", generate);
  $("report-btn").addEventListener("click", requestReport);
  showKeyState();
  // Nothing is asked before a key is given (or the empty key is chosen, for a server with auth off).
  if (apiKey()) loadAll();
  else say("Enter an API key and press \"Use key\" (empty when the server runs with auth off).");
});
