// The live memory line under a job form ("needs 61.2 GiB per device; fits 1 x cuda:0 on gpu-box"),
// recomputed locally (frontend/js/memplan.js) on every keystroke, against the live workers' memory. A
// batch size, seq_len or job's tokens over the server's limit (GET /config) is said instead: the API
// refuses that job whatever it needs, and a fit computed for it would suggest settings the server never runs.
import { api } from "../api.js";
import { overLimit, serverConfig } from "../serverconfig.js";
import { h } from "../dom.js";
import { readForm } from "./widgets.js";
import { benchmarkNeed, evaluateNeed } from "../jobmemory.js";
import { fitLine } from "../memplan.js";

/** `compute(values, workers)` -> {text, fits} (memplan.fitLine) or null when the inputs are incomplete.
 * `kind` (serverconfig.SIZE_FACTORS) checks the job's tokens too, on `params(form)`: the API's params. */
export function memoryLine(form, compute, { kind = null, params = readForm } = {}) {
  const line = h("div.hint", { dataset: { testid: "memory-estimate" } });
  let workers = [];
  let limits = null;
  const update = () => {
    let out = null;
    try {
      const values = readForm(form);
      const over = overLimit(params(form), limits, kind);
      out = over ? { text: over, fits: false } : compute(values, workers);
    } catch {
      out = null; // a half-typed value: keep the line empty rather than wrong
    }
    line.textContent = out ? out.text : "";
    line.classList.toggle("error-msg", out?.fits === false);
  };
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  api.get("/workers").then((w) => { workers = w; update(); }).catch(() => {});
  serverConfig().then((c) => { limits = c.limits; update(); }).catch(() => {}); // unknown: no limit said
  queueMicrotask(update);
  return line;
}

/** The queue a job on `device` ("auto" | "cuda" | "cpu") goes to, by backend/routing.py's rule. */
export function queueFor(device, workers) {
  if (device === "cuda") return "gpu";
  if (device === "cpu") return "cpu";
  return workers.some((w) => (w.queues || []).includes("gpu")) ? "gpu" : "cpu";
}

/** The line under a student's Evaluate / Benchmark buttons: what each job needs at its default settings
 * (evaluate on the teacher's protocol context, benchmark batch 1 x 128 + 32 new tokens) and where it fits. */
export function measureMemoryLine(student, teacher) {
  const host = h("div");
  const line = memoryLine(host, (_, workers) => {
    if (!student?.spec || !teacher?.spec) return null;
    const queue = queueFor("auto", workers);
    const device = queue === "gpu" ? "cuda" : "cpu";
    const context = teacher.eval_protocol?.context || 128;
    const evaluate = fitLine(() => evaluateNeed(student.spec, { seq_len: context, device }), {}, workers, queue);
    const bench = { batch_size: 1, seq_len: 128, new_tokens: 32, device };
    const benchmark = fitLine((b) => benchmarkNeed(teacher.spec, student.spec, { ...bench, ...b }), {}, workers, queue);
    return { text: `evaluate ${evaluate.text} · benchmark (with the teacher) ${benchmark.text}`, fits: evaluate.fits === false || benchmark.fits === false ? false : evaluate.fits };
  });
  line.dataset.testid = "measure-memory";
  return line;
}
