// The saliency web page: ListModels -> a form; an ExplainRequest (protobuf JSON mapping) sent to
// :explainStream; each server-sent event drawn as it arrives. Plain modules, no dependencies.

import { colorLut } from "./colormaps.js";

const API = "v1/models";
const MAX_IMAGE_BYTES = 32 * 1024 * 1024; // the service enforces its own limit too
const MAX_CANVAS_SIDE = 480;              // overlays are drawn at most this big on the page
const CLIP_PERCENTILE = 0.995;
const TOKEN_KEY = "saliency.token";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
};

const state = {
  wire: null,        // wire.json: method name -> oneof / field JSON names / enum value names
  models: [],        // ListModels' ModelInfo, as JSON
  image: null,       // {blob, name, bitmap}
  run: null,         // the request in flight: {controller, methods, started, ...}
  lastMethods: [],   // names of the methods last sent, in order (an error's methods[i])
  lastMethodEnums: [], // the same as Method enum names
  targets: [],       // the classes the last run explains
  cards: new Map(),  // "method:target" -> card state
  labels: new Map(), // class index -> label, from the predictions
  quality: [],       // the run's QualityScores so far
};

// ------------------------------------------------------------------------------ API helpers

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

// An error body as the API writes it ({code, message, field}), or as a proxy or the framework
// might ({error: {...}}, {detail: ...}, plain text): whatever it is, keep the words.
async function apiError(response) {
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  const e = body && typeof body === "object" ? (body.error && typeof body.error === "object" ? body.error : body) : {};
  let message = e.message ?? (typeof e.detail === "string" ? e.detail : e.detail ? JSON.stringify(e.detail) : text);
  if (!message) message = response.statusText || "no message";
  return new ApiError(response.status, e.code ?? e.status ?? "", String(message), e.field ?? "");
}

async function getJson(url) {
  let response;
  try {
    response = await fetch(url, { headers: authHeaders() });
  } catch (err) {
    throw new ApiError(0, "UNAVAILABLE", `the service did not answer (${err.message})`, "");
  }
  if (!response.ok) throw await apiError(response);
  return response.json();
}

// ------------------------------------------------------------------------------- start-up

async function init() {
  const token = $("token");
  token.value = sessionStorage.getItem(TOKEN_KEY) ?? "";
  token.addEventListener("change", () => {
    const value = token.value.trim();
    if (value === (sessionStorage.getItem(TOKEN_KEY) ?? "")) return; // a blur after Enter
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    loadModels();
  });
  wireImageInputs();
  $("model").addEventListener("change", renderModel);
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); explain(); });
  $("cancel").addEventListener("click", () => state.run?.controller.abort());
  $("opacity").addEventListener("input", () => { $("opacity-value").value = Number($("opacity").value).toFixed(2); redrawAll(); });
  $("colormap").addEventListener("change", redrawAll);
  $("clip").addEventListener("change", redrawAll);
  for (const id of ["top-k", "classes"]) {
    $(id).addEventListener("focus", () => { document.querySelector(`input[name=targets][value=${id === "top-k" ? "top_k" : "classes"}]`).checked = true; });
  }
  try {
    state.wire = await getJson("wire.json");
  } catch (err) {
    showError(err, "loading the page's parameter table (wire.json)");
    return;
  }
  await loadModels();
}

async function loadModels() {
  setStatus("loading", "Loading models…");
  try {
    state.models = (await getJson(API)).models ?? [];
  } catch (err) {
    showError(err, "listing models (GET /v1/models)");
    setStatus("error", err.status === 401 ? "The service wants a token: enter it above." : "Could not list the models.");
    return;
  }
  clearError();
  const select = $("model");
  const previous = select.value;
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.name }, m.name)));
  if (state.models.some((m) => m.name === previous)) select.value = previous;
  else if (state.models.some((m) => m.name === "efficientnet_lite0")) select.value = "efficientnet_lite0";
  renderModel();
  setStatus("idle", state.models.length ? "Ready." : "The service serves no model.");
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value);
}

// ------------------------------------------------------------------------------ the form

function renderModel() {
  const model = currentModel();
  const box = $("methods");
  if (!model) { box.replaceChildren(); return; }
  const size = `${model.height ?? 0}×${model.width ?? 0}`;
  const notes = [model.description, `input ${size}, ${model.resize ?? "stretch"}`, `${model.numClasses ?? 0} classes`];
  if (!model.pretrained) notes.push("random weights: its maps explain no real knowledge");
  $("model-info").textContent = notes.filter(Boolean).join(" · ");
  $("top-k").max = model.maxTargets ?? 1;

  const checked = new Set([...box.querySelectorAll("input.method:checked")].map((c) => c.value));
  if (!checked.size) checked.add("gradcam");
  const groups = { fast: [], deep: [] };
  for (const info of model.methods ?? []) (groups[info.kind] ?? groups.deep).push(info);
  box.replaceChildren(
    ...Object.entries(groups).filter(([, list]) => list.length).map(([kind, list]) => el("fieldset", { class: "method-group" },
      el("legend", {}, kind === "fast" ? "fast (same pass as the prediction)" : "deep (batched, stream in)"),
      ...list.map((info) => methodRow(info, checked.has(info.name))))),
  );
  updateRunButton();
}

function shortName(info) {
  const summary = info.summary ?? info.name;
  const cut = summary.search(/ \(|: |; /);
  return cut > 0 ? summary.slice(0, cut) : summary;
}

function methodRow(info, checked) {
  const params = (info.parameters ?? []).filter((p) => p.type !== "tensor");
  const row = el("div", { class: "method", dataset: { method: info.name } },
    el("label", { title: info.summary ?? "" },
      el("input", { type: "checkbox", class: "method", value: info.name, checked, onchange: updateRunButton }),
      ` ${shortName(info)} `, el("code", {}, info.name)));
  if (params.length) {
    row.append(el("details", {},
      el("summary", {}, "settings"),
      el("div", { class: "params" }, ...params.map((p) => paramInput(info.name, p)))));
  }
  return row;
}

function paramInput(method, p) {
  const id = `param-${method}-${p.name}`;
  const label = p.name.replaceAll("_", " ");
  const hasDefault = p.defaultValue !== undefined && p.defaultValue !== "";
  let input;
  if (p.type === "enum") {
    input = el("select", { id }, ...(p.choices ?? []).map((c) => el("option", { value: c, selected: c === p.defaultValue }, c)));
  } else {
    const range = [p.minimum !== undefined ? `min ${formatNumber(p.minimum)}` : "", p.maximum !== undefined ? `max ${formatNumber(p.maximum)}` : ""].filter(Boolean).join(", ");
    input = el("input", {
      id, type: "number", step: p.type === "int" ? "1" : "any", inputmode: p.type === "int" ? "numeric" : "decimal",
      min: p.minimum, max: p.maximum, value: hasDefault ? p.defaultValue : "", placeholder: hasDefault ? "" : "default",
      title: range,
    });
  }
  input.dataset.param = p.name;
  input.dataset.type = p.type;
  input.dataset.default = p.defaultValue ?? "";
  const hint = [hasDefault ? `default ${p.defaultValue}` : "", p.minimum !== undefined || p.maximum !== undefined ? `${formatNumber(p.minimum ?? "…")} to ${formatNumber(p.maximum ?? "…")}` : ""]
    .filter(Boolean).join(", ");
  return el("label", { for: id, class: "param" }, el("span", {}, label), input, el("small", {}, hint));
}

function updateRunButton() {
  $("run").disabled = !(state.image && currentModel() && document.querySelector("input.method:checked")) || !!state.run;
}

// One MethodRequest as protobuf JSON: only the parameters that differ from the advertised
// default are sent, so the service's own default applies to the rest.
function methodRequest(info) {
  const wire = state.wire.methods[info.name];
  const request = { method: info.method };
  const params = {};
  for (const input of document.querySelectorAll(`[data-method="${info.name}"] [data-param]`)) {
    const name = input.dataset.param;
    const raw = input.value.trim();
    if (raw === "" || raw === input.dataset.default) continue;
    if (input.dataset.type === "enum") {
      params[wire.fields[name]] = wire.enums[name]?.[raw] ?? raw;
    } else {
      const value = Number(raw);
      if (input.dataset.default !== "" && value === Number(input.dataset.default)) continue;
      // Not a number, or an integer past 2^53 (seeds are int64): sent as typed, a JSON string
      // protobuf's mapping reads exactly, or names the field when it cannot.
      const exact = Number.isFinite(value) && (input.dataset.type !== "int" || Number.isSafeInteger(value));
      params[wire.fields[name] ?? name] = exact ? value : raw;
    }
  }
  if (Object.keys(params).length) request[wire.oneof] = params;
  return request;
}

class FormError extends Error {
  constructor(field, message) { super(message); this.field = field; this.code = "INVALID_ARGUMENT"; this.status = 0; }
}

function targetsRequest() {
  const mode = document.querySelector("input[name=targets]:checked").value;
  if (mode === "top_k") {
    const raw = $("top-k").value.trim();
    if (!/^\d+$/.test(raw)) throw new FormError("targets.top_k", `targets.top_k: ${JSON.stringify(raw)} is not a whole number`);
    return { topK: Number(raw) };
  }
  const tokens = $("classes").value.split(/[\s,]+/).filter(Boolean);
  if (!tokens.length) throw new FormError("targets.classes.indices", "targets.classes.indices: give at least one class index, e.g. 285");
  const bad = tokens.find((t) => !/^\d+$/.test(t));
  if (bad !== undefined) throw new FormError("targets.classes.indices", `targets.classes.indices: ${JSON.stringify(bad)} is not a class index (a whole number)`);
  return { classes: { indices: tokens.map(Number) } };
}

// ------------------------------------------------------------------------------ the image

function wireImageInputs() {
  const drop = $("drop");
  const file = $("file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); } });
  file.addEventListener("change", () => { if (file.files[0]) setImage(file.files[0], file.files[0].name); });
  for (const kind of ["dragenter", "dragover"]) drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const kind of ["dragleave", "drop"]) drop.addEventListener(kind, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const f = e.dataTransfer.files[0];
    if (f) setImage(f, f.name);
  });
  document.addEventListener("paste", (e) => {
    const f = [...(e.clipboardData?.files ?? [])].find((x) => x.type.startsWith("image/"));
    if (f) setImage(f, "pasted image");
  });
  for (const button of document.querySelectorAll("button.sample")) {
    button.addEventListener("click", async () => {
      const name = button.dataset.sample;
      try {
        const response = await fetch(`samples/${name}.jpg`);
        if (!response.ok) throw await apiError(response);
        await setImage(await response.blob(), `${name}.jpg`);
      } catch (err) {
        showError(err, `loading the bundled photograph ${name}`);
      }
    });
  }
}

// The format from the file's first bytes (what the service decodes by), not its name or MIME type.
async function sniffFormat(blob) {
  const b = new Uint8Array(await blob.slice(0, 12).arrayBuffer());
  const ascii = (from, to) => String.fromCharCode(...b.slice(from, to));
  if (b[0] === 0x89 && ascii(1, 4) === "PNG") return "PNG";
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "JPEG";
  if (ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return "WebP";
  return null;
}

async function setImage(blob, name) {
  clearError();
  if (!(await sniffFormat(blob))) {
    showError(new FormError("image", `image: ${name} is not a PNG, JPEG or WebP file`));
    return;
  }
  if (blob.size > MAX_IMAGE_BYTES) {
    showError(new FormError("image", `image: ${name} is ${(blob.size / 1048576).toFixed(1)} MiB; this page sends at most ${MAX_IMAGE_BYTES / 1048576} MiB`));
    return;
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch {
    showError(new FormError("image", `image: ${name} could not be decoded by the browser`));
    return;
  }
  state.image = { blob, name, bitmap };
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("drop-text").textContent = `${name} · ${bitmap.width}×${bitmap.height} · drop or click to change`;
  updateRunButton();
}

function blobBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// ------------------------------------------------------------------------------ explain

async function explain() {
  if (state.run) return;
  clearError();
  const model = currentModel();
  const chosen = (model.methods ?? []).filter((m) => document.querySelector(`input.method[value="${m.name}"]`)?.checked);
  state.lastMethods = chosen.map((m) => m.name);
  state.lastMethodEnums = chosen.map((m) => m.method);
  let body;
  try {
    body = {
      model: model.name,
      targets: targetsRequest(),
      methods: chosen.map(methodRequest),
      output: { mapDtype: "DTYPE_FLOAT32", topPredictions: 5 },
    };
  } catch (err) {
    showError(err);
    return;
  }
  if ($("evaluate").checked) body.evaluate = {};
  const timeout = $("timeout").value.trim();
  // Sent as typed: the service checks the range and names the header when it is wrong.
  const deadline = timeout ? { "x-request-timeout": timeout } : {};

  resetResults();
  const controller = new AbortController();
  const image = state.image;
  state.run = { controller, methods: chosen, started: performance.now(), model, bitmap: image.bitmap, predicted: false };
  $("cancel").hidden = false;
  updateRunButton();
  setStatus("running", "Sending the image…");
  try {
    body.image = await blobBase64(image.blob);
    const response = await fetch(`${API}/${encodeURIComponent(model.name)}:explainStream`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...deadline, ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw await apiError(response);
    setStatus("running", "Computing the prediction…");
    await readEvents(response.body, onEvent);
    finishRun();
  } catch (err) {
    if (err.name === "AbortError") {
      finishRun("stopped");
    } else {
      finishRun("error");
      showError(err.status === undefined ? new ApiError(0, "UNAVAILABLE", err.message, "") : err);
    }
  }
}

// Server-sent events from a fetch body: blank-line separated blocks of "event:" / "data:" lines.
async function readEvents(stream, handle) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") name = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) handle(name, data.join("\n"));
    }
  }
}

// Events are ExplainEvent JSON ({prediction} | {attribution} | {policy} | {quality}) or whole
// ExplainResponse JSON; an error event carries {code, message, field}.
function onEvent(name, data) {
  state.run.eventMs = performance.now() - state.run.started; // maps of one event arrived together
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    throw new ApiError(200, "INTERNAL", `the stream sent an event that is not JSON: ${data.slice(0, 200)}`, "");
  }
  const error = name === "error" ? (event.error ?? event) : event.error;
  if (error) throw new ApiError(error.httpStatus ?? 200, error.code ?? error.status ?? "", error.message ?? JSON.stringify(error), error.field ?? "");
  if (event.prediction) onResponse(event.prediction);
  else if (event.attribution) onAttribution(event.attribution);
  else if (event.policy && Object.keys(event).length === 1) onPolicy(event.policy);
  else if (event.quality && !Array.isArray(event.quality)) onQuality(event.quality.scores ?? []);
  else onResponse(event);
}

function onResponse(response) {
  if (response.predictions && !state.run.predicted) onPrediction(response);
  for (const a of response.attributions ?? []) onAttribution(a);
  if (Array.isArray(response.quality) && response.quality.length) onQuality(response.quality);
  if (response.policy) onPolicy(response.policy);
}

function onPrediction(response) {
  const run = state.run;
  run.predicted = true;
  run.predictionMs = run.eventMs;
  const list = $("predictions");
  list.replaceChildren(...(response.predictions ?? []).map((p, i) => {
    const index = p.classIndex ?? 0;
    state.labels.set(index, p.label ?? "");
    const probability = p.probability ?? 0;
    return el("li", { class: i === 0 ? "top" : "", dataset: { classIndex: String(index) } },
      el("span", { class: "label" }, p.label || `class ${index}`),
      el("span", { class: "index" }, `#${index}`),
      el("span", { class: "bar" }, el("span", { style: `width:${(probability * 100).toFixed(1)}%` })),
      el("span", { class: "prob" }, `${(probability * 100).toFixed(1)} %`));
  }));
  $("prediction-panel").hidden = false;
  $("prediction-panel").dataset.arrivedMs = String(Math.round(run.predictionMs));
  $("view").hidden = false;
  $("empty").hidden = true;
  // One column (a phone): the results are below the form, bring them up.
  if (matchMedia("(max-width: 860px)").matches) $("prediction-panel").scrollIntoView({ behavior: "smooth" });
  run.targets = (response.targets ?? []).map(Number);
  state.targets = run.targets;
  // A placeholder per expected map, so the grid shows what is still coming.
  for (const target of run.targets) {
    for (const info of run.methods) ensureCard(info.method, target, info.kind !== "fast");
  }
  updateProgress();
}

function onAttribution(a) {
  const run = state.run;
  const card = ensureCard(a.method, a.target ?? 0, false);
  const map = a.map ?? {};
  const shape = (map.shape ?? []).map(Number);
  if (shape.length !== 2) throw new ApiError(200, "INTERNAL", `a map of shape [${shape}] came back; expected [H, W]`, "");
  const bytes = base64Bytes(map.data ?? "");
  const values = decodeMap(bytes, map.dtype ?? "DTYPE_FLOAT32", shape[0] * shape[1]);
  Object.assign(card, {
    done: true, values, height: shape[0], width: shape[1],
    region: a.region ?? null, stats: a.stats ?? {}, queueMs: a.queueMs ?? 0, computeMs: a.computeMs ?? 0,
    arrivedMs: run.eventMs,
  });
  card.range = valueRange(values);
  card.node.classList.remove("pending");
  card.node.dataset.state = "done";
  card.node.dataset.arrivedMs = String(Math.round(card.arrivedMs));
  drawCard(card);
  fillCardInfo(card);
  updateProgress();
}

function onPolicy(policy) {
  const p = $("policy");
  const parts = [policy.reason];
  for (const c of policy.choices ?? []) {
    if (c.reason) parts.push(`${methodInfo(c.requested)?.name ?? c.requested}: ${c.reason}`);
  }
  p.textContent = `Latency policy: ${parts.filter(Boolean).join("; ")}`;
  p.hidden = false;
}

// Quality scores as two tables: one row per map (deletion, insertion, completeness, contrast
// with the runner-up, pointing game), one row per pair of methods (agreement).
const MAP_METRICS = ["deletion_auc", "insertion_auc", "completeness_error", "map_error", "pointing_game", "contrast_spearman", "contrast_top_iou"];
const PAIR_METRICS = ["agreement_spearman", "agreement_top_iou"];

function onQuality(scores) {
  state.quality.push(...scores);
  const perMap = new Map();
  const perPair = new Map();
  for (const s of state.quality) {
    const method = s.method ?? "METHOD_UNSPECIFIED";
    const target = s.target ?? 0;
    const pair = PAIR_METRICS.includes(s.metric);
    const key = pair ? `${method}|${s.otherMethod}|${target}` : `${method}|${target}`;
    const rows = pair ? perPair : perMap;
    if (!rows.has(key)) rows.set(key, { method, other: s.otherMethod, target, values: {} });
    rows.get(key).values[s.metric] = s;
  }
  // Rows in the grid's order: by class, then by the order the methods were asked for.
  const rank = (r) => [state.targets.indexOf(r.target), state.lastMethodEnums.indexOf(r.method), state.lastMethodEnums.indexOf(r.other)];
  const sorted = (rows) => [...rows.values()].sort((a, b) => {
    const [x, y] = [rank(a), rank(b)];
    return x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
  });
  const table = (rows, metrics, heads) => {
    const used = metrics.filter((m) => [...rows.values()].some((r) => m in r.values));
    const extra = Object.keys(Object.assign({}, ...[...rows.values()].map((r) => r.values))).filter((m) => !metrics.includes(m));
    const columns = [...used, ...extra];
    return el("table", { class: "quality" },
      el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", {}, h)), ...columns.map((m) => el("th", { class: "num" }, m.replaceAll("_", " "))))),
      el("tbody", {}, ...sorted(rows).map((r) => el("tr", {},
        el("td", {}, methodLabel(r.method)),
        ...(heads.length === 3 ? [el("td", {}, methodLabel(r.other))] : []),
        el("td", {}, classLabel(r.target)),
        ...columns.map((m) => {
          const score = r.values[m];
          const title = score?.otherTarget !== undefined ? `vs ${classLabel(score.otherTarget)}` : "";
          return el("td", { class: "num", title, dataset: { metric: m } }, score ? formatNumber(score.value ?? 0) : "");
        })))));
  };
  const box = $("quality");
  box.replaceChildren(
    perMap.size ? table(perMap, MAP_METRICS, ["method", "class"]) : null,
    perPair.size ? el("h3", {}, "Agreement between methods") : null,
    perPair.size ? table(perPair, PAIR_METRICS, ["method", "compared with", "class"]) : null,
  );
  $("quality-panel").hidden = false;
}

function finishRun(outcome = "done") {
  const run = state.run;
  state.run = null;
  $("cancel").hidden = true;
  updateRunButton();
  if (!run) return;
  for (const card of state.cards.values()) {
    if (!card.done) {
      card.node.dataset.state = "missing";
      card.node.querySelector(".info").textContent = outcome === "done" ? "not delivered (see the policy note)" : outcome;
    }
  }
  const seconds = ((performance.now() - run.started) / 1000).toFixed(1);
  const maps = [...state.cards.values()].filter((c) => c.done).length;
  if (outcome === "done") setStatus("done", `Done in ${seconds} s: ${maps} map${maps === 1 ? "" : "s"}.`);
  else if (outcome === "stopped") setStatus("stopped", `Stopped after ${seconds} s.`);
  else setStatus("error", `Failed after ${seconds} s (${maps} map${maps === 1 ? "" : "s"} arrived).`);
}

function updateProgress() {
  const cards = [...state.cards.values()];
  const done = cards.filter((c) => c.done).length;
  const waiting = [...new Set(cards.filter((c) => !c.done).map((c) => methodInfo(c.method)?.name ?? c.method))];
  const prediction = state.run?.predictionMs !== undefined ? `Prediction in ${(state.run.predictionMs / 1000).toFixed(2)} s · ` : "";
  setStatus("running", `${prediction}${done} of ${cards.length} maps${waiting.length ? ` · computing ${waiting.join(", ")}…` : ""}`);
}

// ------------------------------------------------------------------------------ maps

function methodInfo(enumName) {
  return state.run?.model.methods.find((m) => m.method === enumName) ?? currentModel()?.methods.find((m) => m.method === enumName);
}

function methodLabel(enumName) {
  const info = methodInfo(enumName);
  return info ? shortName(info) : enumName;
}

function classLabel(index) {
  const label = state.labels.get(index);
  return label ? `${label} (#${index})` : `#${index}`;
}

function ensureCard(method, target, pending) {
  const key = `${method}:${target}`;
  let card = state.cards.get(key);
  if (card) return card;
  const info = methodInfo(method);
  const name = info?.name ?? method.toLowerCase();
  const canvas = el("canvas", { dataset: { method: name, target: String(target) }, "aria-label": `${shortName(info ?? { name })} map for ${classLabel(target)}` });
  const node = el("article", { class: `card${pending ? " pending" : ""}`, dataset: { method: name, target: String(target), state: "pending" } },
    el("h3", {}, shortName(info ?? { name }), " ", el("span", { class: "class" }, classLabel(target))),
    el("div", { class: "canvas-box" }, canvas),
    el("div", { class: "info" }, pending ? "computing…" : ""),
    el("div", { class: "downloads" },
      el("button", { type: "button", class: "download-png", disabled: true, onclick: () => downloadPng(card) }, "PNG"),
      el("button", { type: "button", class: "download-npy", disabled: true, onclick: () => downloadNpy(card) }, ".npy")));
  card = { key, method, name, target, node, canvas, done: false };
  state.cards.set(key, card);
  drawBase(card);
  // Keep the grid ordered by class, then by the order the methods were asked for.
  const order = (c) => [state.run?.targets?.indexOf(c.target) ?? 0, state.run?.methods.findIndex((m) => m.method === c.method) ?? 0];
  const mine = order(card);
  const after = [...state.cards.values()].filter((c) => c !== card).find((c) => {
    const theirs = order(c);
    return theirs[0] > mine[0] || (theirs[0] === mine[0] && theirs[1] > mine[1]);
  });
  $("grid").insertBefore(node, after?.node ?? null);
  return card;
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// Little-endian float32 (or float16) -> Float32Array, whatever the machine's byte order.
function decodeMap(bytes, dtype, count) {
  const half = dtype === "DTYPE_FLOAT16" || dtype === 2;
  if (bytes.length !== count * (half ? 2 : 4)) {
    throw new ApiError(200, "INTERNAL", `a map of ${count} values came with ${bytes.length} bytes`, "");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = half ? halfToFloat(view.getUint16(2 * i, true)) : view.getFloat32(4 * i, true);
  return out;
}

function valueRange(values) {
  let min = Infinity, max = -Infinity, finite = 0;
  for (const v of values) {
    if (!Number.isFinite(v)) continue;
    finite++;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (!finite) return { min: 0, max: 0, absMax: 0, clip: 0 };
  const abs = new Float32Array(finite);
  let j = 0;
  for (const v of values) if (Number.isFinite(v)) abs[j++] = Math.abs(v);
  abs.sort();
  const clip = abs[Math.min(finite - 1, Math.floor(CLIP_PERCENTILE * (finite - 1)))];
  return { min, max, absMax: abs[finite - 1], clip, signed: min < 0 };
}

function displaySize(bitmap) {
  const scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(bitmap.width, bitmap.height));
  return [Math.max(1, Math.round(bitmap.width * scale)), Math.max(1, Math.round(bitmap.height * scale)), scale];
}

// The photograph under a map: greyscale under a signed map, so that its reds and blues are
// the only colours; a wash over it while the map is being computed.
function drawBase(card, grey = false) {
  card.bitmap ??= state.run?.bitmap ?? state.image?.bitmap;
  if (!card.bitmap) return;
  const [w, h] = displaySize(card.bitmap);
  card.canvas.width = w;
  card.canvas.height = h;
  const ctx = card.canvas.getContext("2d");
  ctx.filter = grey ? "grayscale(1) contrast(0.7) brightness(1.1)" : "none";
  ctx.drawImage(card.bitmap, 0, 0, w, h);
  ctx.filter = "none";
  if (!card.done) {
    ctx.fillStyle = "rgba(255,255,255,0.55)";
    ctx.fillRect(0, 0, w, h);
  }
}

// The map coloured into an RGBA picture of its own size, then scaled onto the part of the
// image the model saw (Attribution.region; all of it when absent).
function drawCard(card) {
  const { values, width, height, range } = card;
  drawBase(card, range.signed);
  const opacity = Number($("opacity").value);
  const choice = $("colormap").value;
  const signed = range.signed;
  const name = choice === "auto" ? (signed ? "coolwarm" : "inferno") : choice;
  const lut = colorLut(name);
  const clip = $("clip").checked;
  const scale = (clip ? range.clip : range.absMax) || range.absMax || 1;
  const lo = clip && !signed ? Math.min(range.min, range.clip) : range.min;
  const hi = clip && !signed ? range.clip : range.max;
  const span = hi - lo || 1;
  const pixels = new ImageData(width, height);
  const data = pixels.data;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) continue; // transparent where the model did not look
    let t, alpha;
    if (signed) {
      const s = Math.max(-1, Math.min(1, v / scale));
      t = 0.5 + 0.5 * s;
      // Near-zero attributions stay see-through; the square root keeps weak ones visible.
      alpha = Math.sqrt(Math.abs(s));
    } else {
      // Weighted by the value, as the CLI's overlays: cold pixels keep the photograph.
      t = Math.max(0, Math.min(1, (v - lo) / span));
      alpha = t;
    }
    const k = Math.round(t * 255) * 3;
    data[4 * i] = lut[k];
    data[4 * i + 1] = lut[k + 1];
    data[4 * i + 2] = lut[k + 2];
    data[4 * i + 3] = Math.round(255 * opacity * alpha);
  }
  const layer = new OffscreenCanvas(width, height);
  layer.getContext("2d").putImageData(pixels, 0, 0);
  const [, , s] = displaySize(card.bitmap);
  const r = card.region ?? {};
  const x0 = (r.xMin ?? 0) * s, y0 = (r.yMin ?? 0) * s;
  const x1 = r.xMax !== undefined ? r.xMax * s : card.canvas.width;
  const y1 = r.yMax !== undefined ? r.yMax * s : card.canvas.height;
  const ctx = card.canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(layer, x0, y0, x1 - x0, y1 - y0);
  const { width: w, height: h } = card.canvas;
  if (x0 > 0.5 || y0 > 0.5 || x1 < w - 0.5 || y1 < h - 0.5) {
    // A `crop` model saw only the centre: what it never looked at keeps 35 % of its
    // brightness, as in the CLI's overlays (render.OUTSIDE_DIM).
    ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
    ctx.beginPath();
    ctx.rect(0, 0, w, h);
    ctx.rect(x0, y0, x1 - x0, y1 - y0);
    ctx.fill("evenodd");
  }
  card.colormap = name;
  card.node.querySelector(".legend")?.remove();
  card.node.querySelector(".canvas-box").after(legend(name, signed ? -scale : lo, signed ? scale : hi));
}

function legend(name, lo, hi) {
  const lut = colorLut(name);
  const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => {
    const k = Math.round(t * 255) * 3;
    return `rgb(${lut[k]},${lut[k + 1]},${lut[k + 2]}) ${t * 100}%`;
  });
  return el("div", { class: "legend", title: `colormap ${name}` },
    el("span", {}, formatNumber(lo)), el("span", { class: "ramp", style: `background:linear-gradient(90deg,${stops.join(",")})` }), el("span", {}, formatNumber(hi)));
}

function redrawAll() {
  for (const card of state.cards.values()) if (card.done) drawCard(card);
}

function formatNumber(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e6) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : v.toPrecision(3).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
}

const STAT_NOTES = {
  completeness_error: "IG: |sum of the map - (F(x) - F(baseline))|, relative",
  map_error: "estimated relative L2 error of the map",
  n_steps: "integration steps used",
  samples: "model evaluations",
};

const LATENCY_STATS = new Set(["compute_ms", "queue_ms"]); // shown in the latency line

function fillCardInfo(card) {
  const latency = el("p", { class: "latency" },
    el("b", {}, `${formatNumber(Math.round(card.computeMs))} ms`), " compute",
    card.queueMs ? ` · ${formatNumber(Math.round(card.queueMs))} ms queued` : "",
    ` · arrived at ${(card.arrivedMs / 1000).toFixed(2)} s`);
  const rows = Object.entries(card.stats).filter(([k]) => !LATENCY_STATS.has(k)).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) =>
    el("tr", { title: STAT_NOTES[k] ?? "" }, el("th", {}, k.replaceAll("_", " ")), el("td", {}, formatNumber(v))));
  rows.push(el("tr", { title: "of the values returned" }, el("th", {}, "range"),
    el("td", {}, `${formatNumber(card.range.min)} … ${formatNumber(card.range.max)}`)));
  rows.push(el("tr", {}, el("th", {}, "size"), el("td", {}, `${card.height}×${card.width}`)));
  card.node.querySelector(".info").replaceChildren(latency, el("table", { class: "stats" }, el("tbody", {}, ...rows)));
  for (const b of card.node.querySelectorAll(".downloads button")) b.disabled = false;
}

// ------------------------------------------------------------------------------ downloads

function fileStem(card) {
  return `${card.name}_${card.target}`;
}

function save(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function downloadPng(card) {
  card.canvas.toBlob((blob) => save(blob, `${fileStem(card)}.png`), "image/png");
}

// NumPy's .npy format 1.0: magic, header length, a Python dict literal padded with spaces to a
// multiple of 64 bytes and ended by a newline, then the little-endian float32 values.
function npyBlob(values, shape) {
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const preamble = 10;
  const total = Math.ceil((preamble + dict.length + 1) / 64) * 64;
  const header = dict.padEnd(total - preamble - 1, " ") + "\n";
  const head = new Uint8Array(preamble + header.length);
  head.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0); // \x93NUMPY v1.0
  new DataView(head.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) head[preamble + i] = header.charCodeAt(i);
  const body = new DataView(new ArrayBuffer(values.length * 4));
  for (let i = 0; i < values.length; i++) body.setFloat32(4 * i, values[i], true);
  return new Blob([head, body.buffer], { type: "application/octet-stream" });
}

function downloadNpy(card) {
  save(npyBlob(card.values, [card.height, card.width]), `${fileStem(card)}.npy`);
}

// ------------------------------------------------------------------------------ messages

function setStatus(kind, text) {
  const status = $("status");
  status.dataset.state = kind;
  status.textContent = text;
}

function resetResults() {
  state.cards.clear();
  state.labels.clear();
  $("grid").replaceChildren();
  $("predictions").replaceChildren();
  $("quality").replaceChildren();
  state.quality = [];
  $("quality-panel").hidden = true;
  $("policy").hidden = true;
  $("prediction-panel").hidden = true;
  for (const bad of document.querySelectorAll(".invalid")) bad.classList.remove("invalid");
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
  for (const bad of document.querySelectorAll(".invalid")) bad.classList.remove("invalid");
}

// Shows what failed as the API said it: HTTP status, code, message and the field to fix; the
// form input behind the field is outlined when there is one.
function showError(err, doing = "") {
  const box = $("error");
  const status = err.status ? `HTTP ${err.status}` : err instanceof FormError ? "Not sent" : "No answer";
  box.replaceChildren(
    el("h2", {}, `${status}${err.code ? ` · ${err.code}` : ""}${doing ? ` — ${doing}` : ""}`),
    el("p", { class: "message" }, err.message || String(err)),
    err.field ? el("p", { class: "field" }, "field: ", el("code", {}, err.field)) : null,
  );
  box.dataset.status = String(err.status ?? 0);
  box.dataset.code = err.code ?? "";
  box.dataset.field = err.field ?? "";
  box.hidden = false;
  const input = inputForField(err.field);
  if (input) {
    input.classList.add("invalid");
    input.closest("details")?.setAttribute("open", "");
  }
}

// "methods[1].integrated_gradients.n_steps" -> the n_steps input of the second method sent.
function inputForField(field) {
  if (!field) return null;
  if (field.startsWith("targets.top_k") || field.startsWith("targets.topK")) return $("top-k");
  if (field.startsWith("targets.classes")) return $("classes");
  if (field === "image") return $("drop");
  const m = /^methods\[(\d+)\](?:\.(\w+)\.(\w+))?/.exec(field);
  const sent = state.lastMethods;
  if (!m || !sent[Number(m[1])]) return null;
  const name = sent[Number(m[1])];
  if (!m[3]) return document.querySelector(`[data-method="${name}"]`);
  const snake = m[3].replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  return document.getElementById(`param-${name}-${snake}`);
}

// For the browser test and the console: the .npy writer and the map decoder.
window.saliencyPage = { npyBlob, decodeMap };
init();
