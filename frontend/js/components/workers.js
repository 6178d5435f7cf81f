// The live workers (GET /workers): each one's host, device, queues, how many ranks it offers a multi-GPU
// job (device_count), its GPUs with their memory, and its memory as the API sizes jobs by it.
import { api } from "../api.js";
import { h, mount } from "../dom.js";
import { bytes } from "../format.js";

/** A panel listing the live workers; refreshed every `refreshMs` while `ctx.alive`. */
export function workersPanel(ctx, refreshMs = 10_000) {
  const body = h("div", h("div.empty", "Reading the worker registry…"));
  const panel = h("section.panel", { dataset: { testid: "workers-panel" } }, h("header", h("h2", "Workers")), body);
  const render = async () => {
    let workers;
    try {
      workers = await api.get("/workers");
    } catch (err) {
      mount(body, h("div.error-msg", `worker registry unreachable: ${err.message}`));
      return;
    }
    if (!ctx.alive) return;
    mount(body, workers.length ? workersTable(workers) : h("div.empty", "No worker running: jobs wait in their queue (start one with `prunescope worker`)."));
    setTimeout(() => ctx.alive && render(), refreshMs);
  };
  render();
  return panel;
}

function memoryText(m) {
  if (!m) return "–";
  return `${bytes(m.free_bytes)} free of ${bytes(m.total_bytes)}`;
}

export function workersTable(workers) {
  return h("table.compact", { dataset: { testid: "workers-table" } },
    h("thead", h("tr", h("th", "worker"), h("th", "device"), h("th", "ranks"), h("th", "memory"))),
    h("tbody", workers.map((w) => h("tr", { dataset: { worker: `${w.hostname}:${w.pid}` } },
      h("td.mono", `${w.hostname}`, h("div.faint", `pid ${w.pid} · ${(w.queues || []).join(", ")}`)),
      h("td.mono", w.device),
      h("td.num", { dataset: { testid: "device-count" } }, String(w.device_count ?? 1)),
      h("td",
        (w.gpus || []).length
          ? (w.gpus || []).map((g) => h("div", { dataset: { testid: "gpu" } }, `GPU ${g.index} ${g.name}: ${bytes(g.free_bytes)} free of ${bytes(g.total_bytes)}`))
          : h("div", `${w.memory?.kind === "cpu" ? "RAM " : ""}${memoryText(w.memory)}`),
      ),
    ))));
}
