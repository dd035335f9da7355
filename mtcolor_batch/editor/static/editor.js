// mtcolor-batch hints edit: plain JS, no build step, no network beyond this 127.0.0.1 server.
// Coordinates: every shape is kept in scan pixels of the upright scan (what sidecars use); the
// SVG's viewBox is the scan's size, so zooming only changes the element's CSS size.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const KINDS = ["box", "points", "polygon", "mask"];
const HINT_KEYS = ["label", "index", "box", "points", "polygon", "mask", "color", "text"];
const TOOL_HELP = {
  select: "Click a hint to select it. Pick a tool to add one.",
  box: "Drag a rectangle around the thing.",
  points: "Click inside the thing (more clicks refine it); Enter or double-click to finish, Esc to cancel.",
  polygon: "Click the corners; click the first corner, press Enter or double-click to finish; Esc cancels.",
  mask: "Paint over the thing (tick 'erase' to take paint away); Enter or 'Done' to finish.",
  label: "Click one of the detected instances (dashed boxes) to colour it by its label.",
};

const S = {
  token: "", scans: [], current: null, doc: null, etag: "none", dirty: false, tool: "select",
  zoom: 1, selected: null, draft: null, masks: {}, nextUpload: 1, colors: [], checkTimer: null,
  checkSeq: 0, problems: [], texts: [], swatches: [], brush: 12, erase: false, segUrl: null, previewUrl: null,
};
const $ = (sel, root = document) => root.querySelector(sel);

// -- server ---------------------------------------------------------------------------------
function readToken() {
  const m = /token=([^&]+)/.exec(location.hash);
  if (m) { sessionStorage.setItem("mtcolor-token", m[1]); history.replaceState(null, "", location.pathname); }
  return sessionStorage.getItem("mtcolor-token") || "";
}

async function api(path, body) {
  const opts = { headers: { "X-Editor-Token": S.token } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : await res.blob();
  return { ok: res.ok, status: res.status, data };
}

function imageUrl(kind) {
  const q = new URLSearchParams({ path: S.current.path, kind, token: S.token, v: S.etag });
  return "/api/image?" + q.toString();
}

// -- status ------------------------------------------------------------------------------------
function setStatus(text, dirty) { const el = $("#status"); el.textContent = text; el.classList.toggle("dirty", !!dirty); }
function banner(text, ok) {
  const el = $("#banner");
  if (!text) { el.hidden = true; return; }
  el.hidden = false; el.textContent = text; el.classList.toggle("ok", !!ok);
}
function markDirty() {
  S.dirty = true; setStatus("unsaved changes", true);
  clearTimeout(S.checkTimer); S.checkTimer = setTimeout(runCheck, 250);
}

// -- scan list -----------------------------------------------------------------------------------
async function loadScans() {
  const r = await api("/api/scans");
  if (!r.ok) { banner(r.data.error || "cannot list scans"); return; }
  S.scans = r.data.scans;
  renderScanList();
}

function visibleScans() {
  const q = $("#filter").value.trim().toLowerCase();
  const kind = $("#filter-kind").value;
  return S.scans.filter((s) => {
    if (q && !s.path.toLowerCase().includes(q)) return false;
    if (kind === "with") return s.sidecar;
    if (kind === "without") return !s.sidecar;
    if (kind === "problems") return s.problems > 0;
    return true;
  });
}

function renderScanList() {
  const ul = $("#scan-list"); ul.textContent = "";
  for (const s of visibleScans()) {
    const li = document.createElement("li");
    li.dataset.path = s.path;
    li.title = s.path;
    li.appendChild(document.createTextNode(s.path));
    const b = document.createElement("span");
    b.className = "badge " + (s.problems ? "bad" : s.sidecar ? "ok" : "none");
    b.textContent = s.problems ? `${s.problems} problem${s.problems > 1 ? "s" : ""}` : s.sidecar ? "sidecar" : "none";
    li.appendChild(b);
    if (S.current && S.current.path === s.path) li.classList.add("current");
    li.addEventListener("click", () => openScan(s.path));
    ul.appendChild(li);
  }
}

function step(delta) {
  const list = visibleScans();
  if (!list.length) return;
  let i = S.current ? list.findIndex((s) => s.path === S.current.path) : -1;
  i = i < 0 ? 0 : (i + delta + list.length) % list.length;
  openScan(list[i].path);
}

// -- one scan --------------------------------------------------------------------------------
async function openScan(path) {
  if (S.dirty && !confirm("Discard the unsaved changes to this sidecar?")) return;
  if (F.dirty && !confirm("Discard the unsaved changes to the folder rules?")) return;
  F.dirty = false;
  setStatus("loading…");
  const r = await api("/api/scan?" + new URLSearchParams({ path }).toString());
  if (!r.ok) { banner(r.data.error || "cannot open the scan"); setStatus(""); return; }
  showScan(r.data, true);
}

function showScan(data, fit) {
  S.current = data; S.etag = data.etag; S.selected = null; S.draft = null; S.masks = {};
  S.doc = JSON.parse(JSON.stringify(data.doc)); S.problems = data.problems; S.texts = []; S.swatches = [];  // data.doc stays the saved state
  S.dirty = false;
  banner(data.doc_error || "");
  $("#scan-name").textContent = data.path + (data.exists ? "" : "  (no sidecar yet)");
  $("#preview").hidden = !data.preview;
  const [h, w] = data.size;
  $("#shapes").setAttribute("viewBox", `0 0 ${w} ${h}`);
  const paint = $("#paint"); paint.width = w; paint.height = h;
  paint.getContext("2d").clearRect(0, 0, w, h);
  updateImage();
  $("#prompt").value = S.doc.prompt || "";
  $("#seed").value = S.doc.seed === null || S.doc.seed === undefined ? "" : S.doc.seed;
  $("#exclude").value = (S.doc.exclude || []).join(", ");
  const labels = $("#labels"); labels.textContent = "";
  for (const l of new Set(data.instances.map((i) => i.label))) {
    const o = document.createElement("option"); o.value = l; labels.appendChild(o);
  }
  renderExtra($("#global-extra"), S.doc);
  renderInstances();
  renderHints(); renderShapes();
  if (fit) zoomFit();
  renderScanList();
  setStatus(data.exists ? "saved" : "no sidecar yet");
  runCheck();
  loadFolder();
}

function updateImage() {
  $("#scan-img").src = imageUrl($("#show-overlay").checked ? "overlay" : "scan");
}

function renderInstances() {
  const ul = $("#instances"); ul.textContent = "";
  for (const inst of S.current.instances) {
    const li = document.createElement("li");
    const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = inst.color;
    li.appendChild(sw);
    // No run id here: the hint cards' #N is the one numbering the page shows.
    li.appendChild(document.createTextNode(`${inst.label} (${inst.source}): “${inst.text}”`));
    if (isRule(inst)) {
      const from = document.createElement("span"); from.className = "from-rule";
      from.textContent = "folder rule " + inst.hint_from; li.appendChild(from);
    }
    ul.appendChild(li);
  }
  if (!S.current.instances.length) {
    const li = document.createElement("li"); li.className = "muted";
    li.textContent = "no instances (nothing detected and no hints saved)"; ul.appendChild(li);
  }
  if ((S.doc.exclude || []).length) {
    const li = document.createElement("li"); li.className = "muted";
    li.textContent = "excluded labels (never instances): " + S.doc.exclude.join(", "); ul.appendChild(li);
  }
  const wl = $("#warnings"); wl.textContent = "";
  for (const w of S.current.warnings) { const li = document.createElement("li"); li.textContent = w; wl.appendChild(li); }
}

// -- zoom ------------------------------------------------------------------------------------
function applyZoom() {
  const [h, w] = S.current.size;
  const wrap = $("#wrap");
  wrap.style.width = Math.round(w * S.zoom) + "px";
  wrap.style.height = Math.round(h * S.zoom) + "px";
  $("#zoom-level").textContent = Math.round(S.zoom * 100) + "%";
  renderShapes();  // handles and tags keep their on-screen size
}
function zoomFit() {
  const stage = $("#stage"); const [h, w] = S.current.size;
  S.zoom = Math.max(0.05, Math.min((stage.clientWidth - 8) / w, (stage.clientHeight - 8) / h, 4));
  applyZoom();
}
function zoomBy(f) { S.zoom = Math.max(0.05, Math.min(16, S.zoom * f)); applyZoom(); }

// -- document helpers -----------------------------------------------------------------------------
function kindOf(h) {
  if (h.upload) return "mask";
  for (const k of KINDS) if (h[k] !== null && h[k] !== undefined) return k;
  return "label";
}
function blankHint(fields) {
  const h = { orig: null, extra: {} };
  for (const k of HINT_KEYS) h[k] = null;
  return Object.assign(h, fields);
}
function addHint(fields) {
  S.doc.instances.push(blankHint(fields));
  S.selected = S.doc.instances.length - 1;
  renderHints(); renderShapes(); markDirty();
  const card = $("#hints").children[S.selected];
  if (card) { card.scrollIntoView({ block: "nearest" }); $(".color-input", card).focus(); }
}
function hintColor(i) { return S.swatches[i] || "#cccccc"; }

function docForServer() {
  const instances = S.doc.instances.map((h) => {
    const out = { orig: h.orig, extra: Object.keys(h.extra || {}) };
    for (const k of HINT_KEYS) out[k] = h[k] === "" ? null : h[k];
    if (h.upload) { out.upload = h.upload; out.mask = null; }
    return out;
  });
  const seed = $("#seed").value.trim();
  return {
    prompt: $("#prompt").value.trim() || null,
    seed: seed === "" ? null : Number(seed),
    exclude: $("#exclude").value.split(",").map((s) => s.trim()).filter(Boolean),
    instances,
    extra: Object.keys(S.doc.extra || {}),
  };
}

// -- hint cards -------------------------------------------------------------------------------------
function renderExtra(el, owner) {
  el.textContent = "";
  for (const key of Object.keys(owner.extra || {})) {
    const div = document.createElement("div");
    div.appendChild(document.createTextNode(`Other key ${key}: ${JSON.stringify(owner.extra[key])} `));
    const b = document.createElement("button"); b.textContent = "remove";
    b.addEventListener("click", () => { delete owner.extra[key]; renderExtra(el, owner); markDirty(); });
    div.appendChild(b); el.appendChild(div);
  }
}

function renderHints() {
  const box = $("#hints"); box.textContent = "";
  const tpl = $("#hint-tpl");
  S.doc.instances.forEach((h, i) => {
    const card = tpl.content.firstElementChild.cloneNode(true);
    card.dataset.index = i;
    const kind = kindOf(h);
    $(".hint-no", card).textContent = "#" + (i + 1);
    $(".hint-kind", card).textContent = kind === "mask" && h.upload ? "mask (painted, new)" : kind;
    card.classList.toggle("selected", S.selected === i);
    const colorInput = $(".color-input", card);
    colorInput.value = h.color || "";
    colorInput.addEventListener("input", () => { h.color = colorInput.value.trim() || null; suggest(card, h); markDirty(); });
    colorInput.addEventListener("focus", () => { select(i, false); suggest(card, h); });
    colorInput.addEventListener("keydown", (e) => suggestKeys(e, card, h));
    colorInput.addEventListener("blur", () => setTimeout(() => { $(".suggestions", card).hidden = true; }, 150));
    const picker = $(".picker", card);
    picker.addEventListener("input", () => { h.color = picker.value; colorInput.value = picker.value; markDirty(); });
    const label = $(".label-input", card);
    label.value = h.label || "";
    label.addEventListener("input", () => { h.label = label.value.trim() || null; markDirty(); });
    const index = $(".index-input", card);
    index.value = h.index || "";
    $(".index-field", card).hidden = kind !== "label";
    index.addEventListener("input", () => { h.index = index.value ? Number(index.value) : null; markDirty(); });
    const text = $(".text-input", card);
    text.value = h.text || "";
    text.addEventListener("input", () => { h.text = text.value.trim() || null; markDirty(); });
    $(".up", card).addEventListener("click", () => move(i, -1));
    $(".down", card).addEventListener("click", () => move(i, 1));
    $(".delete", card).addEventListener("click", () => removeHint(i));
    card.addEventListener("mousedown", (e) => { if (e.target === card) select(i, false); });
    renderExtra($(".extra", card), h);
    box.appendChild(card);
  });
  $("#no-hints").hidden = S.doc.instances.length > 0;
  $("#hint-count").textContent = S.doc.instances.length ? `(${S.doc.instances.length})` : "";
  decorateHints();
}

function decorateHints() {
  // Results of the last check: swatch, final text, inline errors.
  const cards = $("#hints").children;
  for (let i = 0; i < cards.length; i++) {
    const card = cards[i];
    const sw = S.swatches[i];
    $(".swatch", card).style.background = sw || "";
    card.style.borderLeftColor = sw || "#999";
    if (sw) $(".picker", card).value = sw;
    $(".final-text", card).textContent = S.texts[i] || "—";
    const ul = $(".errors", card); ul.textContent = "";
    const mine = S.problems.filter((p) => p.hint === i);
    for (const p of mine) {
      const li = document.createElement("li");
      li.textContent = p.message + (p.fix ? ` — ${p.fix}` : "");
      ul.appendChild(li);
    }
    card.classList.toggle("has-errors", mine.length > 0);
  }
  const g = $("#global-errors"); g.textContent = "";
  for (const p of S.problems.filter((p) => p.hint === null || p.hint === undefined || p.hint >= cards.length)) {
    const li = document.createElement("li"); li.textContent = p.text; g.appendChild(li);
  }
}

function move(i, d) {
  const j = i + d; const list = S.doc.instances;
  if (j < 0 || j >= list.length) return;
  [list[i], list[j]] = [list[j], list[i]];
  S.selected = j; S.swatches = []; S.texts = []; S.problems = [];
  renderHints(); renderShapes(); markDirty();
}
function removeHint(i) {
  const [h] = S.doc.instances.splice(i, 1);
  if (h && h.upload) delete S.masks[h.upload];
  S.selected = null; S.swatches = []; S.texts = []; S.problems = [];
  renderHints(); renderShapes(); redrawPaint(); markDirty();
}
function select(i, focus) {
  S.selected = i;
  for (const c of $("#hints").children) c.classList.toggle("selected", Number(c.dataset.index) === i);
  renderShapes();
  if (focus && i !== null) { const c = $("#hints").children[i]; if (c) c.scrollIntoView({ block: "nearest" }); }
}

// -- colour search: the table `hints check` accepts ----------------------------------------------------
function norm(s) { return s.toLowerCase().replace(/[\s\-_'’]+/g, ""); }
function matches(text) {
  const q = norm(text);
  if (!q || q.startsWith("#") || /^(rgb|lab|cielab)\(/.test(q)) return [];
  const starts = [], contains = [];
  for (const c of S.colors) {
    const n = norm(c.name);
    if (n.startsWith(q)) starts.push(c); else if (n.includes(q)) contains.push(c);
  }
  starts.sort((a, b) => a.name.length - b.name.length);
  return starts.concat(contains).slice(0, 14);
}
function suggest(card, h) {
  const ul = $(".suggestions", card); ul.textContent = "";
  const found = matches($(".color-input", card).value);
  found.forEach((c, k) => {
    const li = document.createElement("li");
    li.dataset.name = c.name;
    if (k === 0) li.classList.add("active");
    const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = c.hex;
    li.appendChild(sw); li.appendChild(document.createTextNode(c.name));
    const small = document.createElement("small"); small.textContent = c.set; li.appendChild(small);
    li.addEventListener("mousedown", (e) => { e.preventDefault(); pickColor(card, h, c.name); });
    ul.appendChild(li);
  });
  ul.hidden = found.length === 0;
}
function pickColor(card, h, name) {
  h.color = name; $(".color-input", card).value = name; $(".suggestions", card).hidden = true;
  if (h.onPick) h.onPick(name); else markDirty();
}
function suggestKeys(e, card, h) {
  const ul = $(".suggestions", card);
  if (ul.hidden) return;
  const items = [...ul.children]; let k = items.findIndex((li) => li.classList.contains("active"));
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault();
    if (k >= 0) items[k].classList.remove("active");
    k = (k + (e.key === "ArrowDown" ? 1 : -1) + items.length) % items.length;
    items[k].classList.add("active"); items[k].scrollIntoView({ block: "nearest" });
  } else if (e.key === "Enter" && k >= 0) {
    e.preventDefault(); pickColor(card, h, items[k].dataset.name);
  } else if (e.key === "Escape") { ul.hidden = true; }
}

// -- live check: same validator as `hints check`, final texts as `run` builds them --------------------
async function runCheck() {
  if (!S.current) return;
  const seq = ++S.checkSeq;
  const r = await api("/api/check", { path: S.current.path, doc: docForServer() });
  if (seq !== S.checkSeq || !r.ok) return;
  S.problems = r.data.problems; S.texts = r.data.texts; S.swatches = r.data.swatches;
  $("#yaml").textContent = r.data.yaml;
  decorateHints(); renderShapes();
}

// -- saving -----------------------------------------------------------------------------------------------
async function save() {
  if (!S.current) return;
  finishDraft();
  const doc = docForServer();
  const uploads = {};
  for (const h of doc.instances) if (h.upload && S.masks[h.upload]) uploads[h.upload] = S.masks[h.upload].toDataURL("image/png");
  setStatus("saving…", true);
  const r = await api("/api/save", { path: S.current.path, etag: S.etag, doc, uploads });
  if (r.status === 409) { banner(r.data.error); setStatus("not saved: conflict", true); return; }
  if (r.status === 422) {
    S.problems = r.data.problems; decorateHints();
    banner("Not saved: fix the problems marked in red.");
    setStatus("not saved", true); return;
  }
  if (!r.ok) { banner(r.data.error || "save failed"); setStatus("not saved", true); return; }
  S.dirty = false;
  const again = await api("/api/scan?" + new URLSearchParams({ path: S.current.path }).toString());
  if (again.ok) { const z = S.zoom; showScan(again.data, false); S.zoom = z; applyZoom(); }
  banner(`Saved ${r.data.sidecar}` + (r.data.masks.length ? ` and ${r.data.masks.join(", ")}` : ""), true);
  setStatus("saved");
  loadScans();
}

// -- folder rules: the nearest mtcolor-folder.yaml, same validator as `hints check` ------------------
const RULES_FILE = "mtcolor-folder.yaml";
const F = { path: null, etag: "none", dirty: false, seq: 0, timer: null, add: { color: "" } };
function isRule(inst) { return !!inst.hint_from && inst.hint_from.includes(RULES_FILE + ":"); }

async function loadFolder() {
  if (!S.current || F.dirty) return;  // unsaved rule edits stay (a sidecar save reloads the scan)
  const r = await api("/api/folder?" + new URLSearchParams({ path: S.current.path }).toString());
  if (!r.ok) { $("#folder-info").textContent = r.data.error || "cannot read the folder rules"; return; }
  F.path = r.data.path; F.etag = r.data.etag; F.dirty = false;
  $("#folder-path").textContent = r.data.path + (r.data.exists ? "" : " (new)");
  const above = r.data.applying.filter((p) => p !== r.data.path);
  $("#folder-info").textContent = `covers ${r.data.covers} scan(s) in this session` +
    (above.length ? `; farther rules also apply: ${above.join(", ")}` : "") +
    ". A scan's own sidecar wins over these rules.";
  $("#folder-text").value = r.data.text;
  showFolderVerdict(r.data);
}

function showFolderVerdict(v) {
  const errs = $("#folder-errors"); errs.textContent = "";
  for (const p of v.problems) {
    const li = document.createElement("li");
    li.textContent = `line ${p.line ?? "?"}:${p.column ?? "?"}: ${p.message}` + (p.fix ? ` (${p.fix})` : "");
    errs.appendChild(li);
  }
  const rules = $("#folder-rules"); rules.textContent = "";
  for (const rule of v.rules) {
    const li = document.createElement("li");
    const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = rule.swatch || "#cccccc";
    li.appendChild(sw);
    const which = rule.index ? ` #${rule.index}` : "";
    li.appendChild(document.createTextNode(`${rule.label}${which}: ${rule.color || ""}${rule.text ? " “" + rule.text + "”" : ""} (line ${rule.line})`));
    rules.appendChild(li);
  }
}

async function checkFolder(add) {
  const seq = ++F.seq;
  const body = { path: S.current.path, text: $("#folder-text").value };
  if (add) body.add = add;
  const r = await api("/api/folder/check", body);
  if (seq !== F.seq) return;
  if (!r.ok) { banner(r.data.error || "cannot check the folder rules"); return; }
  if (add) {  // show the added rule: it ends the instances block, often below the fold of a long file
    const ta = $("#folder-text"); F.dirty = true;
    let at = 0; while (at < body.text.length && body.text[at] === r.data.text[at]) at++;  // where it went
    ta.value = r.data.text.slice(0, at + 1); const top = ta.scrollHeight;  // how far down it starts, wrapped
    ta.value = r.data.text; ta.scrollTop = Math.max(0, top - ta.clientHeight / 2);
  }
  showFolderVerdict(r.data);
}

async function saveFolder() {
  if (!S.current || !F.path) return;
  const r = await api("/api/folder/save", { path: S.current.path, etag: F.etag, text: $("#folder-text").value });
  if (r.status === 422) { showFolderVerdict(r.data); banner("Rules not saved: fix the problems listed under Folder rules."); return; }
  if (!r.ok) { banner(r.data.error || "saving the rules failed"); return; }
  F.etag = r.data.etag; F.dirty = false;
  const again = await api("/api/scan?" + new URLSearchParams({ path: S.current.path }).toString());
  if (again.ok && !S.dirty) { const z = S.zoom; showScan(again.data, false); S.zoom = z; applyZoom(); }
  banner(`Saved ${r.data.path}: every scan below it follows these rules`, true);  // after showScan, which clears it
  loadScans();  // a rule can fix (or break) label-only regions in any sidecar below it: fresh badges
}

function setupFolderPanel() {
  const card = $("#folder-add");
  const input = $(".color-input", card);
  F.add.onPick = (name) => { F.add.color = name; $(".swatch", card).style.background = S.colors.find((c) => c.name === name)?.hex || ""; };
  input.addEventListener("input", () => { F.add.color = input.value; suggest(card, F.add); });
  input.addEventListener("keydown", (e) => suggestKeys(e, card, F.add));
  input.addEventListener("blur", () => { $(".suggestions", card).hidden = true; });
  $("#folder-text").addEventListener("input", () => {
    F.dirty = true; clearTimeout(F.timer); F.timer = setTimeout(() => checkFolder(null), 250);
  });
  $("#folder-add-btn").addEventListener("click", () => {
    const label = $("#folder-label").value.trim();
    if (!label) { banner("A rule needs a label (what the detector calls it, e.g. tram)."); return; }
    checkFolder({ label, color: input.value.trim(), text: $("#folder-rule-text").value.trim() });
    $("#folder-label").value = ""; input.value = ""; $("#folder-rule-text").value = "";
    F.add.color = ""; $(".swatch", card).style.background = "";
  });
  $("#folder-save").addEventListener("click", saveFolder);
}

// -- preview: "Colorize this one" -----------------------------------------------------------------
async function preview() {
  if (!S.current) return;
  if (S.dirty) {
    if (!confirm("The preview uses the saved sidecar. Save your changes first?")) return;
    await save();
    if (S.dirty) return;
  }
  setStatus("colorizing… (the first preview loads the model)", true);
  $("#preview").disabled = true;
  try {
    const r = await api("/api/preview", { path: S.current.path });
    if (!r.ok) { banner(r.data.error || "preview failed"); setStatus(""); return; }
    if (S.previewUrl) URL.revokeObjectURL(S.previewUrl);
    S.previewUrl = URL.createObjectURL(r.data);
    $("#preview-before").src = imageUrl("scan");
    $("#preview-after").src = S.previewUrl;
    $("#preview-box").hidden = false;
    setStatus(S.dirty ? "unsaved changes" : "saved", S.dirty);
  } finally { $("#preview").disabled = false; }
}

// -- drawing -------------------------------------------------------------------------------------------
function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}
function scanPoint(e) {
  const r = $("#shapes").getBoundingClientRect(); const [h, w] = S.current.size;
  const x = Math.min(w, Math.max(0, ((e.clientX - r.left) / r.width) * w));
  const y = Math.min(h, Math.max(0, ((e.clientY - r.top) / r.height) * h));
  return [Math.round(x), Math.round(y)];
}
function screenDist(a, b) { return Math.hypot(a[0] - b[0], a[1] - b[1]) * S.zoom; }

function renderShapes() {
  const svg = $("#shapes"); svg.textContent = "";
  if (!S.current) return;
  svg.classList.toggle("select", S.tool === "select");
  // Hint numbers sit at the bottom-left of their shape: the overlay's own tags are at the top-left.
  const tag = (pts, text) => {
    const x = Math.min(...pts.map((p) => p[0])), y = Math.max(...pts.map((p) => p[1]));
    const t = svgEl("text", { x: x + 3, y: y - 4 / S.zoom, class: "tag" }, svg);
    t.setAttribute("font-size", 14 / S.zoom); t.textContent = text;
  };
  if (S.tool === "label") {
    for (const inst of detections()) {
      const [x0, y0, x1, y1] = inst.box;
      const r = svgEl("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: "detection pickable" }, svg);
      r.dataset.id = inst.id;
    }
  }
  for (const inst of S.current.instances.filter(isRule)) {  // colours that come from mtcolor-folder.yaml
    const [x0, y0, x1, y1] = inst.box;
    svgEl("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: "rule-box" }, svg);
    const t = svgEl("text", { x: x0 + 3, y: y0 + 14 / S.zoom, class: "rule-tag" }, svg);
    t.setAttribute("font-size", 12 / S.zoom); t.textContent = "rule: " + inst.label;
  }
  S.doc.instances.forEach((h, i) => {
    const color = hintColor(i);
    const attrs = { class: "shape" + (S.selected === i ? " selected" : ""), fill: color, stroke: color };
    let el = null;
    if (h.box) {
      const [x0, y0, x1, y1] = h.box;
      el = svgEl("rect", Object.assign({ x: x0, y: y0, width: x1 - x0, height: y1 - y0 }, attrs), svg);
      tag([[x0, y1]], "#" + (i + 1));
    } else if (h.polygon) {
      el = svgEl("polygon", Object.assign({ points: h.polygon.map((p) => p.join(",")).join(" ") }, attrs), svg);
      tag(h.polygon, "#" + (i + 1));
    } else if (h.points) {
      for (const [x, y] of h.points) {
        const c = svgEl("circle", Object.assign({ cx: x, cy: y, r: 6 / S.zoom }, attrs), svg);
        c.dataset.index = i;
      }
      tag(h.points, "#" + (i + 1));
    } else if (h.label && !h.mask && !h.upload) {
      for (const inst of labelTargets(h)) {
        const [x0, y0, x1, y1] = inst.box;
        el = svgEl("rect", Object.assign({ x: x0, y: y0, width: x1 - x0, height: y1 - y0 }, attrs), svg);
        el.dataset.index = i;
        tag([[x0, y1]], "#" + (i + 1));
      }
      el = null;
    }
    if (el) el.dataset.index = i;
  });
  const d = S.draft;
  if (d && d.kind === "box" && d.end) {
    const [x0, x1] = [Math.min(d.start[0], d.end[0]), Math.max(d.start[0], d.end[0])];
    const [y0, y1] = [Math.min(d.start[1], d.end[1]), Math.max(d.start[1], d.end[1])];
    svgEl("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: "draft" }, svg);
  }
  if (d && (d.kind === "polygon" || d.kind === "points")) {
    if (d.seg) svgEl("image", { href: d.seg, x: 0, y: 0, width: S.current.size[1], height: S.current.size[0], preserveAspectRatio: "none" }, svg);
    if (d.kind === "polygon" && d.pts.length) {
      const pts = d.hover ? d.pts.concat([d.hover]) : d.pts;
      svgEl("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: "draft" }, svg);
    }
    for (const [x, y] of d.pts) svgEl("circle", { cx: x, cy: y, r: 5 / S.zoom, class: "vertex" }, svg);
  }
}

function detections() {
  // Detected instances a label hint can bind to: auto ones, and those a saved label hint already
  // coloured (regions drawn by box/points/polygon/mask hints are not detections).
  const bound = new Set(S.current.doc.instances.filter((h) => kindOf(h) === "label" && h.label)
    .map((h) => h.label.trim().toLowerCase()));
  return S.current.instances.filter((inst) => inst.source === "auto" || bound.has(inst.label.trim().toLowerCase()));
}

function labelTargets(h) {
  // The detections a label hint binds to: same label, k-th from the left with index (run's rule).
  const key = (h.label || "").trim().toLowerCase();
  const same = detections().filter((inst) => inst.label.trim().toLowerCase() === key)
    .sort((a, b) => a.box[0] - b.box[0] || a.box[1] - b.box[1] || a.id - b.id);
  if (h.index) return same[h.index - 1] ? [same[h.index - 1]] : [];
  return same;
}

function pickLabel(pt) {
  const hits = detections().filter((inst) => {
    const [x0, y0, x1, y1] = inst.box; return pt[0] >= x0 && pt[0] < x1 && pt[1] >= y0 && pt[1] < y1;
  }).sort((a, b) => area(a.box) - area(b.box));
  if (!hits.length) { banner("No detected instance there: draw a region with Box, Points, Polygon or Mask instead."); return; }
  const inst = hits[0];
  const same = labelTargets({ label: inst.label });
  addHint({ label: inst.label, index: same.length > 1 ? same.indexOf(inst) + 1 : null });
}
function area(b) { return (b[2] - b[0]) * (b[3] - b[1]); }

async function segmentPreview() {
  const d = S.draft;
  if (!d || d.kind !== "points" || !S.current.segmenter || !d.pts.length) return;
  const seq = (d.segSeq = (d.segSeq || 0) + 1);
  const r = await api("/api/segment", { path: S.current.path, points: d.pts });
  if (S.draft !== d || seq !== d.segSeq) return;
  if (!r.ok) { banner(r.data.error || "segmentation failed"); return; }
  if (S.segUrl) URL.revokeObjectURL(S.segUrl);
  S.segUrl = URL.createObjectURL(r.data); d.seg = S.segUrl;
  renderShapes();
}

function finishDraft() {
  const d = S.draft;
  if (!d) return;
  S.draft = null;
  if (d.kind === "polygon" && d.pts.length >= 3) addHint({ polygon: d.pts });
  else if (d.kind === "points" && d.pts.length) addHint({ points: d.pts });
  else if (d.kind === "mask" && d.painted) {
    const id = "m" + S.nextUpload++;
    S.masks[id] = d.canvas;
    addHint({ upload: id });
  } else renderShapes();
  redrawPaint();
}
function cancelDraft() { S.draft = null; renderShapes(); redrawPaint(); }

function maskCanvas() {
  const [h, w] = S.current.size;
  const c = document.createElement("canvas"); c.width = w; c.height = h; return c;
}
function paintAt(pt) {
  const d = S.draft; const ctx = d.canvas.getContext("2d");
  ctx.globalCompositeOperation = S.erase ? "destination-out" : "source-over";
  ctx.fillStyle = "#ffffff"; ctx.strokeStyle = "#ffffff"; ctx.lineCap = "round"; ctx.lineWidth = S.brush * 2;
  ctx.beginPath();
  if (d.last) { ctx.moveTo(d.last[0], d.last[1]); ctx.lineTo(pt[0], pt[1]); ctx.stroke(); }
  ctx.beginPath(); ctx.arc(pt[0], pt[1], S.brush, 0, Math.PI * 2); ctx.fill();
  d.last = pt; d.painted = true; redrawPaint();
}
function redrawPaint() {
  // Every painted mask (saved-to-be and in progress), tinted, on one canvas under the shapes.
  const paint = $("#paint"); const ctx = paint.getContext("2d");
  ctx.clearRect(0, 0, paint.width, paint.height);
  const layers = Object.values(S.masks);
  if (S.draft && S.draft.kind === "mask") layers.push(S.draft.canvas);
  for (const c of layers) ctx.drawImage(c, 0, 0);
  ctx.globalCompositeOperation = "source-in"; ctx.fillStyle = "#ff40a0"; ctx.fillRect(0, 0, paint.width, paint.height);
  ctx.globalCompositeOperation = "source-over";
}

function onPointerDown(e) {
  if (!S.current || e.button !== 0) return;
  e.preventDefault();  // keep the focus where a new hint puts it (its colour field)
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  const pt = scanPoint(e);
  const svg = $("#shapes");
  if (S.tool === "select") {
    const idx = e.target.dataset ? e.target.dataset.index : undefined;
    select(idx === undefined ? null : Number(idx), true);
  } else if (S.tool === "box") {
    S.draft = { kind: "box", start: pt, end: null }; svg.setPointerCapture(e.pointerId);
  } else if (e.detail >= 2 && (S.tool === "polygon" || S.tool === "points")) {
    return;  // the second click of a double-click finishes (dblclick), it is not another vertex
  } else if (S.tool === "polygon") {
    if (!S.draft || S.draft.kind !== "polygon") S.draft = { kind: "polygon", pts: [] };
    const d = S.draft;
    if (d.pts.length >= 3 && screenDist(pt, d.pts[0]) < 10) { finishDraft(); return; }
    d.pts.push(pt); renderShapes();
  } else if (S.tool === "points") {
    if (!S.draft || S.draft.kind !== "points") S.draft = { kind: "points", pts: [] };
    S.draft.pts.push(pt); renderShapes(); segmentPreview();
  } else if (S.tool === "mask") {
    if (!S.draft || S.draft.kind !== "mask") S.draft = { kind: "mask", canvas: maskCanvas(), painted: false };
    S.draft.down = true; S.draft.last = null; paintAt(pt); svg.setPointerCapture(e.pointerId);
  } else if (S.tool === "label") {
    pickLabel(pt);
  }
}
function onPointerMove(e) {
  const d = S.draft; if (!d) return;
  const pt = scanPoint(e);
  if (d.kind === "box" && d.start) { d.end = pt; renderShapes(); }
  else if (d.kind === "polygon") { d.hover = pt; renderShapes(); }
  else if (d.kind === "mask" && d.down) paintAt(pt);
}
function onPointerUp(e) {
  const d = S.draft; if (!d) return;
  if (d.kind === "box") {
    const end = scanPoint(e);
    S.draft = null;
    const box = [Math.min(d.start[0], end[0]), Math.min(d.start[1], end[1]), Math.max(d.start[0], end[0]), Math.max(d.start[1], end[1])];
    if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) addHint({ box }); else renderShapes();
  } else if (d.kind === "mask") { d.down = false; d.last = null; }
}

function setTool(tool) {
  if (S.draft && S.draft.kind !== tool) finishDraft();
  S.tool = tool;
  for (const b of document.querySelectorAll(".tool")) b.classList.toggle("active", b.dataset.tool === tool);
  $("#tool-help").textContent = TOOL_HELP[tool] + (tool === "points" && S.current && !S.current.segmenter
    ? " (No segmentation model: start with --model BUNDLE for a live preview.)" : "");
  const opts = $("#tool-options"); opts.textContent = "";
  if (tool === "mask") {
    const size = document.createElement("input"); size.type = "range"; size.min = 2; size.max = 80; size.value = S.brush;
    size.title = "Brush size"; size.addEventListener("input", () => { S.brush = Number(size.value); });
    const erase = document.createElement("input"); erase.type = "checkbox"; erase.checked = S.erase;
    erase.addEventListener("change", () => { S.erase = erase.checked; });
    const lbl = document.createElement("label"); lbl.className = "check"; lbl.append(erase, " erase");
    const done = document.createElement("button"); done.textContent = "Done"; done.addEventListener("click", finishDraft);
    opts.append("brush", size, lbl, done);
  } else if (tool === "points" || tool === "polygon") {
    const done = document.createElement("button"); done.textContent = "Done"; done.addEventListener("click", finishDraft);
    opts.append(done);
  }
  renderShapes();
}

// -- keys ---------------------------------------------------------------------------------------
function typing(e) { const t = e.target; return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT"); }
function onKey(e) {
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") { e.preventDefault(); save(); return; }
  if (typing(e)) return;
  if (e.key === "Escape" && !$("#preview-box").hidden) { $("#preview-box").hidden = true; return; }
  const tools = { v: "select", b: "box", k: "points", g: "polygon", m: "mask", l: "label" };
  if (e.key === "n" || e.key === "PageDown") { e.preventDefault(); step(1); }
  else if (e.key === "p" || e.key === "PageUp") { e.preventDefault(); step(-1); }
  else if (tools[e.key]) setTool(tools[e.key]);
  else if (e.key === "Enter") finishDraft();
  else if (e.key === "Escape") cancelDraft();
  else if ((e.key === "Delete" || e.key === "Backspace") && S.selected !== null) removeHint(S.selected);
  else if (e.key === "+" || e.key === "=") zoomBy(1.25);
  else if (e.key === "-") zoomBy(0.8);
  else if (e.key === "0") zoomFit();
}

// -- start --------------------------------------------------------------------------------------------
async function start() {
  S.token = readToken();
  if (!S.token) { banner("No session token: open the address that `mtcolor-batch hints edit` printed."); return; }
  const svg = $("#shapes");
  svg.addEventListener("pointerdown", onPointerDown);
  svg.addEventListener("pointermove", onPointerMove);
  svg.addEventListener("pointerup", onPointerUp);
  svg.addEventListener("dblclick", (e) => { e.preventDefault(); finishDraft(); });
  $("#stage").addEventListener("wheel", (e) => { if (e.ctrlKey) { e.preventDefault(); zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15); } }, { passive: false });
  for (const b of document.querySelectorAll(".tool")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("#zoom-in").addEventListener("click", () => zoomBy(1.25));
  $("#zoom-out").addEventListener("click", () => zoomBy(0.8));
  $("#zoom-fit").addEventListener("click", zoomFit);
  $("#show-overlay").addEventListener("change", updateImage);
  $("#save").addEventListener("click", save);
  $("#preview").addEventListener("click", preview);
  $("#preview-close").addEventListener("click", () => { $("#preview-box").hidden = true; });
  $("#next").addEventListener("click", () => step(1));
  $("#prev").addEventListener("click", () => step(-1));
  $("#filter").addEventListener("input", renderScanList);
  $("#filter-kind").addEventListener("change", renderScanList);
  for (const id of ["#prompt", "#seed", "#exclude"]) $(id).addEventListener("input", markDirty);
  document.addEventListener("keydown", onKey);
  setupFolderPanel();
  window.addEventListener("beforeunload", (e) => { if (S.dirty) { e.preventDefault(); e.returnValue = ""; } });
  const colors = await api("/api/colors");
  if (colors.ok) S.colors = colors.data.colors;
  await loadScans();
  setTool("select");
  if (S.scans.length) await openScan(S.scans[0].path);
  document.body.dataset.ready = "1";
}
start();
