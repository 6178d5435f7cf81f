// Mirror of worker/engine/memplan/ (the memory planner), so every job form shows its memory need as the
// user types. tests/ui/test_memplan.py checks these numbers against the Python ones; change both together.
// Works in the browser and in node (no DOM use).
import { layerParams, layerShapes, paramCount } from "./costmodel.js";
import { bytes } from "./format.js";

export const GiB = 2 ** 30;
const DTYPE_BYTES = { float32: 4, bfloat16: 2, float16: 2, float64: 8 };
const CHUNK_LOGITS = 2 ** 24;
const CHUNK_LOGITS_CUDA = 2 ** 28;
const LOSS_CHUNK_BUFFERS_KD = 8;
const LOSS_CHUNK_BUFFERS_CE = 6;
const NLL_CHUNK_BUFFERS = 2;
const TRANSIENT_FORWARD = 3;
const TRANSIENT_BACKWARD = 6;
const CUDA_RESERVE_FRACTION = 0.05;
const CUDA_RESERVE_BYTES = 512 * 2 ** 20;
const NUM_SUMS = 4;
// Families without an SDPA path (eager attention) and with fused q/k/v and gate/up projections (as memplan/units.py).
const EAGER_FAMILIES = ["gemma2"];
const FUSED_FAMILIES = ["phi3"];
// Families that soft-cap the final logits: one more [chunk, V] buffer in the NLL (as memplan.nll_chunk_buffers).
const SOFTCAP_FAMILIES = ["gemma2"];
const nllChunkBuffers = (spec) => NLL_CHUNK_BUFFERS + (SOFTCAP_FAMILIES.includes(spec.family) ? 1 : 0);
export const eagerAttention = (spec) => EAGER_FAMILIES.includes(spec.family);

export function dtypeBytes(dtype) {
  const b = DTYPE_BYTES[dtype];
  if (!b) throw new Error(`unknown dtype ${dtype}`);
  return b;
}

export const logitBudget = (device = "cpu") => (String(device).startsWith("cuda") ? CHUNK_LOGITS_CUDA : CHUNK_LOGITS);
export const autoChunkTokens = (vocab, device = "cpu") =>
  Math.max(64, Math.floor(logitBudget(device) / Math.max(1, vocab)));

// As memplan.norm_saved_bytes: float32 input, inverse RMS, the normalised input (`normalised` bytes,
// default act), and the act-byte output the next linear saves when one follows.
const normSavedBytes = (width, act, normalised = null, feedsLinear = true) =>
  4 * width + 4 + (normalised ?? act) * width + (feedsLinear ? act * width : 0);

// As memplan._norm_layout: "pre" (Llama-style), "sandwich" (Gemma 2 / 3) or "post" (OLMo 2).
const normLayout = (spec) => ((spec.layer_norms ?? 2) === 4 ? "sandwich" : spec.family === "olmo2" ? "post" : "pre");

/** Layers whose SDPA attention gets a mask without padding: the sliding-window ones once the sequence
 * reaches the window (as memplan.sliding_masked_layers). */
export function slidingMaskedLayers(spec, seqLen) {
  const window = spec.sliding_window || 0;
  return window && seqLen >= window && !eagerAttention(spec) ? spec.sliding_layers || 0 : 0;
}

export function layerSavedBytesPerToken(spec, shape, act, seqLen = 0, masked = false) {
  const d = spec.hidden_size;
  const { num_heads: h, num_kv_heads: g, intermediate_size: f } = shape;
  const hd = spec.head_dim;
  const layout = normLayout(spec);
  const f32Norms = layout !== "pre" ? 4 : null;
  const eager = eagerAttention(spec);
  const kv = eager || masked ? h : g; // repeated to every head by the eager kernel, or with a mask
  let attn = act * (2 * h * hd + 2 * kv * hd);
  // Eager attention saves the soft-capped scores, their float32 softmax and its cast (8 bytes per score);
  // SDPA a float32 log-sum-exp per head, and with a mask its additive copy (as memplan.layer_saved_bytes_per_token).
  attn += eager ? (act + 4 + (act !== 4 ? act : 0)) * h * seqLen : 4 * h + (masked ? act * seqLen : 0);
  if (FUSED_FAMILIES.includes(spec.family)) attn += act * ((h + g) * hd + h * hd);
  if (spec.qk_norm) {
    if (spec.qk_norm_full_width) attn += normSavedBytes(h * hd, act, f32Norms, false) + normSavedBytes(g * hd, act, f32Norms, false);
    else attn += (h + g) * normSavedBytes(hd, act, f32Norms, false);
  }
  const mlp = shape.num_experts ? moeSavedBytesPerToken(spec, shape, act, d) : 4 * act * f;
  let norms;
  if (layout === "pre") norms = 2 * normSavedBytes(d, act);
  else if (layout === "sandwich") norms = 2 * normSavedBytes(d, act, 4) + 2 * normSavedBytes(d, act, 4, false);
  else norms = 2 * normSavedBytes(d, act, 4, false) + 2 * act * d;
  return norms + attn + mlp;
}

/** A mixture-of-experts MLP's saved activations per token (as memplan.moe_saved_bytes_per_token). */
function moeSavedBytesPerToken(spec, shape, act, hidden) {
  const k = Math.min(spec.experts_per_token || 0, shape.num_experts);
  const weight = spec.family === "mixtral" ? 4 : act;
  const routed = k * (4 * act * shape.intermediate_size + 2 * act * hidden + weight);
  const router = 4 * shape.num_experts + 4 * (k + 1);
  const fs = spec.shared_expert_intermediate_size || 0;
  const shared = fs ? 4 * act * fs + act * hidden + act : 0;
  return routed + router + shared;
}

export function savedBytesPerToken(spec, act, checkpointing = false, seqLen = 0) {
  const d = spec.hidden_size;
  const final = normSavedBytes(d, act, normLayout(spec) !== "pre" ? 4 : null, false);
  const shapes = layerShapes(spec);
  if (checkpointing) return shapes.length * act * d + final;
  return layersSavedBytesPerToken(spec, act, seqLen).reduce((a, b) => a + b, 0) + final;
}

/** Each layer's saved bytes per token; past the window the masked layers are those that save the most
 * (as memplan.layers_saved_bytes_per_token). */
export function layersSavedBytesPerToken(spec, act, seqLen = 0) {
  const shapes = layerShapes(spec);
  const plain = shapes.map((s) => layerSavedBytesPerToken(spec, s, act, seqLen));
  const masked = shapes.map((s) => layerSavedBytesPerToken(spec, s, act, seqLen, true));
  const order = plain.map((_, i) => i).sort((a, b) => plain[a] - masked[a] - (plain[b] - masked[b]));
  const chosen = new Set(order.slice(0, slidingMaskedLayers(spec, seqLen)));
  return plain.map((p, i) => (chosen.has(i) ? masked[i] : p));
}

function widest(spec) {
  let best = null;
  let bestBytes = -1;
  for (const s of layerShapes(spec)) {
    const b = layerSavedBytesPerToken(spec, s, 4);
    if (b > bestBytes) [best, bestBytes] = [s, b]; // the first of equals, as Python's max()
  }
  return best;
}

function transientBytesPerToken(spec, act, backward) {
  const s = widest(spec);
  let width = Math.max(s.intermediate_size, spec.hidden_size, s.num_heads * spec.head_dim);
  if (s.num_experts) width = Math.max(width, Math.min(spec.experts_per_token || 0, s.num_experts) * Math.max(s.intermediate_size, spec.hidden_size));
  // A fused gate / up projection's whole [tokens, 2 F] output lives until its halves' product is made.
  const fused = FUSED_FAMILIES.includes(spec.family) && !backward ? act * s.intermediate_size : 0;
  return (backward ? TRANSIENT_BACKWARD : TRANSIENT_FORWARD) * act * width + fused;
}

const layerWeightBytes = (spec, w) => Math.max(...layerShapes(spec).map((s) => layerParams(spec, s))) * w;

function result(parts, settings) {
  const out = {};
  let total = 0;
  for (const [k, v] of Object.entries(parts)) {
    out[k] = Math.trunc(v);
    total += out[k];
  }
  return { total, parts: out, settings };
}

/** Peak bytes per device of one distillation step (teacher null: the CE-only baseline). */
export function distillMemory(student, teacher, opts) {
  const { batch_size: batch, seq_len: seqLen } = opts;
  const weightsDtype = opts.weights_dtype ?? "float32";
  const checkpointing = !!opts.gradient_checkpointing;
  const device = opts.device ?? "cpu";
  const autocast = opts.autocast_bf16 ?? true;
  const numGpus = opts.num_gpus ?? 1;
  const cuda = device.startsWith("cuda");
  const w = dtypeBytes(weightsDtype);
  const act = (cuda && autocast) || w === 2 ? 2 : 4;
  const n = Math.ceil(batch / numGpus) * seqLen;
  const pS = paramCount(student).total;
  const weights = (pS * w) / numGpus;
  const grads = (pS * w) / numGpus;
  const optimizer = (2 * pS * w) / numGpus;
  const teacherBytes = teacher ? (paramCount(teacher).total * w) / numGpus : 0;
  let gather = 0;
  if (numGpus > 1) {
    const models = teacher ? [student, teacher] : [student];
    const wide = models.reduce((a, b) => (b.hidden_size > a.hidden_size ? b : a));
    gather = 2 * layerWeightBytes(wide, w);
  }
  const autocastCache = cuda && autocast && w === 4 ? (pS * 2) / numGpus : 0;
  const saved = n * savedBytesPerToken(student, act, checkpointing, seqLen);
  const recompute = checkpointing ? n * Math.max(...layersSavedBytesPerToken(student, act, seqLen)) : 0;
  const d = student.hidden_size;
  const v = student.vocab_size;
  const chunk = Math.min(opts.chunk_tokens || autoChunkTokens(v, device), n);
  const lossKept = n * d * act + v * d * 4;
  const tHidden = teacher ? n * teacher.hidden_size * 4 : 0;
  const buffers = teacher ? LOSS_CHUNK_BUFFERS_KD : LOSS_CHUNK_BUFFERS_CE;
  const lossTransient = 2 * n * d * act + tHidden + buffers * chunk * v * 4;
  const teacherForward = teacher
    ? n * teacher.hidden_size * 4 + forwardWorkingBytes(teacher, Math.floor(n / seqLen), seqLen, act, device)
    : 0;
  const forwardPeak = saved + lossKept + Math.max(lossTransient, teacherForward);
  const backwardPeak = saved + recompute + lossKept + n * transientBytesPerToken(student, act, true);
  const activations = Math.max(forwardPeak, backwardPeak);
  const stepExtra = grads + (cuda ? optimizer / 2 : 0);
  const peakDynamic = Math.max(activations + v * d * w, stepExtra);
  return result(
    { weights, optimizer, teacher: teacherBytes, gather_buffer: gather, autocast_cache: autocastCache, activations_and_grads: peakDynamic },
    { batch_size: batch, seq_len: seqLen, weights_dtype: weightsDtype, gradient_checkpointing: checkpointing, device: cuda ? "cuda" : "cpu", num_gpus: numGpus, tokens_per_device: n, activations_saved: saved },
  );
}

/** A distillation with teacher correction over its two phases, `total` the larger (as
 * memplan.teacher_correction_memory): the teacher trained on CE beside the whole loaded teacher (and on N
 * ranks the whole corrected copy) and the student's weights; then the step with the loaded teacher kept. */
export function teacherCorrectionMemory(student, teacher, opts) {
  const numGpus = opts.num_gpus ?? 1;
  const w = dtypeBytes(opts.weights_dtype ?? "float32");
  const whole = paramCount(teacher).total * w;
  const parts = {
    teacher: whole,
    corrected_teacher: numGpus > 1 ? whole : 0,
    student_weights: paramCount(student).total * w,
    correction_step: distillMemory(teacher, null, opts).total,
  };
  const step = distillMemory(student, teacher, opts);
  const out = result(parts, { ...step.settings });
  for (const k of ["tokens_per_device", "activations_saved"]) delete out.settings[k];
  const correction = out.total;
  const distillation = step.total + Math.trunc(whole);
  out.settings.phases = { correction, distillation };
  out.total = Math.max(correction, distillation);
  return out;
}

const DEFAULT_SCANS = ["bi", "drop", "block"];

/** k of each loss scan (drop: 1, block: block_size), each once (as memplan.loss_scan_sizes). */
export function lossScanSizes(scans, blockSize) {
  const ks = [...(scans.includes("drop") ? [1] : []), ...(scans.includes("block") ? [blockSize] : [])];
  return [...new Set(ks)];
}

/** Activation stores a layer-streamed pass has open by its last layer (as memplan.streamed_store_count). */
export function streamedStoreCount(numLayers, scans = DEFAULT_SCANS, blockSize = 2) {
  const angular = scans.includes("angular") ? blockSize : 0;
  return 1 + angular + lossScanSizes(scans, blockSize).reduce((sum, k) => sum + numLayers - k + 1, 0);
}

/** Stores the tiers hold at once (as memplan.store_capacity); null: no limit. */
export function storeCapacity(storeBytes, deviceBudget, hostBudget = 0, cuda = false, diskBudget = null) {
  if (deviceBudget === null || deviceBudget === undefined || diskBudget === null || diskBudget === undefined || storeBytes <= 0) return null;
  return [deviceBudget, cuda ? hostBudget : 0, diskBudget].reduce((sum, b) => sum + Math.floor(Math.max(0, b) / storeBytes), 0);
}

/** Passes over the checkpoint when the tiers hold `capacity` stores; null: not even one fits (as memplan.streamed_passes). */
export function streamedPasses(numLayers, scans = DEFAULT_SCANS, blockSize = 2, capacity = null) {
  const angular = scans.includes("angular") ? blockSize : 0;
  const cuts = lossScanSizes(scans, blockSize).reduce((sum, k) => sum + numLayers - k + 1, 0);
  if (capacity === null || capacity >= 1 + angular + cuts) return 1;
  const first = capacity - 1 - angular;
  const later = capacity - 1;
  if (first < 0 || later < 1) return null;
  return 1 + Math.ceil((cuts - first) / later);
}

/** Stores per tier under the activation store's first-fit rule (as memplan.store_placement). */
export function storePlacement(count, storeBytes, deviceBudget, hostBudget = 0, cuda = false) {
  if (deviceBudget === null || deviceBudget === undefined || storeBytes <= 0) return { device: count, host: 0, disk: 0 };
  const device = Math.min(count, Math.floor(Math.max(0, deviceBudget) / storeBytes));
  const host = cuda ? Math.min(count - device, Math.floor(Math.max(0, hostBudget) / storeBytes)) : 0;
  return { device, host, disk: count - device - host };
}

/** SDPA's math-kernel scores and softmax on CUDA with float32 activations and grouped-query attention
 * without a padding mask (no fused kernel takes that call; as memplan.math_attention_bytes). */
export function mathAttentionBytes(spec, batch, seqLen, actBytes, device, padded = false) {
  const shapes = layerShapes(spec);
  if (!String(device).startsWith("cuda") || actBytes !== 4 || padded || eagerAttention(spec)) return 0;
  if (!shapes.some((s) => s.num_kv_heads < s.num_heads)) return 0;
  return 2 * batch * Math.max(...shapes.map((s) => s.num_heads)) * seqLen * seqLen * 4;
}

const sumValues = (obj) => Object.values(obj).reduce((a, b) => a + b, 0);

/** A layer's attention buffers while it runs: eager or math-kernel scores, keys and values repeated to
 * every head, a padding mask; only the non-zero parts (as memplan.attention_bytes). */
export function attentionBytes(spec, batch, seqLen, actBytes, device = "cpu", padded = false) {
  const shapes = layerShapes(spec);
  const h = Math.max(...shapes.map((s) => s.num_heads));
  const grouped = shapes.some((s) => s.num_kv_heads < s.num_heads);
  const eager = eagerAttention(spec);
  const sliding = slidingMaskedLayers(spec, seqLen) > 0;
  const masked = padded || sliding;
  // The math kernel runs where there is no mask: every layer unless padded, the global ones if sliding.
  const everyLayerMasked = padded || (sliding && spec.sliding_layers >= spec.num_layers);
  const mathScores = mathAttentionBytes(spec, batch, seqLen, actBytes, device, everyLayerMasked);
  const out = {};
  if (eager) out.attention_scores = batch * h * seqLen * seqLen * (actBytes + 4) + 2 * batch * seqLen * seqLen * actBytes;
  else if (mathScores) out.attention_scores = mathScores;
  if (grouped && (eager || mathScores || masked)) out.repeated_kv = 2 * batch * h * seqLen * spec.head_dim * actBytes;
  // (without padding the boolean sliding-window mask is one [1, 1, S, S] broadcast over the batch)
  if (masked && !eager) out.attention_mask = (padded ? batch : 1) * seqLen * seqLen + batch * seqLen * seqLen * actBytes;
  return out;
}

/** A layer's forward working set: the MLP's transient or the attention's (q, k, v, output per token and
 * its buffers), whichever is larger (as memplan.forward_working_bytes). */
export function forwardWorkingBytes(spec, batch, seqLen, act, device = "cpu", padded = false) {
  const n = batch * seqLen;
  const hd = spec.head_dim;
  const qkvo = Math.max(...layerShapes(spec).map((s) => act * (2 * s.num_heads * hd + 2 * s.num_kv_heads * hd)));
  const attention = n * qkvo + sumValues(attentionBytes(spec, batch, seqLen, act, device, padded));
  return Math.max(n * transientBytesPerToken(spec, act, false), attention);
}

/** Peak bytes of the hooked importance pass (in memory, or streamed layer by layer): `total` on the
 * device, `host_total` pinned RAM of spilled stores, `disk` the rest (as memplan.importance_memory). */
export function importanceMemory(spec, opts) {
  const { batch_size: batch, seq_len: seqLen } = opts;
  const blockSize = opts.block_size ?? 2;
  let lossScans = opts.loss_scans ?? true;
  let scans = opts.scans;
  if (scans === null || scans === undefined) scans = lossScans ? DEFAULT_SCANS : ["bi"];
  else lossScans = lossScanSizes(scans, blockSize).length > 0;
  const streamed = !!opts.streamed;
  const device = opts.device ?? "cpu";
  const w = dtypeBytes(opts.weights_dtype || spec.dtype || "float32");
  const n = batch * seqLen;
  const d = spec.hidden_size;
  const v = spec.vocab_size;
  const shapes = layerShapes(spec);
  const L = shapes.length;
  const weights = streamed ? paramCount(spec).embedding * w : paramCount(spec).total * w;
  // Scored MLP units: neurons, or per expert 3 expert axes + its FFN channels (as memplan._importance_mlp_units).
  const mlpUnits = (s) => (s.num_experts ? s.num_experts * (3 + s.intermediate_size) : s.intermediate_size);
  const units = shapes.reduce((sum, s) => sum + s.num_heads + mlpUnits(s) + 1, 0) + (2 * L + 1) * d;
  const parts = {
    weights,
    running_sums: 2 * NUM_SUMS * units * 4 + 2 * batch * units * 4,
    head_norms: n * L * Math.max(...shapes.map((s) => s.num_heads)) * 4,
    activations: n * 2 * d * w + forwardWorkingBytes(spec, batch, seqLen, w, device, !!opts.padded),
  };
  const experts = Math.max(...shapes.map((s) => s.num_experts || 0));
  if (experts) parts.router_buffers = 3 * n * experts * 4;
  if (lossScans) {
    if (!streamed) parts.layer_inputs = n * L * d * w;
    parts.logits = nllChunkBuffers(spec) * Math.min(autoChunkTokens(v, device), n) * v * 4;
  }
  const settings = { batch_size: batch, seq_len: seqLen, streamed, device, loss_scans: lossScans };
  let host = 0;
  let disk = 0;
  // The layers and the head never overlap: the larger phase is the peak (as memplan/importance.py); a streamed pass
  // holds two layers' weights in its layer loop on CPU, one on CUDA (memplan.streamed_layer_copies).
  const layerCopies = device.startsWith("cuda") ? 1 : 2;
  const layerPhase =
    (streamed ? layerCopies * layerWeightBytes(spec, w) : 0) + parts.activations + (parts.router_buffers ?? 0);
  const headPhase = parts.logits ?? 0;
  delete parts.activations;
  delete parts.router_buffers;
  delete parts.logits;
  parts.working = Math.max(layerPhase, headPhase);
  settings.phases = { layer: layerPhase, head: headPhase };
  if (streamed) {
    const storeBytes = (opts.samples || batch) * seqLen * d * w;
    const cuda = device.startsWith("cuda");
    const capacity = storeCapacity(storeBytes, opts.device_budget, opts.host_budget ?? 0, cuda, opts.disk_budget ?? null);
    const passes = streamedPasses(L, scans, blockSize, capacity);
    const count = passes !== null && passes > 1 ? capacity : streamedStoreCount(L, scans, blockSize);
    const tiers = storePlacement(count, storeBytes, opts.device_budget, opts.host_budget ?? 0, cuda);
    parts.stores = tiers.device * storeBytes;
    host = tiers.host * storeBytes;
    disk = tiers.disk * storeBytes;
    Object.assign(settings, { store_bytes: storeBytes, stores: tiers, passes });
  }
  return { ...result(parts, settings), host_total: host, disk };
}

/** Peak bytes of perplexity / lm-eval / the throughput benchmark. */
export function evaluationMemory(spec, opts) {
  const { batch_size: batch, seq_len: seqLen } = opts;
  const newTokens = opts.new_tokens ?? 0;
  const w = dtypeBytes(opts.weights_dtype || spec.dtype || "float32");
  const n = batch * seqLen;
  let kvPerToken = 0;
  for (const s of layerShapes(spec)) kvPerToken += 2 * s.num_kv_heads * spec.head_dim * w;
  const device = opts.device ?? "cpu";
  // The layers and the head never overlap: the larger phase is the peak (as memplan.evaluation_memory).
  const layerPhase = n * 2 * spec.hidden_size * w + forwardWorkingBytes(spec, batch, seqLen, w, device, !!opts.padded);
  const headPhase = nllChunkBuffers(spec) * Math.min(autoChunkTokens(spec.vocab_size, device), n) * spec.vocab_size * 4;
  const parts = {
    weights: paramCount(spec).total * w,
    kv_cache: newTokens ? batch * (seqLen + newTokens) * kvPerToken : 0,
    working: Math.max(layerPhase, headPhase),
  };
  return result(parts, { batch_size: batch, seq_len: seqLen, new_tokens: newTokens, device, phases: { layer: layerPhase, head: headPhase } });
}

/** Elements of the largest tensor of each kind (as memplan.tensor_numels): the unit out-of-core surgery reads. */
export function tensorNumels(spec) {
  return Object.fromEntries(Object.entries(tensorDims(spec)).map(([k, [rows, cols]]) => [k, rows * cols]));
}

/** [rows, the rest] of the largest tensor of each kind (as memplan.tensor_dims): the reader reads rows. */
export function tensorDims(spec) {
  const d = spec.hidden_size;
  const hd = spec.head_dim;
  const fused = FUSED_FAMILIES.includes(spec.family);
  const out = { embed: [spec.vocab_size + (spec.position_embeddings ?? 0), d] };
  if (!spec.tie_word_embeddings) out.lm_head = [spec.vocab_size, d];
  for (const s of layerShapes(spec)) {
    const h = s.num_heads * hd;
    const g = s.num_kv_heads * hd;
    const f = s.intermediate_size;
    const kinds = { o: [d, h], ...(fused ? { qkv: [h + 2 * g, d] } : { q: [h, d], kv: [g, d] }) };
    const gates = spec.mlp_gated === false ? 1 : 2;
    if (s.num_experts) {
      const e = s.num_experts;
      Object.assign(kinds, { experts_gate_up: [e, gates * f * d], experts_down: [e, d * f], router: [e, d] });
      if (spec.shared_expert_intermediate_size) kinds.shared_expert = [spec.shared_expert_intermediate_size, d];
    } else {
      Object.assign(kinds, fused ? { gate_up: [gates * f, d] } : { up: [f, d], down: [d, f] });
    }
    for (const [k, [rows, cols]] of Object.entries(kinds)) {
      const [r0, c0] = out[k] ?? [0, 0];
      if (rows * cols > r0 * c0) out[k] = [rows, cols];
    }
  }
  return out;
}

/** The gathered kept rows an out-of-core read of a scattered row cut holds when both dims are cut
 * (as memplan.gathered_rows_numel). */
export function gatheredRowsNumel(teacher, student, kind) {
  if (kind.startsWith("experts_")) return 0;
  const [tRows, tCols] = tensorDims(teacher)[kind];
  const [sRows, sCols] = tensorDims(student)[kind] ?? [0, 0];
  return sRows > 0 && sRows < tRows && sCols < tCols ? sRows * tCols : 0;
}

/** Peak bytes of a prune job, in memory (teacher + cut copy) or out of core (one tensor read + its cut). */
export function pruneMemory(teacher, student, opts = {}) {
  const mode = opts.mode ?? "in_memory";
  const w = dtypeBytes(opts.weights_dtype || teacher.dtype || "float32");
  student = student || teacher;
  const t = tensorNumels(teacher);
  const s = tensorNumels(student);
  let parts;
  let largest;
  const extra = {};
  if (mode === "in_memory") {
    largest = Object.keys(s).reduce((a, k) => (s[k] > s[a] ? k : a));
    parts = { teacher_weights: paramCount(teacher).total * w, student_weights: paramCount(student).total * w };
    // the cut (one tensor in flight) or the save (the reverted expert tensors): the larger phase
    const phases = { cut: s[largest] * w, save: savedExpertCopiesNumel(student) * w };
    parts[phases.cut >= phases.save ? "cut_tensor" : "save_copies"] = Math.max(phases.cut, phases.save);
    extra.phases = phases;
  } else if (mode === "out_of_core") {
    const experts = Math.max(1, ...layerShapes(teacher).map((x) => x.num_experts || 0));
    // per-expert checkpoints: the kept experts, each cut, + one expert read (memplan.prune_memory)
    const read = (k) => (k.startsWith("experts_") ? (s[k] ?? 0) + Math.floor(t[k] / experts) : t[k]);
    const peak = (k) => read(k) + gatheredRowsNumel(teacher, student, k) + (s[k] ?? 0);
    largest = Object.keys(t).reduce((a, k) => (peak(k) > peak(a) ? k : a));
    parts = { read_tensor: read(largest) * w, cut_tensor: (s[largest] ?? 0) * w };
    const gathered = gatheredRowsNumel(teacher, student, largest);
    if (gathered) parts.gathered_rows = gathered * w;
  } else {
    throw new Error(`unknown prune mode ${mode}; use in_memory or out_of_core`);
  }
  return result(parts, { mode, largest_tensor: largest, ...extra });
}

/** Elements save_pretrained copies to write fused gate_up experts per expert (memplan.saved_expert_copies_numel). */
export function savedExpertCopiesNumel(spec) {
  const gates = spec.mlp_gated === false ? 1 : 2;
  return layerShapes(spec).reduce((sum, s) => sum + (s.num_experts || 0) * gates * s.intermediate_size * spec.hidden_size, 0);
}

/** What a job may use on one worker, from its registry entry's `memory`. */
export function usableBytes(memory) {
  if (memory.kind === "cuda") return Math.max(0, Math.trunc(memory.total_bytes * (1 - CUDA_RESERVE_FRACTION)) - CUDA_RESERVE_BYTES);
  return Math.trunc(memory.free_bytes || 0);
}

/** Settings to try, nearest first (as memplan.distill_candidates). */
export function distillCandidates(settings) {
  const base = Number(settings.batch_size);
  const toggles = [{}];
  if (!settings.gradient_checkpointing) toggles.push({ gradient_checkpointing: true });
  if ((settings.weights_dtype ?? "float32") === "float32") {
    toggles.push({ weights_dtype: "bfloat16" });
    if (!settings.gradient_checkpointing) toggles.push({ gradient_checkpointing: true, weights_dtype: "bfloat16" });
  }
  const batches = [base];
  while (batches[batches.length - 1] > 1) batches.push(Math.max(1, Math.floor(batches[batches.length - 1] / 2)));
  const out = [];
  batches.forEach((b, halvings) => {
    toggles.forEach((t, order) => {
      const change = { ...t };
      if (b !== base) change.batch_size = b;
      out.push({ key: [Object.keys(t).length + halvings, -b, Object.keys(t).length], order: out.length, change });
    });
  });
  out.sort((a, b) => a.key[0] - b.key[0] || a.key[1] - b.key[1] || a.key[2] - b.key[2] || a.order - b.order);
  return out.map((c) => c.change).filter((c) => Object.keys(c).length);
}

export const describeChange = (change) => Object.entries(change).map(([k, v]) => `${k}=${String(v).toLowerCase()}`).join(", ");


/** The live line under a job form: need, and which live workers it fits (or the nearest setting that does).
 * `need(settings)` -> bytes; `workers`: GET /workers entries; `queue`: "gpu" | "cpu" | null (any). */
export function fitLine(need, settings, workers, queue, candidates = []) {
  const needed = need(settings);
  const head = `needs ${bytes(needed)} per device`;
  const sized = (workers || []).filter((w) => w.memory && (!queue || (w.queues || []).includes(queue)));
  if (!sized.length) return { text: `${head} (no live worker reports its memory)`, fits: null, needed };
  const usable = sized.map((w) => ({ w, bytes: usableBytes(w.memory) }));
  const fitting = usable.filter((u) => u.bytes >= needed);
  if (fitting.length) {
    const names = fitting.map((u) => `${u.w.device} on ${u.w.hostname} (${bytes(u.bytes)})`);
    return { text: `${head}; fits ${fitting.length} x ${names.join(", ")}`, fits: true, needed };
  }
  const best = Math.max(...usable.map((u) => u.bytes));
  for (const change of candidates) {
    const smaller = need({ ...settings, ...change });
    if (smaller <= best) {
      return { text: `${head}; fits no live worker (largest ${bytes(best)}); would fit with ${describeChange(change)} (${bytes(smaller)})`, fits: false, needed };
    }
  }
  return { text: `${head}; fits no live worker (largest ${bytes(best)})`, fits: false, needed };
}
