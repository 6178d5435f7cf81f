// The depth-vs-width study's two students (no DOM): a depth target (layers dropped) and a Minitron-style
// width target (hidden and MLP shrunk together), each the largest within a parameter budget, in sizes the
// server's fill accepts (worker/engine/plan/shape.py's alignment rules, held equal by tests/ui/test_studymath.py).
import { layerShapes, paramCount } from "./costmodel.js";
import { dtypeBytes } from "./memplan.js";

// plan.shape.HEAD_ALIGNED_FAMILIES: configs that validate hidden_size % num_attention_heads == 0 even with an
// explicit head_dim.
const HEAD_ALIGNED_FAMILIES = ["llama", "gemma2", "gemma3"];

/** plan.expert_alignment: what expert widths (and a MoE model's hidden size) must be a multiple of
 * (grouped_mm needs rows of 16 bytes); 1 for a dense model. */
export function expertAlignment(spec) {
  if (!layerShapes(spec).some((s) => s.num_experts)) return 1;
  return Math.max(1, Math.floor(16 / dtypeBytes(spec.dtype || "float32")));
}

/** plan.hidden_alignment: what a pruned hidden size must be a multiple of for the family's config. */
export function hiddenAlignment(spec) {
  if (spec.family === "gpt2") return spec.head_dim;
  if (HEAD_ALIGNED_FAMILIES.includes(spec.family)) return Math.max(...layerShapes(spec).map((s) => s.num_heads));
  return expertAlignment(spec);
}

/** Parameters of a target: the first `num_layers` layers, at `intermediate_size` and `hidden_size`. */
export function targetParams(spec, target) {
  const shapes = layerShapes(spec)
    .slice(0, target.num_layers ?? spec.num_layers)
    .map((s) => (target.intermediate_size === undefined ? s : { ...s, intermediate_size: target.intermediate_size }));
  return paramCount(spec, target.hidden_size ?? spec.hidden_size, shapes).total;
}

/** Largest layer count whose parameter count fits the budget (everything else kept). */
export function depthTarget(spec, budget) {
  for (let n = spec.num_layers; n >= 1; n--) {
    if (targetParams(spec, { num_layers: n }) <= budget) return { num_layers: n };
  }
  return null;
}

const gcd = (a, b) => (b ? gcd(b, a % b) : a);
const lcm = (a, b) => (a * b) / gcd(a, b);

/**
 * Minitron-style width target: keep layers and heads, shrink hidden and MLP by one common ratio until the
 * parameter count fits the budget, rounded down to hardware-friendly multiples (64 on real models, exact
 * sizes on toy ones where 8 is a big step) that are also multiples of what the family requires.
 */
export function widthTarget(spec, budget) {
  const step = (dim) => (dim >= 2048 ? 64 : dim >= 256 ? 8 : 1);
  const hiddenStep = lcm(step(spec.hidden_size), hiddenAlignment(spec));
  const mlpStep = lcm(step(spec.intermediate_size), expertAlignment(spec));
  const round = (x, unit) => Math.max(unit, Math.floor(x / unit) * unit);
  for (let r = 1; r > 0.02; r -= 0.0025) {
    const target = { hidden_size: round(spec.hidden_size * r, hiddenStep), intermediate_size: round(spec.intermediate_size * r, mlpStep) };
    if (targetParams(spec, target) <= budget) return target;
  }
  return null;
}
