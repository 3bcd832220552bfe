// The explorer's API client: JSON and binary tensor messages, background jobs with progress,
// superseded requests cancelled, and every interaction's latency recorded for bench_explorer.py.

const DTYPES = { float32: Float32Array, uint8: Uint8Array, int32: Int32Array };

// Decode a policylens tensor message (see tensors.py): magic, header length, JSON header, arrays.
export function unpack(buffer) {
  const view = new DataView(buffer);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (magic !== "PLT1") throw new Error("the server sent no tensor message");
  const size = view.getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, size)));
  const base = 8 + size;
  const tensors = {};
  for (const [name, e] of Object.entries(header.tensors)) {
    const Type = DTYPES[e.dtype];
    const n = e.nbytes / Type.BYTES_PER_ELEMENT;
    tensors[name] = { data: new Type(buffer, base + e.offset, n), shape: e.shape };
  }
  return { tensors, meta: header.meta };
}

const inflight = new Map(); // channel -> AbortController of its newest request
const listeners = new Set(); // job progress listeners

export function onJobs(fn) {
  listeners.add(fn);
}

function showJob(job) {
  for (const fn of listeners) fn(job);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// A request whose answer may be 202 {pending: job}: show the job's progress, wait, ask again.
async function request(path, init = {}, channel = null) {
  let controller = null;
  if (channel) {
    inflight.get(channel)?.abort();
    controller = new AbortController();
    inflight.set(channel, controller);
    init = { ...init, signal: controller.signal };
  }
  try {
    for (;;) {
      const response = await fetch(path, init);
      if (response.status === 202) {
        const { pending } = await response.json();
        await waitForJob(pending, controller);
        continue;
      }
      if (!response.ok) {
        let message = `${response.status} ${response.statusText}`;
        try {
          const body = await response.json();
          message = body.error || JSON.stringify(body.detail || body);
        } catch (_) {
          /* not JSON */
        }
        throw new ApiError(message, response.status);
      }
      return response;
    }
  } finally {
    if (channel && inflight.get(channel) === controller) inflight.delete(channel);
  }
}

async function waitForJob(job, controller) {
  for (;;) {
    showJob(job);
    if (job.status === "done") return;
    if (job.status === "failed") throw new ApiError(job.error, 400);
    await sleep(job.progress < 0.05 ? 60 : 150);
    if (controller?.signal.aborted) throw new DOMException("superseded", "AbortError");
    const r = await fetch(`api/jobs/${job.id}`, { signal: controller?.signal });
    if (!r.ok) throw new ApiError("the job was forgotten; try again", r.status);
    job = await r.json();
  }
}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export async function getJSON(path, channel = null) {
  return (await request(path, {}, channel)).json();
}

export async function getTensors(path, channel = null) {
  return unpack(await (await request(path, {}, channel)).arrayBuffer());
}

export async function sendJSON(method, path, body, channel = null, binary = false) {
  const response = await request(
    path,
    { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) },
    channel,
  );
  return binary ? unpack(await response.arrayBuffer()) : response.json();
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  return q.toString();
}

// Latency of each user interaction, from the event to the drawn answer.
window.__latencies = window.__latencies || [];
// A superseded (aborted) interaction is not counted.
export async function timed(name, work) {
  const start = performance.now();
  const result = await work();
  window.__latencies.push({ name, ms: performance.now() - start });
  return result;
}

export function isAbort(e) {
  return e && e.name === "AbortError";
}
