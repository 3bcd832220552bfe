// The explorer's views. Each draws from the API into `root`, keeps its state in the URL
// (app.set) and records how long each interaction took (api.timed).

import * as api from "./api.js";
import * as draw from "./draw.js";

// -- small DOM helpers (text always through textContent: user strings are never parsed as HTML) --
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") {
      // through the CSSOM: the Content-Security-Policy forbids style attributes
      for (const rule of v.split(";").filter(Boolean)) {
        const at = rule.indexOf(":");
        node.style.setProperty(rule.slice(0, at).trim(), rule.slice(at + 1).trim());
      }
    }
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function select(id, options, value, onchange) {
  const s = el("select", { id, onchange: () => onchange(s.value) });
  for (const o of options) {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    s.append(el("option", { value: v, text: label }));
  }
  s.value = value;
  return s;
}

function panel(title, ...children) {
  return el("section", { class: "panel" }, el("h2", { text: title }), ...children);
}

function field(label, ...inputs) {
  return el("label", { class: "field" }, el("span", { text: label }), ...inputs);
}

function fail(app, e) {
  if (!api.isAbort(e)) app.status(e.message, true);
}

const BOARD = 360;
const THUMB = 84;

// Layers with channel maps (C, h, w) or units (d,), the heads left out.
function layers(app, spatialOnly = false) {
  return app.info.layers
    .filter((l) => !["hook_logits", "hook_value"].includes(l.name))
    .filter((l) => !spatialOnly || l.shape.length === 3);
}

function obsShape(app, tensor) {
  return tensor.shape.slice(1);
}

function newBoard(id, size = BOARD) {
  const c = draw.canvas(size, size, "board");
  c.id = id;
  return c;
}

// The colour of each kind under a board, for a world the server draws as a picture (the hazard
// world); else null.
function colourKey(app, board) {
  const legend = app.info.render.legend;
  if (!legend) return null;
  const key = el("div", { class: "legend colour-key", id: "colour-key", style: `max-width:${board.cssWidth}px` });
  for (const [name, colour] of legend) key.append(el("span", {}, el("span", { class: "swatch", style: `--c:${colour}` }), name));
  return key;
}

// -- the episode bar: seed, level, play; the frame slider with arrow keys; bookmarks ------------------
async function episodeBar(root, app, onFrame) {
  const p = app.params;
  const seed = el("input", { id: "seed", type: "number", min: 0, value: p.seed ?? 0, class: "num" });
  const level = el("input", { id: "level", type: "number", min: 0, value: p.level ?? "", placeholder: "random", class: "num" });
  const anywhere = el("input", { id: "anywhere", type: "checkbox" });
  anywhere.checked = p.anywhere === "true";
  const play = () => {
    app.set({ seed: seed.value || 0, level: level.value, anywhere: anywhere.checked ? "true" : null, t: 0 });
    app.go(app.view, {});
  };
  const controls = el("div", { class: "controls" },
    field("seed", seed),
    app.info.has_levels ? field("level", level) : null,
    app.info.world === "maze" ? field("cheese anywhere", anywhere) : null,
    el("button", { id: "play", text: "Play", onclick: play }),
    el("button", { id: "new-seed", text: "New seed", onclick: () => { seed.value = Number(seed.value || 0) + 1; play(); } }),
  );
  const slider = el("input", { id: "frame-slider", type: "range", min: 0, value: 0, step: 1 });
  const label = el("span", { id: "frame-label", class: "mono" });
  const marks = el("div", { class: "bookmarks", id: "bookmarks" });
  root.append(controls, el("div", { class: "controls" }, field("frame", slider), label), marks);
  const ep = await api.timed("play episode", () => app.episode());
  const T = ep.meta.length;
  slider.max = T;
  let t = Math.max(0, Math.min(Number(p.t || 0), T));
  app.set({ t });
  const setFrame = (next, name = "scrub") => {
    t = Math.max(0, Math.min(T, next));
    slider.value = t;
    label.textContent = `t = ${t} / ${T}`;
    app.set({ t });
    return api.timed(name, () => onFrame(t)).catch((e) => fail(app, e));
  };
  slider.addEventListener("input", () => setFrame(Number(slider.value)));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range") return;
    if (e.target.tagName === "SELECT" || e.target.tagName === "TEXTAREA") return;
    const jump = e.shiftKey ? 10 : 1;
    const moves = { ArrowRight: t + jump, ArrowLeft: t - jump, Home: 0, End: T };
    if (!(e.key in moves)) return;
    e.preventDefault();
    setFrame(moves[e.key], "arrow key");
  }, { signal: app.viewSignal });
  for (const m of ep.meta.bookmarks) {
    marks.append(el("button", { class: `bookmark ${m.kind}`, "data-t": m.t, text: `${m.t}: ${m.label}`, onclick: () => setFrame(m.t, "bookmark") }));
  }
  const summary = el("div", { class: "note", id: "episode-summary", text: `episode of ${T} steps: ${ep.meta.outcome}, return ${draw.fmt(ep.meta.return)}` });
  marks.after(summary);
  label.textContent = `t = ${t} / ${T}`;
  slider.value = t;
  return { ep, setFrame, frame: () => t };
}

function obsAt(ep, t) {
  return draw.item(ep.tensors.obs, t);
}

// -- Run overview ----------------------------------------------------------------------------------------
async function overview(root, app) {
  const info = app.info;
  const s = info.summary;
  const facts = el("table", { class: "facts" });
  const rows = [
    ["run", info.run], ["world", `${info.env_id} ${JSON.stringify(info.env_kwargs)}`],
    ["trainer", `${info.kind} · ${info.arch}`], ["steps", `${s.steps} / ${s.total_steps}${info.done ? "" : " (unfinished)"}`],
    ["last success", draw.fmt(s.success)], ["last return", draw.fmt(s.return)],
  ];
  for (const [k, v] of rows) facts.append(el("tr", {}, el("th", { text: k }), el("td", { text: v })));
  const ckpts = el("div", { class: "bookmarks", id: "checkpoints" });
  for (const step of info.checkpoints) {
    ckpts.append(el("button", { class: step === Number(app.step()) ? "bookmark active" : "bookmark", text: step,
      onclick: () => { app.set({ step }); app.go("overview", { step }); } }));
  }
  const links = el("ul", { id: "reports" });
  for (const r of info.reports) links.append(el("li", {}, el("a", { href: `files/${r}`, target: "_blank", rel: "noopener", text: r })));
  if (!info.reports.length) links.append(el("li", { text: "no static reports yet (policylens report RUN writes one)" }));
  const saes = el("ul", {});
  for (const sae of info.saes) {
    saes.append(el("li", {}, el("a", { href: `#/sae?sae=${encodeURIComponent(sae.id)}`, text: sae.id }),
      el("span", { class: "note", text: ` ${sae.layout} at ${sae.hook}; explained variance ${draw.fmt(sae.explained_variance)}, dead ${draw.fmt(sae.dead_fraction)}` })));
  }
  const vectors = el("ul", {});
  for (const v of info.vectors) vectors.append(el("li", { text: `${v.name} (${v.hook}) ${v.note}` }));
  const curves = el("div", { class: "grid", id: "curves" });
  root.append(el("div", { class: "row" },
    panel("Run", facts, el("h3", { text: "checkpoints (click to explore one)" }), ckpts),
    panel("Reports and artefacts", links, el("h3", { text: "SAEs" }), saes, el("h3", { text: "saved steering vectors" }), vectors)),
  panel("Training curves", curves));
  const { tensors, meta } = await api.getTensors("api/metrics");
  const table = tensors.table;
  const cols = meta.columns;
  const rowsN = table.shape[0];
  const stepCol = cols.indexOf("step");
  const skip = new Set(["step", "time", "steps_per_s", "lr"]);
  for (const [j, name] of cols.entries()) {
    if (skip.has(name)) continue;
    const values = Array.from({ length: rowsN }, (_, i) => table.data[i * cols.length + j]);
    const c = draw.canvas(260, 120);
    draw.lines(c, [{ values, colour: "#4a7bb7" }], { title: name });
    const steps = stepCol >= 0 ? table.data[(rowsN - 1) * cols.length + stepCol] : rowsN;
    curves.append(el("figure", {}, c, el("figcaption", { class: "note", text: `${name} over ${steps} steps` })));
  }
}

// -- Trajectory scrubber ------------------------------------------------------------------------------------
async function trajectory(root, app) {
  const board = newBoard("board");
  const info = el("table", { class: "facts", id: "frame-info" });
  const valueChart = draw.canvas(560, 120);
  valueChart.id = "value-chart";
  const probChart = draw.canvas(560, 140);
  probChart.id = "prob-chart";
  const legend = el("div", { class: "legend" });
  const left = el("div", {}, board, colourKey(app, board));
  const right = el("div", { class: "stack" }, info, valueChart, probChart, legend);
  const bar = el("div", {});
  root.append(bar, el("div", { class: "row" }, left, right));
  let redraw = () => {};
  const { ep, setFrame } = await episodeBar(bar, app, async (t) => redraw(t));
  const names = app.info.actions;
  const A = names.length;
  const T = ep.meta.length;
  const values = Array.from(ep.tensors.values.data);
  const adv = Array.from(ep.tensors.advantages.data);
  const q = app.info.greedy;
  const series = names.slice(0, 12).map((n, a) => ({
    values: Array.from({ length: T + 1 }, (_, t) => (q ? ep.tensors.logits : ep.tensors.probs).data[t * A + a]),
    colour: draw.PALETTE[a % 12], label: n,
  }));
  for (const s of series) legend.append(el("span", { class: "swatch", style: `--c:${s.colour}` }), el("span", { text: `${s.label} ` }));
  redraw = (t) => {
    draw.drawObs(board, app.info.render, obsAt(ep, t), obsShape(app, ep.tensors.obs));
    const toValue = draw.lines(valueChart, [{ values, colour: "#222" }, { values: adv, colour: "#c0504d" }], { at: t, title: "value (black), advantage (red)" });
    const toProb = draw.lines(probChart, series, { at: t, title: q ? "Q-values per action" : "action probabilities" });
    valueChart.onclick = (e) => setFrame(toValue(e.offsetX), "seek");
    probChart.onclick = (e) => setFrame(toProb(e.offsetX), "seek");
    info.replaceChildren();
    const a = t < T ? ep.tensors.actions.data[t] : null;
    const rows = [["frame", `${t} / ${T}`], ["action taken", a === null ? "(episode over)" : names[a]],
      ["reward", t < T ? draw.fmt(ep.tensors.rewards.data[t]) : "–"], ["value", draw.fmt(values[t])],
      ["advantage", t < T ? draw.fmt(adv[t]) : "–"]];
    for (const [k, v] of rows) info.append(el("tr", {}, el("th", { text: k }), el("td", { text: v })));
    board.dataset.frame = t;
  };
  await setFrame(Number(app.params.t || 0), "open");
}

// -- Observation with overlays -----------------------------------------------------------------------------
async function observation(root, app) {
  const p = app.params;
  const spatial = layers(app, true);
  const overlays = [["none", "none"], ["saliency", "saliency (input)"], ["grad_x_input", "gradient × input"], ["ig", "integrated gradients (input)"],
    ["lrp", "LRP (input)"], ["guided_backprop", "guided backprop (input)"]];
  if (layers(app).length) overlays.push(["ig-layer", "integrated gradients (layer)"]);
  if (spatial.length) overlays.push(["gradcam", "Grad-CAM (layer)"], ["nmf", "NMF features (layer)"]);
  const change = (name) => api.timed(name, () => refresh()).catch((e) => fail(app, e));
  const targets = [["value", "value"], ["action", "action taken"], ...app.info.actions.map((n, a) => [`logprob:${a}`, `log p(${n})`])];
  const overlay = select("overlay", overlays, p.overlay || "saliency", (v) => { app.set({ overlay: v }); change("toggle overlay"); });
  const target = select("target", targets, p.target || "value", (v) => { app.set({ target: v }); change("change target"); });
  const layer = select("layer", layers(app).map((l) => l.name), app.layer(), (v) => { app.set({ layer: v }); change("change layer"); });
  const k = select("nmf-k", [4, 6, 8], p.k || "6", (v) => { app.set({ k: v }); change("change k"); });
  const opacity = el("input", { id: "opacity", type: "range", min: 0, max: 1, step: 0.05, value: p.opacity ?? 0.6 });
  opacity.addEventListener("input", () => { app.set({ opacity: opacity.value }); api.timed("opacity", () => paint()); });
  const board = newBoard("board", 400);
  const legend = el("div", { id: "overlay-legend", class: "legend-box" });
  const bar = el("div", {});
  root.append(bar, el("div", { class: "controls" }, field("overlay", overlay), field("target", target), field("layer", layer), field("NMF features", k), field("opacity", opacity)),
    el("div", { class: "row" }, el("div", {}, board, colourKey(app, board)), legend));
  let frame = 0;
  let answer = null;
  const { ep } = await episodeBar(bar, app, async (t) => { frame = t; await refresh(); });
  const shape = obsShape(app, ep.tensors.obs);

  function paint() {
    draw.drawObs(board, app.info.render, obsAt(ep, frame), shape);
    board.dataset.overlay = answer ? answer.kind : "none";
    if (!answer) return;
    const o = Number(opacity.value);
    if (answer.kind === "nmf") {
      const [h, w, kk] = answer.tensors.maps.shape;
      draw.features(board, answer.tensors.maps.data, h, w, kk, answer.meta.features.map((f) => f.colour), o);
    } else {
      const m = answer.tensors.map;
      const [rows, cols] = m.shape;
      draw.heat(board, m.data, rows, cols, o);
    }
  }

  async function refresh() {
    const kind = overlay.value;
    const base = `${ep.query}&t=${frame}`;
    if (kind === "none") {
      answer = null;
    } else if (kind === "nmf") {
      const r = await api.getTensors(`api/frame/nmf?${base}&${api.query({ layer: layer.value, k: k.value })}`, "overlay");
      answer = { kind, ...r };
    } else {
      const method = kind === "ig-layer" ? "ig" : kind;
      const atLayer = kind === "ig-layer" || kind === "gradcam";
      const q = api.query({ method, target: target.value, layer: atLayer ? layer.value : null });
      const r = await api.getTensors(`api/frame/attribution?${base}&${q}`, "overlay");
      answer = { kind, ...r };
    }
    paint();
    drawLegend();
  }

  function drawLegend() {
    legend.replaceChildren();
    if (!answer) return;
    if (answer.kind !== "nmf") {
      const [lo, hi] = draw.range(answer.tensors.map.data);
      const c = answer.meta.completeness;
      legend.append(el("p", { id: "overlay-range", text: `${answer.kind} of ${answer.meta.target}: ${draw.fmt(lo)} to ${draw.fmt(hi)} (red +, blue −)` }));
      const check = answer.kind === "lrp" ? "LRP conservation: relevance sums to" : "IG completeness: attributions sum to";
      if (c) legend.append(el("p", { class: "note", text: `${check} ${draw.fmt(c.sum_attributions_mean)} vs f(x) − f(baseline) ${draw.fmt(c.output_difference_mean)}` }));
      return;
    }
    const m = answer.meta;
    legend.append(el("p", { id: "overlay-range", text: `NMF of value attributions at ${layer.value}: ${m.features.length} features explain ${(100 * m.explained).toFixed(1)}%` }));
    const table = el("table", { class: "facts", id: "nmf-legend" });
    table.append(el("tr", {}, ...["", "label", "corr.", "IoU", "+ share", "dataset examples"].map((h) => el("th", { text: h }))));
    let shown = 0;
    m.features.forEach((f, i) => {
      const examples = el("td", { class: "examples" });
      for (const e of m.examples[i]) {
        const c = draw.canvas(48, 48, "thumb");
        const g = draw.drawObs(c, app.info.render, draw.item(answer.tensors.example_obs, shown++), shape);
        draw.markCell(c, e.position[0], e.position[1], g.rows, g.cols, f.colour);
        c.title = `dataset observation ${e.index}, strength ${draw.fmt(e.value)}`;
        examples.append(c);
      }
      table.append(el("tr", {}, el("td", {}, el("span", { class: "swatch", style: `--c:${f.colour}` })),
        el("td", { text: f.label ?? "–" }), el("td", { text: draw.fmt(f.correlation) }), el("td", { text: draw.fmt(f.iou) }),
        el("td", { text: draw.fmt(f.positive_share) }), examples));
    });
    legend.append(table);
  }

  frame = Number(app.params.t || 0);
  await api.timed("open overlay", () => refresh());
}

// -- Activations ------------------------------------------------------------------------------------------
async function activations(root, app) {
  const p = app.params;
  const layer = select("layer", layers(app).map((l) => l.name), app.layer(), (v) => { app.set({ layer: v, channel: null }); selected = null; api.timed("change layer", () => refresh()); });
  const grid = el("div", { id: "channels", class: "channels" });
  const detail = el("div", { id: "channel-detail" });
  const bar = el("div", {});
  root.append(bar, el("div", { class: "controls" }, field("layer", layer)), el("div", { class: "row" }, panel("Channels at this frame", grid), detail));
  let frame = 0;
  let selected = p.channel !== undefined ? Number(p.channel) : null;
  let acts = null;
  const { ep } = await episodeBar(bar, app, async (t) => { frame = t; await refresh(); });
  const shape = obsShape(app, ep.tensors.obs);

  async function refresh() {
    const r = await api.getTensors(`api/frame/activations?${ep.query}&t=${frame}&layer=${encodeURIComponent(layer.value)}`, "acts");
    acts = r.tensors.acts;
    drawGrid();
    if (selected !== null) drawBig();
  }

  function channelMap(c) {
    const [C, h, w] = acts.shape.length === 3 ? acts.shape : [acts.shape[0], 1, 1];
    return { data: acts.data.subarray(c * h * w, (c + 1) * h * w), h, w, C };
  }

  function drawGrid() {
    grid.replaceChildren();
    const spatial = acts.shape.length === 3;
    if (!spatial) {
      const n = acts.shape[0];
      const cols = Math.ceil(Math.sqrt(n));
      const rows = Math.ceil(n / cols);
      const padded = new Float32Array(rows * cols);
      padded.set(acts.data);
      const c = draw.canvas(360, (360 * rows) / cols, "units");
      c.id = "units";
      draw.heat(c, padded, rows, cols, 1, false);
      c.onclick = (e) => {
        const unit = Math.floor((e.offsetY / c.cssHeight) * rows) * cols + Math.floor((e.offsetX / c.cssWidth) * cols);
        if (unit < n) choose(unit);
      };
      grid.append(c, el("p", { class: "note", text: `${n} units, row by row; click one` }));
      return;
    }
    const [C] = acts.shape;
    for (let ch = 0; ch < C; ch++) {
      const m = channelMap(ch);
      const c = draw.canvas(THUMB, THUMB, ch === selected ? "channel selected" : "channel");
      c.dataset.channel = ch;
      draw.heat(c, m.data, m.h, m.w, 1, false);
      c.title = `channel ${ch}`;
      c.onclick = () => choose(ch);
      grid.append(el("figure", {}, c, el("figcaption", { text: String(ch) })));
    }
  }

  function choose(ch) {
    selected = ch;
    app.set({ channel: ch });
    api.timed("open channel", async () => { drawGrid(); await drawBig(); }).catch((e) => fail(app, e));
  }

  async function drawBig() {
    const m = channelMap(selected);
    const big = newBoard("channel-map", 300);
    const g = draw.drawObs(big, app.info.render, obsAt(ep, frame), shape);
    if (m.h > 1) draw.heat(big, m.data, m.h, m.w, 0.75, false);
    const [lo, hi] = draw.range(m.data);
    const examples = el("div", { id: "examples", class: "examples" });
    const corr = draw.canvas(300, 120);
    corr.id = "correlations";
    detail.replaceChildren(panel(`${layer.value} · ${acts.shape.length === 3 ? "channel" : "unit"} ${selected}`,
      big, el("p", { class: "note", text: m.h > 1 ? `this frame: ${draw.fmt(lo)} to ${draw.fmt(hi)}${g.rows === m.h ? " (one value per cell)" : ""}` : `this frame: ${draw.fmt(hi)}` }),
      el("h3", { text: "top dataset examples" }), examples, el("h3", { text: "correlation with ground-truth labels" }), corr));
    const r = await api.getTensors(`api/channel?${api.query({ step: app.step(), layer: layer.value, channel: selected })}`, "channel");
    r.meta.examples.forEach((e, i) => {
      const c = draw.canvas(THUMB, THUMB, "thumb");
      const gg = draw.drawObs(c, app.info.render, draw.item(r.tensors.obs, i), shape);
      if (m.h > 1) draw.markCell(c, e.position[0], e.position[1], gg.rows, gg.cols);
      examples.append(el("figure", {}, c, el("figcaption", { text: draw.fmt(e.value) })));
    });
    const corrs = r.meta.correlations.correlations || {};
    const names = Object.keys(corrs);
    if (names.length) draw.hbars(corr, names, names.map((n) => corrs[n]), { signed: true, max: 1 });
    else corr.replaceWith(el("p", { class: "note", text: "this world publishes no ground-truth labels" }));
  }

  frame = Number(p.t || 0);
  await refresh();
}

// -- Clusters with click-to-label --------------------------------------------------------------------------
async function clusters(root, app) {
  const p = app.params;
  const spatial = layers(app, true);
  if (!spatial.length) {
    root.append(panel("Clusters", el("p", { text: "This agent has no layers with positions (conv maps) to cluster." })));
    return;
  }
  const layerName = spatial.some((l) => l.name === app.layer()) ? app.layer() : spatial[0].name;
  const reload = (changes) => { app.set(changes); app.go("clusters", {}); };
  const layer = select("layer", spatial.map((l) => l.name), layerName, (v) => reload({ layer: v }));
  const k = select("k", [2, 3, 4, 5, 6, 8], p.k || "4", (v) => reload({ k: v }));
  const method = select("method", ["kmeans", "average", "ward", "single"], p.method || "kmeans", (v) => reload({ method: v }));
  const bar = el("div", {});
  const board = newBoard("cluster-frame", 300);
  board.classList.add("cluster-board");
  const boards = el("div", { id: "cluster-boards", class: "grid" });
  const legend = el("div", { id: "cluster-legend" });
  root.append(bar, el("div", { class: "controls" }, field("layer", layer), field("clusters", k), field("method", method)),
    el("p", { class: "note", text: `Every position's channel vector over the explorer's dataset (${app.info.dataset}) is clustered; this frame's positions take the cluster of the nearest k-means centre (a linkage: of the nearest clustered position). Click a cell to name its cluster. Names are saved in the run folder.` }),
    el("div", { class: "row" }, el("figure", {}, board, el("figcaption", { text: "this frame, coloured by cluster" })), legend),
    panel("The clustered dataset (its first observations)", boards));
  let frame = 0;
  const { ep } = await episodeBar(bar, app, async (t) => { frame = t; await drawFrame(); });
  frame = Number(app.params.t || 0);
  const q = api.query({ step: app.step(), layer: layer.value, k: k.value, method: method.value });
  const r = await api.timed("cluster", () => api.getTensors(`api/clusters?${q}`));
  const inputs = [];
  const scores = r.meta.scores || {};
  const per = new Map((scores.clusters || []).map((c) => [c.cluster, c]));
  legend.append(el("p", { id: "cluster-scores", text: scores.ami !== undefined ? `dataset against ${scores.categories.join(" / ")}: AMI ${draw.fmt(scores.ami)}, purity ${draw.fmt(scores.purity)}` : "no ground truth to score against" }));
  for (let c = 0; c < Number(k.value); c++) {
    const input = el("input", { id: `cluster-label-${c}`, type: "text", maxlength: 40, placeholder: "name this cluster", value: r.meta.names[String(c)] || "" });
    input.addEventListener("change", () => save(c, input));
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") input.blur(); });
    inputs.push(input);
    const info = per.get(c);
    legend.append(el("div", { class: "cluster-row", id: `cluster-row-${c}` }, el("span", { class: "swatch", style: `--c:${draw.PALETTE[c]}` }),
      el("span", { class: "mono", text: `${c} · ${r.tensors.sizes.data[c]} positions${info ? ` · mostly ${info.majority} (${Math.round(100 * info.share)}%)` : ""}` }), input));
  }
  async function save(c, input) {
    try {
      await api.timed("label cluster", () => api.sendJSON("PUT", "api/clusters/label", { step: Number(app.step()), layer: layer.value, k: Number(k.value), method: method.value, cluster: c, label: input.value }));
      input.classList.add("saved");
      app.status(`saved the name of cluster ${c}`);
    } catch (e) {
      fail(app, e);
    }
  }

  // An observation with its positions' clusters over it; a click picks the cell's cluster.
  function paint(c, obs, shape, lab, h, w) {
    const g = draw.drawObs(c, app.info.render, obs, shape);
    const ctx = c.getContext("2d");
    const ch = c.cssHeight / h;
    const cw = c.cssWidth / w;
    ctx.globalAlpha = 0.55;
    for (let j = 0; j < h * w; j++) {
      ctx.fillStyle = draw.PALETTE[lab[j] % 12];
      ctx.fillRect((j % w) * cw, Math.floor(j / w) * ch, cw, ch);
    }
    ctx.globalAlpha = 1;
    c.onclick = (e) => {
      const j = Math.floor(e.offsetY / ch) * w + Math.floor(e.offsetX / cw);
      const cluster = lab[j];
      document.querySelectorAll(".cluster-row").forEach((row) => row.classList.remove("active"));
      document.getElementById(`cluster-row-${cluster}`).classList.add("active");
      inputs[cluster].focus();
    };
    c.dataset.grid = `${g.rows}x${g.cols}`;
    c.dataset.labels = Array.from(lab).join(",");
  }

  async function drawFrame() {
    const fq = api.query({ t: frame, layer: layer.value, k: k.value, method: method.value });
    const f = await api.getTensors(`api/frame/clusters?${ep.query}&${fq}`, "frame-clusters");
    const [h, w] = f.tensors.labels.shape;
    paint(board, obsAt(ep, frame), obsShape(app, ep.tensors.obs), f.tensors.labels.data, h, w);
    board.dataset.frame = frame;
  }

  const labels = r.tensors.labels;
  const [n, h, w] = labels.shape;
  for (let i = 0; i < n; i++) {
    const c = draw.canvas(120, 120, "cluster-board");
    paint(c, draw.item(r.tensors.obs, i), r.tensors.obs.shape.slice(1), draw.item(labels, i), h, w);
    boards.append(c);
  }
  await drawFrame();
}

// -- The maze: a board the user edits (editor, interventions) ----------------------------------------------
function wallsFromParam(text, walls) {
  if (!text || text.length !== walls.length * walls.length) return walls;
  const n = walls.length;
  return Array.from({ length: n }, (_, r) => Array.from({ length: n }, (_, c) => (text[r * n + c] === "1" ? "#" : ".")).join(""));
}

async function mazeState(app) {
  const p = app.params;
  const state = await api.getJSON(`api/maze/level?${api.query({ level: p.level || 0, anywhere: p.anywhere })}`);
  if (p.walls) state.walls = wallsFromParam(p.walls, state.walls);
  if (p.mouse) state.mouse = p.mouse.split(",").map(Number);
  if (p.cheese) state.cheese = p.cheese.split(",").map(Number);
  return state;
}

function stateObs(state) {
  const n = state.walls.length;
  const obs = new Uint8Array(3 * n * n);
  state.walls.forEach((row, r) => [...row].forEach((ch, c) => { obs[r * n + c] = ch === "#" ? 1 : 0; }));
  obs[n * n + state.mouse[0] * n + state.mouse[1]] = 1;
  obs[2 * n * n + state.cheese[0] * n + state.cheese[1]] = 1;
  return obs;
}

function mazeControls(app, modes) {
  const p = app.params;
  const level = el("input", { id: "level", type: "number", min: 0, value: p.level || 0, class: "num" });
  const anywhere = el("input", { id: "anywhere", type: "checkbox" });
  anywhere.checked = p.anywhere === "true";
  const load = () => { app.set({ level: level.value || 0, anywhere: anywhere.checked ? "true" : null, mouse: null, cheese: null, walls: null }); app.go(app.view, {}); };
  const mode = el("div", { class: "modes" });
  modes.forEach(([value, label], i) => {
    const input = el("input", { type: "radio", name: "mode", id: `mode-${value}`, value });
    input.checked = i === 0;
    mode.append(el("label", {}, input, el("span", { text: label })));
  });
  const row = el("div", { class: "controls" }, field("level", level), field("cheese anywhere", anywhere), el("button", { id: "load-level", text: "Load level", onclick: load }), mode);
  return { row, mode: () => mode.querySelector("input:checked").value };
}

// Apply a click at cell (r, c) in `mode` to the state; false when nothing changed.
function edit(state, mode, r, c) {
  const n = state.walls.length;
  if (r < 0 || c < 0 || r >= n || c >= n) return false;
  if (mode === "wall") {
    const row = [...state.walls[r]];
    row[c] = row[c] === "#" ? "." : "#";
    state.walls[r] = row.join("");
  } else if (mode === "mouse" || mode === "cheese") {
    if (state.walls[r][c] === "#") return false;
    state[mode] = [r, c];
  } else {
    return false;
  }
  return true;
}

function stateParams(state) {
  return { mouse: state.mouse.join(","), cheese: state.cheese.join(","), walls: state.walls.map((row) => [...row].map((ch) => (ch === "#" ? "1" : "0")).join("")).join("") };
}

function fieldDigest(field) {
  let s = 0;
  field.forEach((v, i) => { s += v * ((i % 7) + 1); });
  return s.toFixed(4);
}

// -- Maze editor ------------------------------------------------------------------------------------------------
async function editor(root, app) {
  if (!app.info.editable) {
    root.append(panel("Maze editor", el("p", { text: "This run's world has no maze to edit." })));
    return;
  }
  const controls = mazeControls(app, [["mouse", "move mouse"], ["cheese", "move cheese"], ["wall", "toggle wall"]]);
  const layer = select("layer", layers(app).map((l) => l.name), app.layer(), (v) => { app.set({ layer: v }); api.timed("change layer", () => update()).catch((e) => fail(app, e)); });
  const board = newBoard("board", 420);
  const probs = draw.canvas(300, 100);
  probs.id = "probs";
  const value = el("p", { id: "value", class: "mono" });
  const grid = el("div", { id: "channels", class: "channels" });
  root.append(controls.row, el("div", { class: "row" }, el("div", {}, board, el("p", { class: "note", text: "Arrows: the policy's expected move with the mouse on each cell (its vector field)." })),
    el("div", {}, panel("At the mouse", probs, value), panel("Activations", field("layer", layer), grid))));
  const state = await mazeState(app);
  const n = state.walls.length;

  async function update() {
    const r = await api.sendJSON("POST", "api/maze", { state, layer: layer.value, step: Number(app.step()) }, "maze", true);
    draw.drawObs(board, app.info.render, stateObs(state), [3, n, n]);
    draw.arrows(board, r.tensors.base_cells.data, r.tensors.base_field.data, n);
    board.dataset.field = fieldDigest(r.tensors.base_field.data);
    draw.hbars(probs, app.info.actions, Array.from(r.tensors.base_probs.data), { max: 1 });
    value.textContent = `value ${draw.fmt(r.meta.base.value)}`;
    grid.replaceChildren();
    const acts = r.tensors.base_acts;
    if (acts.shape.length === 3) {
      const [C, h, w] = acts.shape;
      for (let ch = 0; ch < C; ch++) {
        const c = draw.canvas(64, 64, "channel");
        draw.heat(c, acts.data.subarray(ch * h * w, (ch + 1) * h * w), h, w, 1, false);
        grid.append(el("figure", {}, c, el("figcaption", { text: String(ch) })));
      }
    } else {
      const c = draw.canvas(300, 60, "units");
      draw.heat(c, acts.data, 1, acts.shape[0], 1, false);
      grid.append(c);
    }
    app.status("");
  }

  board.addEventListener("click", (e) => {
    const r = Math.floor((e.offsetY / board.cssHeight) * n);
    const c = Math.floor((e.offsetX / board.cssWidth) * n);
    const before = JSON.stringify(state);
    if (!edit(state, controls.mode(), r, c)) return;
    api.timed(`edit maze (${controls.mode()})`, async () => {
      try {
        await update();
        app.set(stateParams(state));
      } catch (err) {
        Object.assign(state, JSON.parse(before));
        draw.drawObs(board, app.info.render, stateObs(state), [3, n, n]);
        throw err;
      }
    }).catch((err) => fail(app, err));
  });
  await api.timed("open editor", () => update());
}

// -- Interventions ----------------------------------------------------------------------------------------------
function interventionControls(app, onChange) {
  const p = app.params;
  const vectors = [["none", "no vector"]];
  if (app.info.editable) vectors.push(["cheese", "cheese vector of this maze"]);
  for (const v of app.info.vectors) vectors.push([v.name, `saved: ${v.name}`]);
  const vector = select("vector", vectors, p.vector || (app.info.editable ? "cheese" : "none"), () => onChange("choose vector"));
  const coef = el("input", { id: "coef", type: "range", min: -5, max: 5, step: 0.25, value: p.coef ?? (app.info.editable ? -1 : 0) });
  const coefLabel = el("span", { id: "coef-label", class: "mono", text: coef.value });
  coef.addEventListener("input", () => { coefLabel.textContent = coef.value; onChange("steering slider"); });
  const hooks = layers(app).map((l) => l.name);
  const hook = select("hook", [["", "default layer"], ...hooks], p.hook || "", () => onChange("choose hook"));
  const clamp = el("input", { id: "clamp", type: "text", placeholder: "e.g. 7,12", value: p.clamp || "", class: "short" });
  const clampValue = el("input", { id: "clamp-value", type: "number", step: 0.5, value: p.clamp_value ?? 3, class: "num" });
  clamp.addEventListener("change", () => onChange("clamp channels"));
  clampValue.addEventListener("change", () => onChange("clamp value"));
  const sae = select("sae", [["", "no SAE"], ...app.info.saes.map((s) => [s.id, `splice ${s.id}`])], p.sae || "", () => onChange("splice SAE"));
  const row = el("div", { class: "controls" }, field("vector", vector), field("coefficient", coef, coefLabel), field("at", hook),
    field("clamp", clamp), field("to", clampValue), field("SAE", sae));
  const read = (position) => {
    const channels = clamp.value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    if (channels.some((c) => !Number.isInteger(c) || c < 0)) throw new api.ApiError("clamp: give channel numbers separated by commas, like 7,12", 400);
    const iv = { vector: vector.value, coef: Number(coef.value), hook: hook.value || null, clamp_channels: channels, clamp_value: Number(clampValue.value), sae: sae.value || null };
    if (channels.length && position) iv.clamp_position = position;
    app.set({ vector: vector.value, coef: coef.value, hook: hook.value, clamp: clamp.value, clamp_value: clampValue.value, sae: sae.value });
    return iv;
  };
  return { row, read };
}

async function interventions(root, app) {
  if (app.info.editable) return mazeInterventions(root, app);
  return episodeInterventions(root, app);
}

async function mazeInterventions(root, app) {
  const controls = mazeControls(app, [["mouse", "move mouse"], ["cheese", "move cheese"], ["wall", "toggle wall"], ["target", "clamp target"]]);
  let target = app.params.target_cell ? app.params.target_cell.split(",").map(Number) : null;
  const ivc = interventionControls(app, (name) => update(name).catch((e) => fail(app, e)));
  const base = newBoard("board-base", 300);
  const mod = newBoard("board-mod", 300);
  const diff = newBoard("board-diff", 300);
  const probs = draw.canvas(300, 100);
  probs.id = "probs";
  const summary = el("table", { class: "facts", id: "intervention-summary" });
  const vectorName = el("input", { id: "vector-name", type: "text", placeholder: "name", class: "short", maxlength: 40 });
  root.append(controls.row, ivc.row,
    el("div", { class: "row" },
      el("figure", {}, base, el("figcaption", { text: "the agent: vector field and a sampled path (blue)" })),
      el("figure", {}, mod, el("figcaption", { text: "with the intervention (path in red, same luck)" })),
      el("figure", {}, diff, el("figcaption", { text: "change of the vector field" }))),
    el("div", { class: "row" }, panel("At the mouse (blue: agent, red: intervened)", probs, summary),
      panel("Save this maze's cheese vector", el("div", { class: "controls" }, vectorName,
        el("button", { id: "save-vector", text: "Save", onclick: () => saveVector() })))));
  const state = await mazeState(app);
  const n = state.walls.length;

  // A change answers twice: the vector fields and probabilities at once, then the two sampled
  // paths (up to 40 steps each, played as one batch) drawn over them from a second request.
  let latest = 0;
  function update(name = "intervene") {
    const ticket = ++latest;
    const iv = ivc.read(target);
    const asked = { state: JSON.parse(JSON.stringify(state)), step: Number(app.step()), intervention: iv };
    app.set(stateParams(state));
    const fields = api.timed(name, async () => drawFields(await api.sendJSON("POST", "api/maze", { ...asked, layer: app.layer() }, "intervene", true)));
    const paths = api.timed(`${name}: path`, async () => {
      await fields.catch(() => {}); // asked after the fields, so it never delays them
      const r = await api.sendJSON("POST", "api/maze/paths", { ...asked, seed: Number(app.params.seed || 0) }, "intervene-path");
      if (ticket !== latest) throw new DOMException("a newer change was asked", "AbortError");
      drawPaths(r);
    });
    paths.catch((e) => fail(app, e));
    return fields;
  }

  function drawFields(r) {
    const t = r.tensors;
    const obs = stateObs(state);
    for (const c of [base, mod, diff]) draw.drawObs(c, app.info.render, obs, [3, n, n]);
    draw.arrows(base, t.base_cells.data, t.base_field.data, n);
    if (t.mod_field) {
      draw.arrows(mod, t.mod_cells.data, t.mod_field.data, n, "#222");
      const delta = t.mod_field.data.map((v, i) => v - t.base_field.data[i]);
      draw.arrows(diff, t.base_cells.data, delta, n, "#d62728", 1);
      mod.dataset.field = fieldDigest(t.mod_field.data);
      const both = [];
      app.info.actions.forEach((_, a) => both.push(t.base_probs.data[a], t.mod_probs.data[a]));
      draw.hbars(probs, app.info.actions.flatMap((a) => [a, `${a} (iv)`]), both, { colours: ["#2a5bd7", "#d62728"], max: 1 });
    } else {
      mod.dataset.field = "";
      draw.hbars(probs, app.info.actions, Array.from(t.base_probs.data), { max: 1 });
    }
    if (target) draw.markCell(mod, target[0], target[1], n, n, "#d62728");
    summary.replaceChildren();
    summary.append(el("tr", {}, el("th", { text: "value" }), el("td", { text: `agent ${draw.fmt(r.meta.base.value)}${r.meta.mod ? `, intervened ${draw.fmt(r.meta.mod.value)}` : ""}` })));
  }

  // The paths over the fields drawn for the same change.
  function drawPaths(r) {
    draw.path(base, r.base.positions, n, "#2a5bd7");
    base.dataset.path = JSON.stringify(r.base.positions);
    mod.dataset.path = r.mod ? JSON.stringify(r.mod.positions) : "";
    if (r.mod) draw.path(mod, r.mod.positions, n, "#d62728");
    for (const [name, tr] of [["agent", r.base], ["intervened", r.mod]]) {
      if (!tr) continue;
      summary.append(el("tr", {}, el("th", { text: name }), el("td", { text: `sampled path of ${tr.length} steps ${tr.success ? "reaches the cheese" : "does not reach the cheese"}` })));
    }
    summary.append(el("tr", {}, el("td", { colspan: 2, class: "note", text: "One sampled path per condition (same luck): an example, not a measurement (policylens steer measures over many mazes with intervals)." })));
  }

  async function saveVector() {
    try {
      const saved = await api.sendJSON("POST", "api/vectors", { name: vectorName.value, state, step: Number(app.step()), hook: ivc.read(null).hook });
      app.status(`saved ${saved.name} at ${saved.hook}; it is in the vector list after a reload`);
    } catch (e) {
      fail(app, e);
    }
  }

  for (const c of [base, mod]) {
    c.addEventListener("click", (e) => {
      const r = Math.floor((e.offsetY / c.cssHeight) * n);
      const k = Math.floor((e.offsetX / c.cssWidth) * n);
      const mode = controls.mode();
      if (mode === "target") {
        target = [r, k];
        app.set({ target_cell: `${r},${k}` });
      } else if (!edit(state, mode, r, k)) {
        return;
      }
      update(`edit maze (${mode})`).catch((err) => fail(app, err));
    });
  }
  await update("open interventions");
}

async function episodeInterventions(root, app) {
  const ivc = interventionControls(app, (name) => api.timed(name, () => update()).catch((e) => fail(app, e)));
  const board = newBoard("board", 260);
  const after = newBoard("board-mod", 260);
  const probs = draw.canvas(420, 12 * Math.min(app.info.actions.length * 2, 16));
  probs.id = "probs";
  const summary = el("table", { class: "facts", id: "intervention-summary" });
  const bar = el("div", {});
  root.append(bar, ivc.row, el("div", { class: "row" },
    el("figure", {}, board, el("figcaption", { text: "this frame" })),
    el("figure", {}, after, el("figcaption", { text: "last position of the replay with the intervention" })),
    panel("This frame (blue: agent, red: intervened; the likeliest actions)", probs, summary)));
  let frame = 0;
  const { ep } = await episodeBar(bar, app, async (t) => { frame = t; await update(); });
  const shape = obsShape(app, ep.tensors.obs);

  async function update() {
    draw.drawObs(board, app.info.render, obsAt(ep, frame), shape);
    const iv = ivc.read(null);
    summary.replaceChildren();
    if (!(iv.coef && iv.vector !== "none") && !iv.clamp_channels.length && !iv.sae) {
      summary.append(el("tr", {}, el("td", { text: "choose a saved vector with a coefficient, units to clamp, or an SAE to splice in" })));
      return;
    }
    const p = app.params;
    const body = { episode: { step: Number(app.step()), seed: Number(p.seed || 0) }, t: frame, intervention: iv };
    const r = await api.sendJSON("POST", "api/intervene", body, "intervene", true);
    const t = r.tensors;
    const names = app.info.actions;
    const q = app.info.greedy;
    // the eight actions either agent finds likeliest
    const top = names.map((_, a) => a).sort((a, b) => Math.max(t.probs.data[b], t.base_probs.data[b]) - Math.max(t.probs.data[a], t.base_probs.data[a])).slice(0, 8);
    const both = top.flatMap((a) => [t.base_probs.data[a], t.probs.data[a]]);
    draw.hbars(probs, top.flatMap((a) => [names[a], `${names[a]} (iv)`]), both, { colours: ["#2a5bd7", "#d62728"], max: 1 });
    draw.drawObs(after, app.info.render, t.final_obs.data, shape);
    let diverge = "never";
    const n = Math.min(t.actions.data.length, t.base_actions.data.length);
    for (let i = 0; i < n; i++) if (t.actions.data[i] !== t.base_actions.data[i]) { diverge = `at step ${i}`; break; }
    for (const [k, v] of [["agent", `${r.meta.base_outcome} after ${r.meta.base_length} steps; value ${draw.fmt(r.meta.base_value)}`],
      ["intervened", `${r.meta.outcome} after ${r.meta.length} steps; value ${draw.fmt(r.meta.value)}`],
      ["actions first differ", diverge], ["policy", q ? "greedy on Q (bars: softmax of Q)" : "sampled, same luck"]]) {
      summary.append(el("tr", {}, el("th", { text: k }), el("td", { text: v })));
    }
    after.dataset.outcome = r.meta.outcome;
  }
  frame = Number(app.params.t || 0);
  await update();
}

// -- SAE feature pages ---------------------------------------------------------------------------------------------
async function sae(root, app) {
  const saes = app.info.saes;
  if (!saes.length) {
    root.append(panel("SAE features", el("p", { text: "This run has no SAE; train one with policylens sae train RUN --hook HOOK." })));
    return;
  }
  const p = app.params;
  const id = saes.some((s) => s.id === p.sae) ? p.sae : saes[0].id;
  const choose = select("sae", saes.map((s) => s.id), id, (v) => { app.set({ sae: v, latent: null }); app.go("sae", {}); });
  const latentInput = el("input", { id: "latent", type: "number", min: 0, value: p.latent ?? "", class: "num" });
  const go = el("button", { id: "show-latent", text: "Show", onclick: () => show(Number(latentInput.value)) });
  const stats = el("table", { class: "facts", id: "sae-stats" });
  const ranking = el("table", { class: "facts clickable", id: "sae-ranking" });
  const freq = draw.canvas(360, 110);
  const card = el("div", { id: "latent-card" });
  root.append(el("div", { class: "controls" }, field("SAE", choose), field("latent", latentInput), go),
    el("div", { class: "row" }, el("div", {}, panel("The SAE on fresh play", stats, freq), panel("Latents by effect when removed", ranking)), card));
  const q = api.query({ step: app.step() });
  const o = await api.timed("open SAE", () => api.getTensors(`api/sae/${encodeURIComponent(id)}?${q}`));
  const m = o.meta;
  const info = saes.find((s) => s.id === id);
  for (const [k, v] of [["site", `${m.site.hook} (${m.site.layout}, ${JSON.stringify(m.site.shape)})`], ["latents", `${m.d_sae} (${m.arch})`],
    ["dead on this data", `${m.dead} of ${m.d_sae} never fire on ${m.observations} observations`],
    ["dead in training", draw.fmt(info.dead_fraction)], ["explained variance (held out)", draw.fmt(info.explained_variance)], ["L0", draw.fmt(info.l0)]]) {
    stats.append(el("tr", {}, el("th", { text: k }), el("td", { text: v })));
  }
  const sorted = Array.from(o.tensors.frequency.data).sort((a, b) => b - a);
  draw.lines(freq, [{ values: sorted, colour: "#4a7bb7" }], { title: "firing frequency, latents sorted", zero: true });
  ranking.append(el("tr", {}, ...["latent", "frequency", m.effect === "flip_all" ? "action flips" : "KL", "value change"].map((h) => el("th", { text: h }))));
  for (const e of m.ranking) {
    const tr = el("tr", { "data-latent": e.latent, onclick: () => show(e.latent) }, el("td", { text: e.latent }), el("td", { text: draw.fmt(e.frequency) }),
      el("td", { text: draw.fmt(m.effect === "flip_all" ? e.flip : e.kl) }), el("td", { text: draw.fmt(e.value_change) }));
    ranking.append(tr);
  }

  async function show(latent) {
    if (!Number.isInteger(latent) || latent < 0) return;
    latentInput.value = latent;
    app.set({ sae: id, latent });
    try {
      await api.timed("open latent", async () => {
        const r = await api.getTensors(`api/sae/${encodeURIComponent(id)}/latent/${latent}?${q}`, "latent");
        const c = r.meta;
        const tops = el("div", { class: "examples", id: "latent-examples" });
        const shape = r.tensors.top_obs.shape.slice(1);
        for (let i = 0; i < r.tensors.top_obs.shape[0]; i++) {
          const cv = draw.canvas(THUMB, THUMB, "thumb");
          const g = draw.drawObs(cv, app.info.render, draw.item(r.tensors.top_obs, i), shape);
          const pos = c.positions[i];
          if (pos) draw.markCell(cv, pos[0], pos[1], g.rows, g.cols);
          tops.append(el("figure", {}, cv, el("figcaption", { text: draw.fmt(r.tensors.top_values.data[i]) })));
        }
        const hist = draw.canvas(320, 110);
        hist.id = "histogram";
        draw.histogram(hist, r.tensors.activations.data);
        const names = app.info.actions;
        const effect = draw.canvas(320, Math.max(120, 14 * names.length));
        effect.id = "effect";
        const a = c.ablation;
        draw.hbars(effect, names, a.logit_change, { signed: true });
        const facts = el("table", { class: "facts" });
        for (const [k, v] of [["fires on", `${(100 * c.frequency).toFixed(1)}% of observations`], ["KL when removed", draw.fmt(a.kl)],
          ["action changes when removed", draw.fmt(a.flip)], ["value change", draw.fmt(a.value_change)]]) {
          facts.append(el("tr", {}, el("th", { text: k }), el("td", { text: v })));
        }
        card.replaceChildren(panel(`latent ${latent}`, el("h3", { text: "top activations" }), tops,
          el("h3", { text: "activation histogram (where it fires)" }), hist,
          el("h3", { text: `removing it: mean change of each ${app.info.greedy ? "Q-value" : "logit"}` }), effect, facts));
      });
    } catch (e) {
      fail(app, e);
    }
  }
  const first = p.latent !== undefined ? Number(p.latent) : m.ranking.length ? m.ranking[0].latent : 0;
  await show(first);
}

export const VIEWS = { overview, trajectory, observation, activations, clusters, editor, interventions, sae };
