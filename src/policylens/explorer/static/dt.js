// The decision-transformer view: an episode the DT plays at a target return-to-go (its views and
// R/s/a tokens per step), every head's attention over the window it acted on at the chosen step,
// an RTG slider that replays the episode at another target, and the patching study's table.
// Everything it shows comes from /api/dt/*; the URL holds seed, rtg, t, greedy and step.

import * as api from "./api.js";
import * as draw from "./draw.js";

const DIRS = ["→", "↓", "←", "↑"]; // MiniGrid's agent_dir 0..3: east, south, west, north
const KIND_COLOURS = { R: "#b8860b", s: "#2a5bd7", a: "#2e8b57", pad: "#999" };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function panel(title, ...children) {
  return el("section", { class: "panel" }, el("h2", { text: title }), ...children);
}

function field(label, ...inputs) {
  return el("label", { class: "field" }, el("span", { text: label }), ...inputs);
}

// MiniGrid's objects as the world draws them (policylens.worlds.minigrid.PALETTE); the agent sits
// at the bottom middle of its own view, facing up.
const CELL_KEY = [["unseen", "rgb(40,40,40)"], ["empty", "rgb(0,0,0)"], ["wall", "rgb(100,100,100)"],
  ["obstacle (ball)", "rgb(70,110,230)"], ["key", "rgb(230,200,40)"], ["door", "rgb(150,100,50)"],
  ["goal", "rgb(40,200,60)"], ["agent", "rgb(230,40,40)"]];

function cellKey() {
  const key = el("div", { class: "legend colour-key", id: "dt-colour-key" });
  for (const [name, colour] of CELL_KEY) {
    const swatch = el("span", { class: "swatch" });
    swatch.style.setProperty("--c", colour); // through the CSSOM: the CSP forbids style attributes
    key.append(el("span", {}, swatch, name));
  }
  return key;
}

function ci(x, digits = 2) {
  return `${x.mean.toFixed(digits)} [${x.ci[0].toFixed(digits)}, ${x.ci[1].toFixed(digits)}]`;
}

// One head's attention (n x n, query rows) with the token labels; the acting query row outlined.
function attentionMap(c, pattern, n, tokens, query, title) {
  const ctx = draw.clear(c);
  const left = 62;
  const top = 18;
  const size = Math.min(c.cssWidth - left - 4, c.cssHeight - top - 56);
  const cell = size / n;
  ctx.font = "bold 11px sans-serif";
  ctx.fillStyle = "#333";
  ctx.fillText(title, 0, 12);
  for (let q = 0; q < n; q++) {
    for (let k = 0; k < n; k++) {
      const v = pattern[q * n + k];
      const [r, g, b] = draw.ramp(v);
      ctx.fillStyle = k > q ? "#f4f4f6" : `rgb(${r},${g},${b})`;
      ctx.fillRect(left + k * cell, top + q * cell, cell + 0.5, cell + 0.5);
    }
  }
  ctx.strokeStyle = "#e00";
  ctx.lineWidth = 2;
  ctx.strokeRect(left + 1, top + query * cell + 1, size - 2, cell - 2);
  ctx.font = `${Math.min(10, cell * 0.8)}px sans-serif`;
  for (let i = 0; i < n; i++) {
    const tok = tokens[i];
    ctx.fillStyle = KIND_COLOURS[tok.kind];
    ctx.textAlign = "right";
    ctx.fillText(tok.label.slice(0, 10), left - 3, top + (i + 0.7) * cell);
    ctx.save();
    ctx.translate(left + (i + 0.6) * cell, top + size + 3);
    ctx.rotate(-Math.PI / 2.6);
    ctx.fillText(tok.label.slice(0, 10), 0, 0);
    ctx.restore();
  }
  ctx.textAlign = "left";
}

// The acting query's row (attention to each context token), as labelled bars.
function queryRow(c, row, tokens) {
  draw.hbars(c, tokens.map((t) => t.label), Array.from(row), {
    colours: tokens.map((t) => KIND_COLOURS[t.kind]), max: 1,
  });
}

async function dtView(root, app) {
  const p = app.params;
  const names = app.info.actions;
  const seed = el("input", { id: "dt-seed", type: "number", min: 0, value: p.seed ?? 0, class: "num" });
  const rtg = el("input", { id: "rtg-slider", type: "range", min: -1, max: 1, step: 0.05, value: p.rtg ?? 1 });
  const rtgLabel = el("span", { id: "rtg-label", class: "mono" });
  const greedy = el("input", { id: "dt-greedy", type: "checkbox" });
  greedy.checked = p.greedy === "true";
  const frame = el("input", { id: "frame-slider", type: "range", min: 0, value: 0, step: 1 });
  const frameLabel = el("span", { id: "frame-label", class: "mono" });
  const summary = el("div", { id: "dt-summary", class: "note" });
  const board = draw.canvas(280, 280, "board");
  board.id = "board";
  const probs = draw.canvas(280, 66);
  probs.id = "dt-probs";
  const stepInfo = el("table", { class: "facts", id: "dt-step-info" });
  const tokens = el("table", { class: "facts clickable", id: "dt-tokens" });
  const tokensBox = el("div", { class: "dt-tokens" }, tokens);
  const heads = el("div", { class: "grid", id: "dt-attention" });
  const attNote = el("div", { class: "note", id: "dt-attention-note" });
  const patchBox = el("div", { id: "dt-patching" }, el("div", { class: "note", text: "loading the patching study…" }));
  root.append(
    panel("Episode played by the decision transformer",
      el("div", { class: "controls" },
        field("seed", seed),
        field("target RTG", rtg), rtgLabel,
        field("greedy", greedy),
        el("button", { id: "dt-new-seed", text: "New seed", onclick: () => { seed.value = Number(seed.value || 0) + 1; replay(); } })),
      el("div", { class: "controls" }, field("step", frame), frameLabel),
      summary,
      el("div", { class: "row" },
        el("div", { class: "stack dt-side" }, board, cellKey(), probs, stepInfo),
        el("div", {}, el("h3", { text: "tokens per step (click one)" }), tokensBox))),
    panel("Attention by head at the selected step", attNote, heads),
    panel("Activation patching between a high and a low RTG", patchBox),
  );

  let ro = null;
  let t = 0;

  const setRtgLabel = () => (rtgLabel.textContent = `${Number(rtg.value).toFixed(2)}`);
  setRtgLabel();

  async function showAttention() {
    const q = api.query({ step: app.step(), seed: seed.value || 0, rtg: rtg.value, greedy: greedy.checked, t });
    const { tensors, meta } = await api.getTensors(`api/dt/attention?${q}`, "dt-attention");
    const [L, H, n] = tensors.pattern.shape;
    heads.replaceChildren();
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        const i = l * H + h;
        const slice = tensors.pattern.data.subarray(i * n * n, (i + 1) * n * n);
        const map = draw.canvas(300, 300);
        map.className = "dt-head";
        map.dataset.head = meta.heads[i];
        attentionMap(map, slice, n, meta.tokens, meta.query, `${meta.heads[i]} (query rows, key columns)`);
        const row = draw.canvas(300, 12 * n + 4);
        queryRow(row, slice.subarray(meta.query * n, (meta.query + 1) * n), meta.tokens);
        heads.append(el("figure", {}, map, row,
          el("figcaption", { text: `${meta.heads[i]}: attention from s${t} (where the action is read)` })));
      }
    }
    attNote.textContent = `the window the DT acted on at step ${t} (${n / 3} steps, ${n} tokens); red: the last state token's row`;
    heads.dataset.t = String(t);
  }

  function setStep(next, name = "scrub") {
    if (!ro) return;
    const T = ro.meta.length;
    t = Math.max(0, Math.min(T - 1, next));
    frame.value = t;
    frameLabel.textContent = `t = ${t} / ${T - 1}`;
    app.set({ t });
    const obs = draw.item(ro.tensors.obs, t);
    draw.drawObs(board, app.info.render, obs, ro.tensors.obs.shape.slice(1));
    board.dataset.frame = String(t);
    const pr = Array.from(draw.item(ro.tensors.probs, t));
    draw.hbars(probs, names, pr, { max: 1 });
    const a = ro.tensors.actions.data[t];
    stepInfo.replaceChildren(
      ...[["R (return-to-go)", draw.fmt(ro.tensors.rtg.data[t])],
        ["s (direction)", DIRS[ro.tensors.directions.data[t]] ?? "?"],
        ["a (action taken)", names[a]], ["reward", draw.fmt(ro.tensors.rewards.data[t])]]
        .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v }))));
    for (const tr of tokens.querySelectorAll("tr[data-t]")) tr.classList.toggle("active", Number(tr.dataset.t) === t);
    tokens.querySelector(`tr[data-t="${t}"]`)?.scrollIntoView({ block: "nearest" });
    return api.timed(name, showAttention).catch((e) => { if (!api.isAbort(e)) app.status(e.message, true); });
  }

  async function load() {
    const q = api.query({ step: app.step(), seed: seed.value || 0, rtg: rtg.value, greedy: greedy.checked });
    ro = await api.timed("dt rollout", () => api.getTensors(`api/dt/rollout?${q}`, "dt-rollout"));
    const m = ro.meta;
    const T = m.length;
    frame.max = Math.max(T - 1, 0);
    summary.textContent = `target RTG ${m.target.toFixed(2)}, seed ${m.seed}: ${m.outcome}, return ${draw.fmt(m.return)} in ${T} steps${m.greedy ? " (greedy)" : " (sampled)"}`;
    const acts = Array.from(ro.tensors.actions.data);
    summary.dataset.actions = acts.join(",");
    summary.dataset.rtg = String(m.target);
    tokens.replaceChildren(el("tr", {}, ...["t", "R", "s", "", "a", "r"].map((h) => el("th", { text: h }))));
    const shape = ro.tensors.obs.shape.slice(1);
    for (let i = 0; i < T; i++) {
      const thumb = draw.canvas(24, 24, "thumb");
      draw.drawObs(thumb, app.info.render, draw.item(ro.tensors.obs, i), shape);
      const r = ro.tensors.rewards.data[i];
      tokens.append(el("tr", { "data-t": i, onclick: () => setStep(i, "token row") },
        el("td", { text: i }), el("td", { class: "mono", text: ro.tensors.rtg.data[i].toFixed(2) }),
        el("td", {}, thumb), el("td", { text: DIRS[ro.tensors.directions.data[i]] ?? "?" }),
        el("td", { text: names[acts[i]] }), el("td", { class: "mono", text: r ? r.toFixed(2) : "" })));
    }
    await setStep(Math.min(Number(p.t ?? t), T - 1), "replay");
  }

  async function replay() {
    app.set({ seed: seed.value || 0, rtg: Number(rtg.value).toFixed(2), greedy: greedy.checked ? "true" : null });
    try {
      await load();
    } catch (e) {
      if (!api.isAbort(e)) app.status(e.message, true);
    }
  }

  rtg.addEventListener("input", () => { setRtgLabel(); replay(); });
  seed.addEventListener("change", replay);
  greedy.addEventListener("change", replay);
  frame.addEventListener("input", () => setStep(Number(frame.value)));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range") return;
    const moves = { ArrowRight: t + 1, ArrowLeft: t - 1, Home: 0, End: (ro?.meta.length ?? 1) - 1 };
    if (!(e.key in moves) || e.target === rtg) return;
    e.preventDefault();
    setStep(moves[e.key], "arrow key");
  }, { signal: app.viewSignal });

  const patching = (async () => {
    const q = api.query({ step: app.step(), high: p.high, low: p.low, min_gap: p.min_gap });
    const r = await api.getJSON(`api/dt/patching?${q}`, "dt-patching");
    const table = el("table", { class: "facts", id: "dt-patch-table" },
      el("tr", {}, ...["component", "recovered (high → low)", "lost (low → high)", "chooses a_high"].map((h) => el("th", { text: h }))));
    for (const row of r.rows) {
      table.append(el("tr", {}, el("td", { text: row.component }), el("td", { class: "mono", text: ci(row.recovered) }),
        el("td", { class: "mono", text: ci(row.lost) }), el("td", { class: "mono", text: row.chosen.toFixed(2) })));
    }
    const fewest = (f, what) => el("div", { class: "note" },
      `fewest components (${what}) ${f.reached ? "reaching" : "not reaching"} ${Math.round(r.bar * 100)}%: ${f.components.join(", ")}, recovered ${ci(f.recovered)}`);
    patchBox.replaceChildren(
      el("div", { class: "note", text: `RTG ${r.high} patched into RTG ${r.low}: ${r.histories} of ${r.candidates} histories change their action; logit gap ${ci(r.gap)}` }),
      table, fewest(r.fewest, "of embed, heads, MLPs"), fewest(r.fewest_upstream, "without the MLPs"));
  })().catch((e) => {
    if (!api.isAbort(e)) patchBox.replaceChildren(el("div", { class: "note", id: "dt-patching-error", text: `patching: ${e.message}` }));
  });

  await load();
  await patching;
}

export const DT_VIEWS = { dt: dtView };
