// Pure helpers of the search view (no DOM): the Pareto front of candidates over a cost axis, and a
// candidate's architecture in one line (how it cuts, depth / width / mixed, comes from the engine).
import { bytes, compact, flops, ms, rate } from "./format.js";

/** The cost axes a search can report, by the key of a candidate's `costs` (backend/search_results.costs;
 * tests/ui/test_search_axes_js.py holds the keys equal): the chart's title, the switch's name, a value's
 * format, the parallel coordinates' unit and scale, and `minimum` where the budget is a floor and more is
 * better (worker/engine/search/budgets.MINIMUM: decode throughput). */
export const COST_AXES = {
  params: { label: "parameters", name: "parameters", format: compact, unit: "M params", scale: 1e6 },
  memory: { label: "active memory (weights + KV cache)", name: "memory", format: bytes, unit: "MiB", scale: 2 ** 20 },
  latency: { label: "decode latency (measured)", name: "latency", format: ms, unit: "ms / token", scale: 1e-3 },
  prefill: { label: "prefill time (measured)", name: "prefill", format: ms, unit: "prefill ms", scale: 1e-3 },
  throughput: { label: "decode throughput (measured, more is better)", name: "throughput", format: (v) => rate(v), unit: "tok/s", scale: 1, minimum: true },
  // Computed for every candidate, budget or not: FLOPs tell depth from width cuts of equal parameters.
  flops: { label: "forward FLOPs / token", name: "FLOPs", format: flops, unit: "MFLOP/tok", scale: 1e6 },
  // Not a parallel-coordinates axis (`chart: false`): layers x KV groups, both axes there already.
  kv_cache: { label: "KV cache per token of context", name: "KV cache", format: bytes, unit: "KV KiB/tok", scale: 2 ** 10, chart: false },
};

/** What a cost axis's figures are in, from the report's `basis` (worker/engine/search/runner.cost_basis):
 * memory and KV cache in the teacher's stored dtype, measured times in the dtype it was scored in, FLOPs at
 * a context. "" for an axis without one (parameters) or a report from before the basis. */
export function axisBasis(key, basis) {
  if (!basis) return "";
  if ((key === "memory" || key === "kv_cache") && basis.memory_dtype) return `in ${basis.memory_dtype}`;
  if (["latency", "prefill", "throughput"].includes(key) && basis.latency_dtype) return `timed in ${basis.latency_dtype}`;
  if (key === "flops" && basis.flops_context) return `at ${basis.flops_context} tokens of context`;
  return "";
}

/** A candidate's loss against rank 1's: "+0.0123 ± 0.0045" (paired standard error over the held-out
 * windows, worker/engine/search/noise.py), "#1" for rank 1, "" when the report has none. */
export function versusBest(c) {
  if (c.rank === 1) return "#1";
  if (!Number.isFinite(c.loss_diff_vs_best)) return "";
  const diff = `${c.loss_diff_vs_best >= 0 ? "+" : "−"}${Math.abs(c.loss_diff_vs_best).toFixed(4)}`;
  return Number.isFinite(c.loss_diff_se) ? `${diff} ± ${c.loss_diff_se.toFixed(4)}` : diff;
}

/**
 * Indices of the points on the lower-left Pareto front (lower cost and lower loss are better): a point
 * is on it when no other point is at most as costly and at most as lossy while strictly better in one.
 * Returned in increasing cost; points without both numbers are skipped. `more`: a cost where more is
 * better (COST_AXES `minimum`: throughput), so the front runs along its high end, highest first.
 */
export function paretoFront(points, cost = (p) => p.x, loss = (p) => p.y, more = false) {
  const valid = points
    .map((p, i) => ({ i, x: more ? -cost(p) : cost(p), y: loss(p) }))
    .filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
    .sort((a, b) => a.x - b.x || a.y - b.y);
  const front = [];
  let best = Infinity;
  for (const p of valid) {
    // Equal cost: only the first (lowest loss) of the run can be on the front.
    if (p.y < best) {
      front.push(p.i);
      best = p.y;
    }
  }
  return front;
}

/**
 * "6/8 layers · 6/8 heads · MLP 512/768 · hidden 192/256 · drops 3,4": what a candidate keeps of the
 * teacher. Candidates of one size that drop different layers read alike without the last part; it is
 * worded as the bake-off names them (backend/workflows/naming.py `_drops`: "drops 3,4", layer indices).
 */
export function archLine(axes, teacher) {
  const part = (value, total, label, before = false) => {
    if (value === undefined || value === null) return null;
    const text = value === total || total === undefined ? `${value}` : `${value}/${total}`;
    return before ? `${label} ${text}` : `${text} ${label}`;
  };
  return [
    part(axes.num_layers, teacher.num_layers, "layers"),
    part(axes.num_heads, teacher.num_heads, "heads"),
    axes.num_kv_heads !== undefined && axes.num_kv_heads !== teacher.num_kv_heads ? part(axes.num_kv_heads, teacher.num_kv_heads, "KV groups") : null,
    part(axes.intermediate_size, teacher.intermediate_size, "MLP", true),
    part(axes.hidden_size, teacher.hidden_size, "hidden", true),
    axes.drop_layers?.length ? `drops ${[...axes.drop_layers].sort((a, b) => a - b).join(",")}` : null,
  ]
    .filter(Boolean)
    .join(" · ");
}


/**
 * A model's shape as a short label, "24 layers · h 3072 · ffn 9216 · 32 heads" (the knobs a search
 * turns: depth, hidden, MLP, heads), from a spec (a plan's `stats.spec`, a student's `spec`). A width
 * that differs between layers reads "min–max"; KV groups are named when `teacher`'s differ from the
 * model's (a cut that removed whole groups); experts when the model has them. The same function as
 * worker/engine/spec.py `shape_label` (which names a bake-off's candidates on the server):
 * tests/ui/test_shape_label.py holds them equal.
 */
export function shapeLabel(spec, teacher = null) {
  if (!spec) return null;
  const span = (key) => {
    const values = (spec.layers || []).map((l) => l[key]).filter(Number.isFinite);
    if (!values.length) return spec[key];
    const [lo, hi] = [Math.min(...values), Math.max(...values)];
    return lo === hi ? `${lo}` : `${lo}–${hi}`;
  };
  const kv = span("num_kv_heads");
  return [
    `${spec.num_layers} layers`,
    `h ${spec.hidden_size}`,
    `ffn ${span("intermediate_size")}`,
    `${span("num_heads")} heads`,
    teacher && kv !== undefined && String(kv) !== String(teacher.num_kv_heads) ? `${kv} KV` : null,
    spec.num_experts ? `${span("num_experts")} experts` : null,
  ]
    .filter(Boolean)
    .join(" · ");
}
