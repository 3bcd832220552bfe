// Drawing on canvases: observations of each world, heat overlays, NMF colours, vector fields,
// trajectories, line and bar charts, histograms. Pure drawing: every number comes from the API.

export const PALETTE = [
  "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
  "#f032e6", "#bfef45", "#469990", "#9a6324", "#800000", "#000075",
];
const FLOOR = [233, 222, 190];
const WALL = [46, 84, 52];
const MOUSE = "rgb(120,85,60)";
const CHEESE = "rgb(250,200,30)";

export function canvas(width, height, cls = "") {
  const c = document.createElement("canvas");
  const ratio = window.devicePixelRatio || 1;
  c.width = Math.round(width * ratio);
  c.height = Math.round(height * ratio);
  c.style.width = `${width}px`;
  c.style.height = `${height}px`;
  if (cls) c.className = cls;
  c.getContext("2d").scale(ratio, ratio);
  c.cssWidth = width;
  c.cssHeight = height;
  return c;
}

export function clear(c) {
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.cssWidth, c.cssHeight);
  return ctx;
}

// One observation (a typed-array slice) of a world, filling the canvas. Returns the board's grid
// (rows, cols) so overlays can be laid over it.
export function drawObs(c, render, obs, shape) {
  const ctx = clear(c);
  const W = c.cssWidth;
  const H = c.cssHeight;
  if (render.kind === "maze") {
    const n = shape[shape.length - 1];
    const cell = W / n;
    for (let r = 0; r < n; r++) {
      for (let col = 0; col < n; col++) {
        const wall = obs[r * n + col] > 0;
        const rgb = wall ? WALL : FLOOR;
        ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
        ctx.fillRect(col * cell, r * cell, cell + 0.5, cell + 0.5);
      }
    }
    for (let r = 0; r < n; r++) {
      for (let col = 0; col < n; col++) {
        if (obs[2 * n * n + r * n + col] > 0) cheese(ctx, col * cell, r * cell, cell);
        if (obs[n * n + r * n + col] > 0) mouse(ctx, col * cell, r * cell, cell);
      }
    }
    return { rows: n, cols: n };
  }
  if (render.kind === "chess") {
    const n = render.size;
    const cell = W / n;
    for (let r = 0; r < n; r++) {
      for (let col = 0; col < n; col++) {
        ctx.fillStyle = (r + col) % 2 === 0 ? "#f0d9b5" : "#b58863";
        ctx.fillRect(col * cell, r * cell, cell + 0.5, cell + 0.5);
      }
    }
    const pieces = ["K", "R", "k"];
    for (let p = 0; p < 3; p++) {
      for (let s = 0; s < n * n; s++) {
        if (obs[p * n * n + s] > 0.5) piece(ctx, pieces[p], (s % n) * cell, Math.floor(s / n) * cell, cell);
      }
    }
    return { rows: n, cols: n };
  }
  if (render.kind === "image") {
    const [h, w] = shape;
    const img = new ImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      img.data[4 * i] = obs[3 * i];
      img.data[4 * i + 1] = obs[3 * i + 1];
      img.data[4 * i + 2] = obs[3 * i + 2];
      img.data[4 * i + 3] = 255;
    }
    const off = document.createElement("canvas");
    off.width = w;
    off.height = h;
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, W, H);
    return { rows: h, cols: w };
  }
  // a plain vector: one bar per entry
  const n = obs.length;
  let max = 1e-9;
  for (const v of obs) max = Math.max(max, Math.abs(v));
  ctx.fillStyle = "#4a7bb7";
  for (let i = 0; i < n; i++) {
    const h = (Math.abs(obs[i]) / max) * (H - 4);
    ctx.fillRect((i * W) / n, H - h, Math.max(1, W / n - 1), h);
  }
  return { rows: 1, cols: n };
}

function mouse(ctx, x, y, cell) {
  ctx.fillStyle = MOUSE;
  ctx.beginPath();
  ctx.arc(x + cell / 2, y + cell / 2, cell * 0.32, 0, 2 * Math.PI);
  ctx.fill();
}

function cheese(ctx, x, y, cell) {
  const p = cell * 0.18;
  ctx.fillStyle = CHEESE;
  ctx.beginPath();
  ctx.moveTo(x + cell / 2, y + p);
  ctx.lineTo(x + cell - p, y + cell / 2);
  ctx.lineTo(x + cell / 2, y + cell - p);
  ctx.lineTo(x + p, y + cell / 2);
  ctx.closePath();
  ctx.fill();
}

function piece(ctx, kind, x, y, cell) {
  const black = kind === "k";
  ctx.fillStyle = black ? "#111" : "#fff";
  ctx.strokeStyle = "#111";
  ctx.lineWidth = 2;
  const p = cell * 0.16;
  ctx.beginPath();
  if (kind === "R") ctx.rect(x + p, y + p, cell - 2 * p, cell - 2 * p);
  else ctx.arc(x + cell / 2, y + cell / 2, cell / 2 - p, 0, 2 * Math.PI);
  ctx.fill();
  ctx.stroke();
  ctx.fillStyle = black ? "#fff" : "#111";
  ctx.font = `bold ${Math.round(cell * 0.36)}px sans-serif`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(kind.toUpperCase(), x + cell / 2, y + cell / 2 + 1);
}

// Colour scales: signed values red (+) / blue (-); non-negative ones along a viridis-like ramp.
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

export function ramp(x) {
  const t = Math.min(Math.max(x, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(t), RAMP.length - 2);
  const f = t - i;
  return RAMP[i].map((v, k) => Math.round(v + f * (RAMP[i + 1][k] - v)));
}

export function range(data) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of data) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

// A map (rows x cols, row-major) laid over the whole canvas with the given opacity.
export function heat(c, data, rows, cols, opacity = 0.6, signed = null) {
  const ctx = c.getContext("2d");
  const [lo, hi] = range(data);
  const isSigned = signed ?? lo < 0;
  const scale = Math.max(Math.abs(lo), Math.abs(hi), 1e-12);
  const ch = c.cssHeight / rows;
  const cw = c.cssWidth / cols;
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < cols; k++) {
      const v = data[r * cols + k];
      let rgb;
      let a = opacity;
      if (isSigned) {
        const x = v / scale;
        rgb = x >= 0 ? [220, 40, 40] : [40, 90, 220];
        a = opacity * Math.abs(x);
      } else {
        rgb = ramp((v - lo) / Math.max(hi - lo, 1e-12));
      }
      ctx.fillStyle = `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${a})`;
      ctx.fillRect(k * cw, r * ch, cw + 0.5, ch + 0.5);
    }
  }
  return [lo, hi];
}

// NMF feature maps (h, w, k): each position coloured by the features present, in proportion.
export function features(c, maps, h, w, k, colours, opacity) {
  const ctx = c.getContext("2d");
  const max = new Float32Array(k).fill(1e-12);
  for (let i = 0; i < h * w; i++) for (let j = 0; j < k; j++) max[j] = Math.max(max[j], maps[i * k + j]);
  const rgb = colours.map((hex) => [1, 3, 5].map((o) => parseInt(hex.slice(o, o + 2), 16)));
  const ch = c.cssHeight / h;
  const cw = c.cssWidth / w;
  for (let i = 0; i < h * w; i++) {
    let total = 0;
    const mix = [0, 0, 0];
    for (let j = 0; j < k; j++) {
      const s = maps[i * k + j] / max[j];
      total += s;
      for (let m = 0; m < 3; m++) mix[m] += s * rgb[j][m];
    }
    if (total <= 0) continue;
    const col = mix.map((v) => Math.round(v / total));
    ctx.fillStyle = `rgba(${col[0]},${col[1]},${col[2]},${opacity * Math.min(1, total)})`;
    ctx.fillRect((i % w) * cw, Math.floor(i / w) * ch, cw + 0.5, ch + 0.5);
  }
}

// Arrows of a vector field: probs (cells, 4) = up, down, left, right at each cell (row, col).
export function arrows(c, cells, probs, n, colour = "#222", scale = 1) {
  const ctx = c.getContext("2d");
  const cell = c.cssWidth / n;
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.lineWidth = Math.max(1.2, cell / 16);
  for (let i = 0; i < cells.length / 2; i++) {
    const r = cells[2 * i];
    const k = cells[2 * i + 1];
    const dx = (probs[4 * i + 3] - probs[4 * i + 2]) * scale;
    const dy = (probs[4 * i + 1] - probs[4 * i]) * scale;
    const x = (k + 0.5) * cell;
    const y = (r + 0.5) * cell;
    const len = Math.hypot(dx, dy);
    if (len < 0.02) continue;
    const ex = x + dx * cell * 0.45;
    const ey = y + dy * cell * 0.45;
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(ex, ey);
    ctx.stroke();
    const a = Math.atan2(dy, dx);
    const head = cell * 0.14;
    ctx.beginPath();
    ctx.moveTo(ex, ey);
    ctx.lineTo(ex - head * Math.cos(a - 0.5), ey - head * Math.sin(a - 0.5));
    ctx.lineTo(ex - head * Math.cos(a + 0.5), ey - head * Math.sin(a + 0.5));
    ctx.closePath();
    ctx.fill();
  }
}

export function path(c, positions, n, colour, offset = 0) {
  if (!positions || positions.length < 2) return;
  const ctx = c.getContext("2d");
  const cell = c.cssWidth / n;
  ctx.strokeStyle = colour;
  ctx.lineWidth = Math.max(2, cell / 7);
  ctx.lineJoin = "round";
  ctx.globalAlpha = 0.75;
  ctx.beginPath();
  positions.forEach(([r, k], i) => {
    const x = (k + 0.5) * cell + offset;
    const y = (r + 0.5) * cell + offset;
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.globalAlpha = 1;
}

export function markCell(c, r, k, rows, cols, colour = "#e00") {
  const ctx = c.getContext("2d");
  const ch = c.cssHeight / rows;
  const cw = c.cssWidth / cols;
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2.5;
  ctx.strokeRect(k * cw + 1.5, r * ch + 1.5, cw - 3, ch - 3);
}

// Line chart of several series over steps; a cursor at `at`; returns x -> step for clicks.
export function lines(c, series, { at = null, title = "", zero = false, bars = false } = {}) {
  const ctx = clear(c);
  const W = c.cssWidth;
  const H = c.cssHeight;
  const left = 42;
  const top = title ? 16 : 4;
  const bottom = H - 14;
  const n = Math.max(...series.map((s) => s.values.length), 1);
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of series) for (const v of s.values) if (Number.isFinite(v)) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  if (!Number.isFinite(lo)) [lo, hi] = [0, 1];
  if (zero) [lo, hi] = [Math.min(lo, 0), Math.max(hi, 0)];
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
  const xs = (i) => left + ((W - left - 6) * i) / Math.max(n - 1, 1);
  const ys = (v) => bottom - ((bottom - top) * (v - lo)) / (hi - lo);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#555";
  ctx.textAlign = "right";
  ctx.fillText(fmt(hi), left - 4, top + 8);
  ctx.fillText(fmt(lo), left - 4, bottom);
  if (title) {
    ctx.textAlign = "left";
    ctx.fillText(title, left, 11);
  }
  ctx.strokeStyle = "#ccc";
  ctx.beginPath();
  ctx.moveTo(left, top);
  ctx.lineTo(left, bottom);
  ctx.lineTo(W - 4, bottom);
  if (lo < 0 && hi > 0) {
    ctx.moveTo(left, ys(0));
    ctx.lineTo(W - 4, ys(0));
  }
  ctx.stroke();
  for (const s of series) {
    ctx.strokeStyle = s.colour;
    ctx.fillStyle = s.colour;
    ctx.lineWidth = 1.5;
    if (bars) {
      const bw = Math.max(1, (W - left) / n - 1);
      s.values.forEach((v, i) => ctx.fillRect(xs(i) - bw / 2, Math.min(ys(v), ys(Math.max(lo, 0))), bw, Math.abs(ys(v) - ys(Math.max(lo, 0)))));
      continue;
    }
    ctx.beginPath();
    let open = false;
    s.values.forEach((v, i) => {
      if (!Number.isFinite(v)) {
        open = false;
        return;
      }
      if (open) ctx.lineTo(xs(i), ys(v));
      else ctx.moveTo(xs(i), ys(v));
      open = true;
    });
    ctx.stroke();
  }
  if (at !== null) {
    ctx.strokeStyle = "#d33";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(xs(at), top);
    ctx.lineTo(xs(at), bottom);
    ctx.stroke();
  }
  return (x) => Math.round(((x - left) / Math.max(W - left - 6, 1)) * Math.max(n - 1, 1));
}

// Horizontal bars with labels (action probabilities, correlations, effects).
export function hbars(c, labels, values, { colours = null, signed = false, max = null } = {}) {
  const ctx = clear(c);
  const W = c.cssWidth;
  const row = c.cssHeight / Math.max(labels.length, 1);
  const left = 78;
  const m = max ?? Math.max(...values.map((v) => Math.abs(v)), 1e-9);
  const zero = signed ? left + (W - left - 40) / 2 : left;
  const span = signed ? (W - left - 40) / 2 : W - left - 40;
  ctx.font = "11px sans-serif";
  labels.forEach((label, i) => {
    const y = i * row;
    ctx.fillStyle = "#333";
    ctx.textAlign = "right";
    ctx.fillText(String(label).slice(0, 12), left - 4, y + row * 0.68);
    const v = values[i];
    const w = (Math.abs(v) / m) * span;
    ctx.fillStyle = colours ? colours[i % colours.length] : v >= 0 ? "#4a7bb7" : "#c0504d";
    ctx.fillRect(v >= 0 ? zero : zero - w, y + row * 0.18, w, row * 0.64);
    ctx.fillStyle = "#333";
    ctx.textAlign = "left";
    ctx.fillText(fmt(v), Math.min(zero + (v >= 0 ? w : 0) + 3, W - 38), y + row * 0.68);
  });
}

export function histogram(c, values, bins = 30) {
  const ctx = clear(c);
  const W = c.cssWidth;
  const H = c.cssHeight - 14;
  if (!values.length) {
    ctx.fillText("never fires on this data", 8, 20);
    return;
  }
  const [lo, hi] = range(values);
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor(((v - lo) / Math.max(hi - lo, 1e-12)) * bins))]++;
  const top = Math.max(...counts);
  ctx.fillStyle = "#4a7bb7";
  counts.forEach((n, i) => {
    const h = (n / top) * (H - 4);
    ctx.fillRect((i * W) / bins, H - h, W / bins - 1, h);
  });
  ctx.fillStyle = "#555";
  ctx.font = "10px sans-serif";
  ctx.textAlign = "left";
  ctx.fillText(fmt(lo), 0, H + 12);
  ctx.textAlign = "right";
  ctx.fillText(fmt(hi), W, H + 12);
}

export function fmt(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 1e4)) return v.toExponential(1);
  return v.toFixed(a < 1 ? 3 : 2);
}

// The part of a typed array holding item i of a batch with `shape` (batch first).
export function item(tensor, i) {
  const size = tensor.shape.slice(1).reduce((a, b) => a * b, 1);
  return tensor.data.subarray(i * size, (i + 1) * size);
}
