// The depth-vs-width study's two students (no DOM): a depth target (layers dropped) and a Minitron-style
// width target (hidden and MLP shrunk together), each the largest within a parameter budget, in sizes the
// server's fill accepts (worker/engine/plan/shape.py's alignment rules, held equal by tests/ui/test_studymath.py).
// The budget counts non-embedding parameters by default, as the reference study and Minitron compare: on a
// model whose embeddings are a quarter of it, equal TOTAL parameters pair a depth student with far fewer
// transformer parameters (and FLOPs) than the width one (audit finding 2).
import { flopsContext, flopsPerToken, layerShapes, paramCount } from "./costmodel.js";
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

/** What a study budget can count: ArchSpec.param_count's keys (plan_stats' params_<key>). */
export const BUDGET_COUNTS = { non_embedding: "non-embedding params", total: "total params" };
/** Two students further apart than this share of the teacher's non-embedding parameters are not "one size". */
export const STUDY_SIZE_GAP = 0.02;

function countOf(count) {
  if (!(count in BUDGET_COUNTS)) throw new Error(`unknown budget count ${count}: use ${Object.keys(BUDGET_COUNTS).join(" or ")}`);
  return count;
}

/** Layer shapes and hidden size of a target: the first `num_layers` layers, at `intermediate_size` and `hidden_size`. */
function targetShape(spec, target) {
  const layers = layerShapes(spec)
    .slice(0, target.num_layers ?? spec.num_layers)
    .map((s) => (target.intermediate_size === undefined ? s : { ...s, intermediate_size: target.intermediate_size }));
  return { hidden: target.hidden_size ?? spec.hidden_size, layers };
}

/** Parameters of a target, counted as `count` (total or non_embedding). */
export function targetParams(spec, target, count = "total") {
  const { hidden, layers } = targetShape(spec, target);
  return paramCount(spec, hidden, layers)[countOf(count)];
}

/** A target's size next to the teacher's: parameters (total, non-embedding) and FLOPs per token at
 * `context` (plan_stats': 2048, or the teacher's positions when fewer), each with its share of the teacher's. */
export function targetSizes(spec, target, context = flopsContext(spec)) {
  const { hidden, layers } = targetShape(spec, target);
  const mine = paramCount(spec, hidden, layers);
  const teacher = paramCount(spec);
  const flops = flopsPerToken(spec, context, hidden, layers);
  return {
    total: mine.total,
    non_embedding: mine.non_embedding,
    flops,
    share_total: mine.total / teacher.total,
    share_non_embedding: mine.non_embedding / teacher.non_embedding,
    share_flops: flops / flopsPerToken(spec, context),
  };
}

/** Largest layer count whose parameter count (as `count`) fits the budget (everything else kept). */
export function depthTarget(spec, budget, count = "total") {
  for (let n = spec.num_layers; n >= 1; n--) {
    if (targetParams(spec, { num_layers: n }, count) <= budget) return { num_layers: n };
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
export function widthTarget(spec, budget, count = "total") {
  const step = (dim) => (dim >= 2048 ? 64 : dim >= 256 ? 8 : 1);
  const hiddenStep = lcm(step(spec.hidden_size), hiddenAlignment(spec));
  const mlpStep = lcm(step(spec.intermediate_size), expertAlignment(spec));
  const round = (x, unit) => Math.max(unit, Math.floor(x / unit) * unit);
  for (let r = 1; r > 0.02; r -= 0.0025) {
    const target = { hidden_size: round(spec.hidden_size * r, hiddenStep), intermediate_size: round(spec.intermediate_size * r, mlpStep) };
    if (targetParams(spec, target, count) <= budget) return target;
  }
  return null;
}

/** The study at `pct` % of the teacher's `count` parameters: the budget, both targets (null where none
 * fits) and, when both exist, how far apart they land in non-embedding share (depth moves in whole layers). */
export function studyTargets(spec, pct, count = "non_embedding") {
  const budget = (paramCount(spec)[countOf(count)] * pct) / 100;
  const depth = depthTarget(spec, budget, count);
  const width = widthTarget(spec, budget, count);
  const gap = depth && width ? targetSizes(spec, width).share_non_embedding - targetSizes(spec, depth).share_non_embedding : null;
  return { budget, count, depth, width, gap };
}
