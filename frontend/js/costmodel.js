// Exact mirror of worker/engine/spec.py's cost model (ArchSpec.param_count, flops_per_token,
// kv_cache_bytes_per_token) so the planner counts a plan on every click without a round trip.
// tests/ui/test_costmodel.py checks these numbers against the Python ones; change both together.
// Works in the browser and in node (no DOM use).

/** Per-layer shapes of a spec as returned by the API (ArchSpec.summary(): `layers` is always a list). */
export function layerShapes(spec) {
  if (Array.isArray(spec.layers) && spec.layers.length) return spec.layers.map((s) => ({ ...s }));
  return Array.from({ length: spec.num_layers }, () => ({
    num_heads: spec.num_heads,
    num_kv_heads: spec.num_kv_heads,
    intermediate_size: spec.intermediate_size,
    num_experts: spec.num_experts || 0,
  }));
}

/** Qwen2-MoE's shared expert (a gated MLP every token runs) and its [1, hidden] gate; 0 without one. */
function sharedExpertParams(spec, d) {
  const fs = spec.shared_expert_intermediate_size || 0;
  return fs ? 3 * d * fs + d : 0;
}

/** Expert FFNs counted in a mixture-of-experts layer: all, or the top-k one token runs (active). */
function expertsUsed(spec, shape, active) {
  const experts = shape.num_experts || 0;
  return active ? Math.min(spec.experts_per_token || 0, experts) : experts;
}

function normParams(spec, hidden) {
  return hidden * (spec.norm_bias ? 2 : 1);
}

export function layerParams(spec, shape, hidden = spec.hidden_size, active = false) {
  const d = hidden;
  const hd = spec.head_dim;
  const h = shape.num_heads;
  const g = shape.num_kv_heads;
  const f = shape.intermediate_size;
  let attn = d * h * hd + 2 * d * g * hd + h * hd * d;
  if (spec.qkv_bias) attn += h * hd + 2 * g * hd;
  if (spec.o_bias) attn += d;
  if (spec.qk_norm) attn += spec.qk_norm_full_width ? (h + g) * hd : 2 * hd;
  let mlp = (spec.mlp_gated ? 3 : 2) * d * f;
  if (spec.mlp_bias) mlp += (spec.mlp_gated ? 2 : 1) * f + d;
  // Mixture of experts: one gated FFN per expert plus the router [experts, hidden].
  if (shape.num_experts) mlp = mlp * expertsUsed(spec, shape, active) + shape.num_experts * d + sharedExpertParams(spec, d);
  return attn + mlp + (spec.layer_norms ?? 2) * normParams(spec, d);
}

export function embeddingParams(spec, hidden = spec.hidden_size) {
  const embed = spec.vocab_size * hidden + (spec.position_embeddings || 0) * hidden;
  return spec.tie_word_embeddings ? embed : embed + spec.vocab_size * hidden;
}

export function paramCount(spec, hidden = spec.hidden_size, layers = layerShapes(spec)) {
  let body = normParams(spec, hidden);
  let active = normParams(spec, hidden);
  for (const s of layers) {
    body += layerParams(spec, s, hidden);
    active += layerParams(spec, s, hidden, true);
  }
  const embedding = embeddingParams(spec, hidden);
  return { total: body + embedding, non_embedding: body, embedding, active: active + embedding };
}

export function flopsPerToken(spec, context = flopsContext(spec), hidden = spec.hidden_size, layers = layerShapes(spec)) {
  const d = hidden;
  const hd = spec.head_dim;
  let matmul = 0;
  for (const s of layers) {
    matmul += d * s.num_heads * hd * 2 + 2 * d * s.num_kv_heads * hd;
    let mlp = (spec.mlp_gated ? 3 : 2) * d * s.intermediate_size;
    if (s.num_experts) mlp = mlp * expertsUsed(spec, s, true) + s.num_experts * d + sharedExpertParams(spec, d); // router + top-k (+ shared) experts
    matmul += mlp;
    matmul += 2 * context * s.num_heads * hd; // QK^T and AV against the whole context
  }
  matmul += spec.vocab_size * d; // LM head
  return 2 * matmul;
}

export function kvCacheBytesPerToken(spec, layers = layerShapes(spec), bytesPerValue = 2) {
  let total = 0;
  for (const s of layers) total += 2 * s.num_kv_heads * spec.head_dim * bytesPerValue;
  return total;
}

// ---- plans ---------------------------------------------------------------------------------

const listFor = (dict, layer) => (dict && (dict[layer] || dict[String(layer)])) || [];

/** Shape after a PrunePlan: {hidden, layers: [LayerShape]} (dropped layers removed). */
export function resultingShape(spec, plan) {
  const drop = new Set(plan.drop_layers || []);
  const layers = [];
  layerShapes(spec).forEach((s, l) => {
    if (drop.has(l)) return;
    const perGroup = s.num_heads / s.num_kv_heads;
    const groups = new Set(listFor(plan.remove_kv_groups, l));
    const heads = new Set(listFor(plan.remove_heads, l));
    for (const g of groups) for (let i = 0; i < perGroup; i++) heads.add(g * perGroup + i);
    // A group whose query heads are all removed loses its K/V projection too (as in worker/engine/plan/shape.py).
    for (let g = 0; g < s.num_kv_heads; g++) {
      let all = true;
      for (let i = 0; i < perGroup && all; i++) all = heads.has(g * perGroup + i);
      if (all) groups.add(g);
    }
    let intermediate = s.intermediate_size - new Set(listFor(plan.remove_neurons, l)).size;
    const removedExperts = new Set(listFor(plan.remove_experts, l));
    if (s.num_experts) {
      // Every kept expert keeps the same width (worker/engine/plan/validate.py validates it); the narrowest is that width.
      const cuts = (plan.remove_expert_neurons && (plan.remove_expert_neurons[l] || plan.remove_expert_neurons[String(l)])) || {};
      intermediate = s.intermediate_size;
      for (let e = 0; e < s.num_experts; e++) {
        if (!removedExperts.has(e)) intermediate = Math.min(intermediate, s.intermediate_size - new Set(listFor(cuts, e)).size);
      }
    }
    layers.push({
      num_heads: s.num_heads - heads.size,
      num_kv_heads: s.num_kv_heads - groups.size,
      intermediate_size: intermediate,
      num_experts: (s.num_experts || 0) - (s.num_experts ? removedExperts.size : 0),
    });
  });
  const hidden = spec.hidden_size - new Set(plan.remove_hidden || []).size;
  return { hidden, layers };
}

/** The positions a spec knows of (worker.engine.spec.spec_max_positions): `max_positions`, else the rows
 * of a learned position table; 0 when unknown. */
export function maxPositions(spec) {
  return Number(spec?.max_positions || spec?.position_embeddings || 0);
}

/** A default sequence length / context `n` the model can take: at most its positions, since the server
 * refuses longer ones (backend/limits.check_positions); `n` when they are unknown (audit 24). */
export function fitPositions(spec, n) {
  const limit = maxPositions(spec);
  return limit ? Math.min(n, limit) : n;
}

/** The context FLOPs/token are counted at unless one is given: FLOPS_CONTEXT, or the model's positions when
 * fewer (spec.py ArchSpec.flops_context, the same rule). */
export const FLOPS_CONTEXT = 2048;
export function flopsContext(spec) {
  return fitPositions(spec, FLOPS_CONTEXT);
}

/** Everything the planner's live summary shows, computed locally (FLOPs at `context` tokens). */
export function planStats(spec, plan, context = flopsContext(spec)) {
  const teacher = paramCount(spec);
  const { hidden, layers } = resultingShape(spec, plan);
  const counts = paramCount(spec, hidden, layers);
  const uniform = layers.every(
    (s) =>
      s.num_heads === layers[0].num_heads &&
      s.num_kv_heads === layers[0].num_kv_heads &&
      s.intermediate_size === layers[0].intermediate_size &&
      s.num_experts === layers[0].num_experts,
  );
  return {
    num_layers: layers.length,
    hidden_size: hidden,
    layers,
    uniform,
    params_total: counts.total,
    params_non_embedding: counts.non_embedding,
    params_embedding: counts.embedding,
    params_active: counts.active,
    teacher_params_active: teacher.active,
    fraction_of_teacher: counts.total / teacher.total,
    teacher_params_total: teacher.total,
    teacher_params_non_embedding: teacher.non_embedding,
    flops_per_token: flopsPerToken(spec, context, hidden, layers),
    flops_context: context,
    teacher_flops_per_token: flopsPerToken(spec, context),
    kv_cache_bytes_per_token: kvCacheBytesPerToken(spec, layers),
    teacher_kv_cache_bytes_per_token: kvCacheBytesPerToken(spec),
  };
}

/** Local structural checks that need no scores, shown while /plans/validate answers (whose messages then
 * replace them) or when it cannot. */
export function localMessages(spec, plan) {
  const out = [];
  const { hidden, layers } = resultingShape(spec, plan);
  if (layers.length === 0) out.push({ level: "error", field: "drop_layers", text: "every layer is dropped" });
  if (hidden <= 0) out.push({ level: "error", field: "remove_hidden", text: "every hidden channel is removed" });
  layers.forEach((s, i) => {
    if (s.num_heads <= 0) out.push({ level: "error", field: "remove_heads", text: `a kept layer (#${i}) has no attention heads left` });
    const k = spec.experts_per_token || 0;
    if (s.num_experts && s.num_experts < k) out.push({ level: "error", field: "remove_experts", text: `a kept layer (#${i}) keeps ${s.num_experts} experts, fewer than top-k=${k}` });
    if (s.intermediate_size <= 0) out.push({ level: "error", field: "remove_neurons", text: `a kept layer (#${i}) has no MLP neurons left` });
  });
  return out;
}
