// The page for `resnets serve`: pick or drop an image, show the top-5 classes and the Grad-CAM
// overlay. Plain JavaScript against the JSON API (POST /v1/predict, POST /v1/explain, GET /v1/model);
// nothing is fetched from outside the server.
"use strict";

const TOKEN_KEY = "resnets-serve-token";
const TOPK = 5;

const $ = (id) => document.getElementById(id);
const ui = {
  modelName: $("model-name"), modelAccuracy: $("model-accuracy"), modelSha: $("model-sha"),
  modelWeights: $("model-weights"),
  modelClasses: $("model-classes"),
  auth: $("auth"), tokenInput: $("token-input"),
  error: $("error"), status: $("status"),
  dropZone: $("drop-zone"), fileInput: $("file-input"),
  previewFigure: $("preview-figure"), preview: $("preview"), previewCaption: $("preview-caption"),
  top1: $("top1-class"), top1Prob: $("top1-prob"), predictions: $("predictions"),
  overlayFigure: $("overlay-figure"), overlay: $("overlay"), overlayCaption: $("overlay-caption"),
};

let numClasses = null;   // from /v1/model; topk must not exceed it
let pendingFile = null;  // the file to retry once a token is given
let generation = 0;      // a newer file makes older answers stale

// An answer that is not 2xx, with the API's {"error": {"code", "message"}} when it sent one.
class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;  // seconds, from a 503's Retry-After
  }
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (err) {
    throw new ApiError(0, "network", `The server could not be reached (${err.message}).`);
  }
  if (response.ok) return response;
  let code = `http_${response.status}`;
  let message = response.statusText || "Request failed";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  const retryAfter = Number(response.headers.get("Retry-After")) || null;
  throw new ApiError(response.status, code, message, retryAfter);
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401) {
    askForToken(err.message);
    return;
  }
  const where = err instanceof ApiError && err.status ? ` (${err.code}, HTTP ${err.status})` : "";
  ui.error.textContent = `${err.message}${where}`;
  ui.error.dataset.code = err.code || "";
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
  ui.error.dataset.code = "";
}

function askForToken(message) {
  const hadToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
  sessionStorage.removeItem(TOKEN_KEY);
  ui.auth.hidden = false;
  ui.error.textContent = hadToken ? `The token was refused: ${message}` : "This server needs an API token.";
  ui.error.dataset.code = "unauthorized";
  ui.error.hidden = false;
  ui.tokenInput.focus();
}

// Class names travel percent-encoded in headers (HTTP headers are latin-1).
function header(response, name) {
  const value = response.headers.get(name);
  if (value === null) return null;
  try {
    return decodeURIComponent(value);
  } catch (_) {
    return value;
  }
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

async function loadModel() {
  const info = await (await api("/v1/model")).json();
  numClasses = info.num_classes || (info.classes ? info.classes.length : null);
  ui.modelName.textContent = info.name || "?";
  const classes = info.classes || [];
  ui.modelClasses.textContent = classes.length ? `${classes.length}: ${classes.join(", ")}` : "—";
  const metrics = info.metrics || {};
  const accuracy = ["val_top1", "val_acc", "val_accuracy", "accuracy", "acc", "top1"]
    .map((key) => metrics[key]).find((value) => typeof value === "number");
  ui.modelAccuracy.textContent = accuracy === undefined ? "not recorded" : percent(accuracy);
  const sha = info.sha256 || "";
  ui.modelSha.textContent = sha ? sha.slice(0, 12) : "—";
  ui.modelSha.title = sha ? `sha256 ${sha}` : "";
  // a shipped tag ("cifar10") or a file: show its name, not the directory it lives in
  ui.modelWeights.textContent = String(info.weights || "").split(/[\\/]/).pop();
}

function showPredictions(top) {
  ui.predictions.replaceChildren();
  top.forEach((entry, rank) => {
    const item = document.createElement("li");
    item.dataset.testid = "prediction";
    item.dataset.class = entry.class;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.class;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = rank === 0 ? "fill top" : "fill";
    fill.style.width = `${Math.max(0, Math.min(1, entry.prob)) * 100}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = percent(entry.prob);
    item.append(name, bar, value);
    ui.predictions.append(item);
  });
  ui.top1.textContent = top.length ? top[0].class : "—";
  ui.top1Prob.textContent = top.length ? `(${percent(top[0].prob)})` : "";
}

function resetResults() {
  ui.predictions.replaceChildren();
  ui.top1.textContent = "—";
  ui.top1Prob.textContent = "";
  ui.overlayFigure.hidden = true;
  if (ui.overlay.src.startsWith("blob:")) URL.revokeObjectURL(ui.overlay.src);
  ui.overlay.removeAttribute("src");
  ui.overlay.alt = "";
  ui.overlayCaption.textContent = "";
}

function showPreview(file) {
  if (ui.preview.src.startsWith("blob:")) URL.revokeObjectURL(ui.preview.src);
  ui.preview.src = URL.createObjectURL(file);
  ui.preview.alt = `The chosen image, ${file.name}`;
  ui.previewCaption.textContent = `${file.name} · ${Math.max(1, Math.round(file.size / 1024))} KB`;
  ui.previewFigure.hidden = false;
}

async function classify(file) {
  const mine = ++generation;
  pendingFile = file;
  clearError();
  resetResults();
  showPreview(file);
  ui.status.textContent = "Classifying…";
  document.body.dataset.state = "busy";
  try {
    const form = new FormData();
    form.append("images", file, file.name);
    const topk = numClasses ? Math.min(TOPK, numClasses) : TOPK;
    const answer = await (await api(`/v1/predict?topk=${topk}`, { method: "POST", body: form })).json();
    if (mine !== generation) return;
    const prediction = answer.predictions[0];
    showPredictions(prediction.top);

    ui.status.textContent = "Computing the Grad-CAM overlay…";
    const single = new FormData();
    single.append("image", file, file.name);
    const response = await api("/v1/explain", { method: "POST", body: single });
    const png = await response.blob();
    if (mine !== generation) return;
    const cls = header(response, "X-Explained-Class") || header(response, "X-Predicted-Class")
      || prediction.top[0].class;
    const prob = Number(response.headers.get("X-Class-Probability") ?? NaN);
    ui.overlay.src = URL.createObjectURL(png);
    ui.overlay.alt = `Grad-CAM overlay: the regions of ${file.name} that drove the class ${cls}`;
    ui.overlayCaption.textContent = `Evidence for “${cls}”` + (Number.isFinite(prob) ? ` (${percent(prob)})` : "");
    ui.overlayFigure.hidden = false;
    pendingFile = null;
    ui.status.textContent = `${file.name}: ${prediction.top[0].class}`;
    document.body.dataset.state = "done";
  } catch (err) {
    if (mine !== generation) return;
    ui.status.textContent = "";
    document.body.dataset.state = "error";
    showError(err);
  }
}

function chooseFile(files) {
  if (!files || files.length === 0) return;
  classify(files[0]);
}

ui.fileInput.addEventListener("change", () => {
  chooseFile(ui.fileInput.files);
  ui.fileInput.value = "";  // choosing the same file again must run again
});

["dragenter", "dragover"].forEach((type) => ui.dropZone.addEventListener(type, (event) => {
  event.preventDefault();
  ui.dropZone.classList.add("dragging");
}));
["dragleave", "dragend"].forEach((type) => ui.dropZone.addEventListener(type, () => {
  ui.dropZone.classList.remove("dragging");
}));
ui.dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.dropZone.classList.remove("dragging");
  chooseFile(event.dataTransfer && event.dataTransfer.files);
});
// A file dropped beside the zone must not replace the page.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

ui.auth.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.tokenInput.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  ui.tokenInput.value = "";
  ui.auth.hidden = true;
  clearError();
  start().then(() => { if (pendingFile) classify(pendingFile); }, () => {});
});

async function start() {
  try {
    await loadModel();
    document.body.dataset.model = "loaded";
    if (ui.error.dataset.code === "not_ready") clearError();
  } catch (err) {
    showError(err);
    // Still loading the model (or restarting): ask again when the server says to.
    if (err.status === 503) setTimeout(() => start().catch(() => {}), 1000 * Math.min(err.retryAfter || 1, 30));
    throw err;
  }
}

start().catch(() => {});
