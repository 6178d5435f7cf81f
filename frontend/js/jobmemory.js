// What one job needs per device, from its form's settings: the dashboard's copy of backend/memcheck.py's
// `need` of each job kind (the same composition of memplan.js's estimates), so the live line under a
// form says what the API's 409 check will say.
import { distillMemory, evaluationMemory, importanceMemory, pruneMemory, teacherCorrectionMemory, usableBytes } from "./memplan.js";

/** Distill: the planner's sharded step over gpus x nodes ranks, per GPU on CUDA, times a node's ranks on
 * a CPU host (they share its memory); with teacher correction the larger of that and its phases
 * (memcheck.distill_need). */
export function distillNeed(student, teacher, p, device = "cpu") {
  const gpus = Math.max(1, p.gpus || 1);
  const t = p.baseline ? null : teacher;
  const opts = {
    batch_size: p.batch_size,
    seq_len: p.seq_len,
    weights_dtype: p.weights_dtype || "float32",
    gradient_checkpointing: !!p.gradient_checkpointing,
    device,
    num_gpus: gpus * Math.max(1, p.nodes || 1),
  };
  let total = distillMemory(student, t, opts).total;
  if (t && p.teacher_correction_steps > 0) total = Math.max(total, teacherCorrectionMemory(student, t, opts).total);
  return total * (device === "cpu" ? gpus : 1);
}

const EVAL_BATCH_SIZE = 8; // memplan.EVAL_BATCH_SIZE: windows per forward of a perplexity pass

/** Evaluate: one model's perplexity at its batch of windows (memcheck.check_job "evaluate"). */
export function evaluateNeed(spec, { seq_len: seqLen = 128, device = "cpu" } = {}) {
  return evaluationMemory(spec, { batch_size: EVAL_BATCH_SIZE, seq_len: seqLen, device }).total;
}

/** Benchmark: teacher and student loaded together, measured one after the other. */
export function benchmarkNeed(teacher, student, { batch_size: batch = 1, seq_len: seqLen = 128, new_tokens: newTokens = 32, device = "cpu" } = {}) {
  const runs = [teacher, student].filter(Boolean).map((spec) => evaluationMemory(spec, { batch_size: batch, seq_len: seqLen, new_tokens: newTokens, device }));
  const weights = runs.reduce((sum, r) => sum + r.parts.weights, 0);
  return weights + Math.max(...runs.map((r) => r.total - r.parts.weights));
}

const PRUNE_LAYOUTS = { never: ["in_memory"], always: ["out_of_core"], auto: ["in_memory", "out_of_core"] };

/** Prune ("Create student"): in memory (teacher + cut copy) or out of core (about one tensor), by the
 * form's `out_of_core`; with "auto" the smaller, as the worker goes out of core when the teacher does not
 * fit (memcheck.prune_need). `student`: the plan's resulting spec (null: the teacher's). */
export function pruneNeed(teacher, student, p = {}) {
  const modes = PRUNE_LAYOUTS[p.out_of_core || "auto"] || PRUNE_LAYOUTS.auto;
  return Math.min(...modes.map((mode) => pruneMemory(teacher, student, { mode }).total));
}

/** Both modes of a prune job, for the form's line ("needs X (out of core: Y)"), and the teacher's loaded
 * bytes ("auto" compares them with each worker's threshold): memcheck.check_prune's `need`, `teacher_bytes`. */
export function pruneModes(teacher, student) {
  const inMemory = pruneMemory(teacher, student, { mode: "in_memory" });
  return { in_memory: inMemory.total, out_of_core: pruneMemory(teacher, student, { mode: "out_of_core" }).total, teacher_bytes: inMemory.parts.teacher_weights };
}

const AUTO_RAM_FRACTION = 0.5; // memplan.AUTO_OUT_OF_CORE_RAM_FRACTION

/** [usable bytes, where] a cut in `mode` may use on `worker`: out of core in its host's RAM
 * (`host_memory`, on a GPU worker too), in memory on its device (`memory`); an entry without
 * `host_memory`: `memory` (memcheck.prune_memory_of). */
export function pruneMemoryOf(worker, mode) {
  const host = mode === "out_of_core" ? worker.host_memory : null;
  if (host) return [usableBytes(host), `${worker.hostname} host RAM`];
  return [usableBytes(worker.memory), `${worker.hostname} ${worker.device}`];
}

/** The teacher size (bytes) above which `worker` cuts an "auto" job out of core: its own threshold
 * (`out_of_core_threshold_bytes`), else half its host's available RAM; null: unknown
 * (memcheck.prune_threshold). */
export function pruneThreshold(worker) {
  const threshold = worker.out_of_core_threshold_bytes;
  if (threshold !== undefined && threshold !== null) return Math.trunc(threshold);
  if (worker.host_memory) return Math.trunc(Math.trunc(worker.host_memory.free_bytes || 0) * AUTO_RAM_FRACTION);
  return null;
}

/** The modes a prune job may run in on `worker` (memcheck.prune_modes_on): "auto" resolved by its
 * threshold; both when unknown. */
export function pruneModesOn(worker, requested, teacherBytes) {
  const modes = PRUNE_LAYOUTS[requested] || PRUNE_LAYOUTS.auto;
  const threshold = modes.length > 1 ? pruneThreshold(worker) : null;
  if (threshold === null) return modes;
  return teacherBytes > threshold ? ["out_of_core"] : ["in_memory"];
}

/** What a cut in `mode` is compared with, in the 409's words (memcheck.prune_where). */
export function pruneWhere(mode) {
  return mode === "out_of_core" ? "of host RAM (out of core)" : "per device (in memory)";
}

// The first of `xs` with the smallest (largest) key, as Python's min (max) with key=.
const minBy = (xs, key) => xs.reduce((a, b) => (key(b) < key(a) ? b : a));
const maxBy = (xs, key) => xs.reduce((a, b) => (key(b) > key(a) ? b : a));

/** Where a prune job fits, each worker in the mode it would run, against the memory that mode uses
 * (memcheck.prune_fit): {fitting: [{name, bytes, mode}], mode, need, largest: [bytes, name], nearest:
 * {out_of_core, mode, need} | null}. `need`: bytes per mode (pruneModes); `workers`: sizedWorkers. */
export function pruneFit(need, teacherBytes, workers, requested) {
  const fits = (w, mode) => need[mode] <= pruneMemoryOf(w, mode)[0];
  const fitting = [];
  for (const w of workers) {
    const modes = pruneModesOn(w, requested, teacherBytes).filter((m) => fits(w, m));
    if (modes.length) {
      const mode = minBy(modes, (m) => need[m]);
      const [bytes, name] = pruneMemoryOf(w, mode);
      fitting.push({ name, bytes, mode });
    }
  }
  const mode = minBy(pruneModesOn(workers[0], requested, teacherBytes), (m) => need[m]);
  const largest = maxBy(workers.map((w) => pruneMemoryOf(w, mode)), (c) => c[0]);
  let nearest = null;
  if (!fitting.length) {
    for (const [other, value] of [["out_of_core", "always"], ["in_memory", "never"]]) {
      if (requested !== value && workers.some((w) => fits(w, other))) {
        nearest = { out_of_core: value, mode: other, need: need[other] };
        break;
      }
    }
  }
  return { fitting, mode, need: need[mode], largest, nearest };
}

/** The workers on `queue` that report their memory and have at least `gpus` devices, most usable
 * device memory first, ties in GET /workers order (memcheck.sized_workers over the registry). */
export function sizedWorkers(workers, queue, gpus = 1) {
  const able = (workers || []).filter((w) => (w.queues || []).includes(queue) && w.memory && Math.trunc(w.device_count || 1) >= gpus);
  return able.map((w, i) => ({ w, i, bytes: usableBytes(w.memory) })).sort((a, b) => b.bytes - a.bytes || a.i - b.i).map(({ w }) => w);
}

/** Preview: the teacher, then the masked teacher, over packed blocks (a batch of EVAL_BATCH_SIZE). */
export function previewNeed(teacher, { seq_len: seqLen = 128, device = "cpu" } = {}) {
  return evaluationMemory(teacher, { batch_size: EVAL_BATCH_SIZE, seq_len: seqLen, device }).total;
}

/** Document calibration (no `stream`) right-pads short windows, so attention gets a mask (memplan.importance_options). */
export function importancePadded(p) {
  return !p.stream;
}

/** The disk tier's limit in bytes from `spill_limit_gb` (memplan.spill_limit_bytes); null: unset. */
export function spillLimitBytes(gb) {
  return gb === null || gb === undefined || gb === "" || Number.isNaN(gb) ? null : Math.trunc(gb * 1e9);
}

/** memplan.importance_options: the estimator's settings from a run's params. */
function importanceOptions(p, device) {
  return { batch_size: p.batch_size, seq_len: p.seq_len, scans: p.scans || [], block_size: p.block_size ?? 2, samples: p.samples, device, padded: importancePadded(p) };
}

/** Importance: in memory or streamed layer by layer (`offload`); with "auto" the smaller layout counts,
 * since the worker streams a teacher that does not fit. A streamed pass spills the activation stores
 * the device cannot hold, so only its weights and one batch's working set must fit (device_budget 0). */
export function importanceNeed(spec, p, device = "cpu") {
  const layouts = { never: [false], always: [true] }[p.offload || "auto"] || [false, true];
  const opts = importanceOptions(p, device);
  return Math.min(...layouts.map((streamed) => importanceMemory(spec, { ...opts, streamed, device_budget: streamed ? 0 : undefined }).total));
}

const HOST_RESERVE_BYTES = 2 * 2 ** 30; // memplan.HOST_RESERVE_BYTES

/** The disk tier a worker gives a run without a spill limit, from its entry's `spill_disk` (its spill
 * directory's free space less 2 GiB, or its PRUNESCOPE_SPILL_LIMIT_GB); null: not reported
 * (memcheck.spill_disk_limit). */
export function spillDiskLimit(worker) {
  const limit = worker.spill_disk?.limit_bytes;
  return limit === undefined || limit === null ? null : Math.trunc(limit);
}

const DISK_RESERVE_BYTES = 2 * 2 ** 30; // worker/engine/spill_disk.py's

/** The disk tier a streamed pass gets on `worker`: the spill limit `limit` (null: the worker's own,
 * spillDiskLimit), never more than its spill disk's free space less the reserve, as the worker caps it;
 * null: not reported (memcheck.disk_budget). */
export function diskBudget(worker, limit) {
  if (limit === null || limit === undefined) return spillDiskLimit(worker);
  const free = worker.spill_disk?.free_bytes;
  return free === undefined || free === null ? limit : Math.min(Math.max(0, limit), Math.max(0, Math.trunc(free) - DISK_RESERVE_BYTES));
}

/** The pinned-RAM tier on a CUDA worker: its host's available RAM less the reserve; 0 on a CPU worker
 * or when not reported (memcheck.pinned_budget). */
export function pinnedBudget(worker, device) {
  if (device !== "cuda" || !worker.host_memory) return 0;
  return Math.max(0, usableBytes(worker.host_memory) - HOST_RESERVE_BYTES);
}

/** The layout the worker will run (memcheck.importance_layout): where a streamed pass's activation
 * stores go (`spill`: pinned RAM and disk, bytes; they grow with the samples) and its `passes` over the
 * checkpoint, the stores getting what `capacity` leaves of the device, `hostBudget` of pinned RAM (CUDA)
 * and `diskBudget` of disk (null: not even one pass fits). With "auto" the worker streams when the whole
 * model does not fit its device: `capacity` (bytes; null when unknown). */
export function importanceLayout(spec, p, device = "cpu", capacity = null, diskBudget = null, hostBudget = 0) {
  const opts = importanceOptions(p, device);
  const offload = p.offload || "auto";
  const whole = importanceMemory(spec, { ...opts, streamed: false }).total;
  const streamed = offload === "always" || (offload === "auto" && capacity !== null && whole > capacity); // memplan.importance_streams
  if (!streamed) return { streamed: false, spill: 0, passes: 1 };
  const layered = importanceMemory(spec, { ...opts, streamed: true, device_budget: 0 });
  let passes = 1;
  if (diskBudget !== null) {
    const reserve = device === "cpu" ? HOST_RESERVE_BYTES : 0;
    const room = capacity === null ? 0 : Math.max(0, capacity - layered.total - reserve);
    passes = importanceMemory(spec, { ...opts, streamed: true, device_budget: room, host_budget: hostBudget, disk_budget: diskBudget }).settings.passes;
  }
  return { streamed: true, spill: layered.host_total + layered.disk, passes, store_bytes: layered.settings.store_bytes };
}

/** The layout on one worker: its device memory, pinned RAM (CUDA) and the spill limit `disk` capped at
 * its free spill disk, else the disk tier it reports (memcheck.worker_layout, diskBudget). */
export function workerLayout(spec, p, device, worker, disk = null) {
  return importanceLayout(spec, p, device, usableBytes(worker.memory), diskBudget(worker, disk), pinnedBudget(worker, device));
}

/** {layout, worker} on the first worker where one pass fits, else on the first; `workers`: those that
 * report memory on the job's queue, most usable memory first, ties in GET /workers order
 * (memcheck.best_layout over memcheck.sized_workers). */
export function bestLayout(spec, p, device, workers, disk = null) {
  const sized = workers.filter((w) => w.memory).map((w, i) => ({ w, i, bytes: usableBytes(w.memory) }));
  sized.sort((a, b) => b.bytes - a.bytes || a.i - b.i);
  const layouts = sized.map(({ w }) => ({ layout: workerLayout(spec, p, device, w, disk), worker: w }));
  return layouts.find((l) => l.layout.passes !== null) || layouts[0] || null;
}

/** Smaller batches to suggest, nearest first (memcheck._halved_batches). */
export function halvedBatches(batch) {
  const out = [];
  for (let b = Math.floor(batch / 2); b >= 1; b = Math.floor(b / 2)) out.push({ batch_size: b });
  return out;
}
