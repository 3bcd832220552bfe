// The explorer's page: the run's header, the navigation, the hash router, shared state.
// A view's URL holds everything it shows (#/<view>?step=..&seed=..&t=..), so a link shares it.

import * as api from "./api.js";
import { VIEWS as AGENT_VIEWS } from "./views.js";
import { DT_VIEWS } from "./dt.js";

const SHARED = ["step", "seed", "level", "anywhere", "t", "layer", "rtg"];
// A decision-transformer run shows its run page and its DT view only (set once /api/run answers).
let VIEWS = AGENT_VIEWS;
const NAV = [
  ["overview", "Run"],
  ["trajectory", "Trajectory"],
  ["observation", "Observation"],
  ["activations", "Activations"],
  ["clusters", "Clusters"],
  ["editor", "Maze editor"],
  ["interventions", "Interventions"],
  ["sae", "SAE features"],
];
const DT_NAV = [
  ["overview", "Run"],
  ["dt", "Decision transformer"],
];

export const app = {
  info: null,
  view: "overview",
  params: {},
  episodes: new Map(),

  // Change some of this view's parameters: the URL follows (no reload), so it can be shared.
  set(changes) {
    Object.assign(this.params, changes);
    for (const [k, v] of Object.entries(this.params)) if (v === null || v === undefined || v === "") delete this.params[k];
    history.replaceState(null, "", `#/${this.view}?${api.query(this.params)}`);
    updateNav();
  },

  // Open a view (carrying the episode, frame and layer); the same URL again redraws the view.
  go(view, changes = {}) {
    const carried = {};
    const keep = view === this.view ? Object.keys(this.params) : SHARED;
    for (const k of keep) if (k in this.params) carried[k] = this.params[k];
    const hash = `#/${view}?${api.query({ ...carried, ...changes })}`;
    if (hash === location.hash) route();
    else location.hash = hash;
  },

  step() {
    return this.params.step ?? this.info.step;
  },

  layer() {
    return this.params.layer || this.info.default_layer;
  },

  // The episode the parameters name (decoded tensors), played on a background job if new.
  async episode(channel = "episode") {
    const p = this.params;
    const key = api.query({ step: this.step(), seed: p.seed ?? 0, level: p.level, anywhere: p.anywhere });
    if (!this.episodes.has(key)) {
      const ep = await api.getTensors(`api/episode?${key}`, channel);
      this.episodes.set(key, ep);
    }
    return { ...this.episodes.get(key), query: key };
  },

  status(message, error = false) {
    const el = document.getElementById("status");
    el.textContent = message;
    el.className = error ? "error" : "";
  },
};

function parseHash() {
  const hash = location.hash.slice(1) || (app.info?.kind === "dt" ? "/dt" : "/overview");
  const [path, q] = hash.split("?");
  return { view: path.replace(/^\//, "") || "overview", params: Object.fromEntries(new URLSearchParams(q || "")) };
}

function updateNav() {
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === app.view);
    const carried = {};
    for (const k of SHARED) if (k in app.params) carried[k] = app.params[k];
    a.href = `#/${a.dataset.view}?${api.query(carried)}`;
  }
}

async function route() {
  const { view, params } = parseHash();
  app.view = VIEWS[view] ? view : "overview";
  app.params = params;
  updateNav();
  app.status("");
  app.viewAbort?.abort(); // the old view's key handlers go with it
  app.viewAbort = new AbortController();
  app.viewSignal = app.viewAbort.signal;
  const main = document.getElementById("main");
  main.replaceChildren();
  main.dataset.view = app.view;
  try {
    await VIEWS[app.view](main, app);
  } catch (e) {
    if (!api.isAbort(e)) app.status(e.message, true);
  }
}

function buildNav() {
  const nav = document.getElementById("nav");
  for (const [view, label] of app.info.kind === "dt" ? DT_NAV : NAV) {
    if (view === "editor" && !app.info.editable) continue;
    if (view === "sae" && !app.info.saes.length) continue;
    const a = document.createElement("a");
    a.textContent = label;
    a.dataset.view = view;
    a.id = `nav-${view}`;
    nav.append(a);
  }
}

function jobsPanel() {
  const panel = document.getElementById("jobs");
  const rows = new Map();
  api.onJobs((job) => {
    let row = rows.get(job.id);
    if (!row) {
      row = document.createElement("div");
      row.className = "job";
      row.innerHTML = '<span class="job-name"></span><progress max="1"></progress><span class="job-msg"></span>';
      rows.set(job.id, row);
      panel.append(row);
    }
    row.querySelector(".job-name").textContent = job.key.split(":")[0];
    row.querySelector("progress").value = job.progress;
    row.querySelector(".job-msg").textContent = job.status === "failed" ? job.error : job.message;
    if (job.status !== "running") {
      setTimeout(() => {
        row.remove();
        rows.delete(job.id);
      }, 600);
    }
  });
}

async function start() {
  jobsPanel();
  try {
    app.info = await api.getJSON("api/run");
  } catch (e) {
    app.status(e.message, true);
    return;
  }
  if (app.info.kind === "dt") VIEWS = { overview: AGENT_VIEWS.overview, ...DT_VIEWS };
  document.getElementById("run-name").textContent = app.info.run;
  document.getElementById("run-world").textContent = `${app.info.env_id} · ${app.info.kind} · ${app.info.arch}`;
  document.title = `${app.info.run} · policylens explorer`;
  const steps = document.getElementById("step-select");
  for (const step of app.info.checkpoints) steps.append(new Option(`step ${step}`, step));
  steps.addEventListener("change", () => {
    app.set({ step: steps.value });
    app.go(app.view, {});
  });
  window.addEventListener("hashchange", () => (steps.value = app.step()));
  buildNav();
  window.addEventListener("hashchange", route);
  await route();
  steps.value = app.step();
}

start();
