// Evaluate, benchmark and distill results as people read them: metric cards and tables with units, the
// teacher beside the student, lm-eval tasks with their stderr, a preview's two perplexities. Other results:
// a key/value list.
// Every number carries data-value (the stored value) so tests can hold the text to the result.

import { h } from "../dom.js";
import { mismatchMark, protocolNote } from "./protocol.js";
import { bytes, compact, duration, int, ms, rate, sig, times } from "../format.js";
import { href } from "../router.js";

/** One number: formatted text, raw value in data-value. */
function num(value, format, testid) {
  return h("span.num", { dataset: { value: String(value ?? ""), ...(testid ? { testid } : {}) } }, format(value));
}

function card(label, value, format, testid, sub = null) {
  return h("div.metric", h("div.label", label), h("div.value", num(value, format, testid)), sub ? h("div.delta", sub) : null);
}

/** Evaluate: perplexity card (beside the teacher's, when given), scoring details, lm-eval tasks. */
export function evaluateResult(r, teacher = null) {
  const p = r.perplexity || {};
  const tp = teacher?.perplexity;
  // The teacher's number beside it, marked when it was measured on another protocol.
  const vsTeacher = tp ? h("span", "teacher ", num(tp.perplexity, (x) => sig(x, 4), "teacher-ppl"), teacher.protocol ? mismatchMark(r.protocol, teacher.protocol) : null) : null;
  const tasks = r.tasks || [];
  return h("div.stack", { dataset: { testid: "evaluate-result" } },
    h("div.cards",
      card("perplexity", p.perplexity, (x) => sig(x, 4), "ppl", vsTeacher),
      card("loss (nats / token)", p.loss, (x) => sig(x, 4), "loss"),
      card("tokens scored", p.tokens, int, "tokens", `${p.documents ?? p.blocks ?? "–"} ${p.documents !== undefined ? "documents" : "blocks"} · context ${p.context ?? "–"}`),
      card("took", r.seconds, duration, "seconds")),
    r.protocol ? h("div.hint", "measured ", protocolNote(r.protocol, { testid: "evaluate-protocol" })) : null,
    tasks.length
      ? h("table", { dataset: { testid: "lm-eval-tasks" } },
          h("thead", h("tr", h("th", "task"), h("th", "metric"), h("th.num", "value"), h("th.num", "± stderr"))),
          h("tbody", tasks.map((t) => h("tr", h("td", t.task), h("td.muted", t.metric), h("td.num", num(t.value, (x) => sig(x, 4))), h("td.num.muted", num(t.stderr, (x) => sig(x, 3)))))))
      : h("div.hint", "No lm-eval tasks were asked for."),
    weightsNote(r));
}

const BENCH_ROWS = [
  ["prefill", "prefill_tokens_per_s", rate, "prefill"],
  ["decode", "decode_tokens_per_s", rate, "decode"],
  ["latency / token", "latency_per_token_s", ms, "latency"],
  ["peak memory", "peak_memory_bytes", bytes, "memory"],
];

/** Benchmark: speedup cards, then per batch size a table of teacher | student | speedup. */
export function benchmarkResult(r) {
  const t = r.teacher || {};
  const s = r.student;
  const speed = r.speedup || [];
  const first = speed[0];
  const cards = s && first
    ? h("div.cards",
        card(`decode speedup (batch ${first.batch_size})`, first.decode, times, "speedup-decode"),
        card(`prefill speedup (batch ${first.batch_size})`, first.prefill, times, "speedup-prefill"),
        card("memory saved", first.memory, times, "speedup-memory", "teacher peak ÷ student peak"),
        card("parameters", r.parameter_ratio, (x) => `${(100 * x).toFixed(1)}%`, "parameter-ratio", `${compact(s.parameters)} of ${compact(t.parameters)}`))
    : h("div.cards", card("parameters", t.parameters, compact, "parameters"), card("device", t.device, String, "device"));
  const tables = (t.runs || []).map((tr, i) => {
    const sr = s?.runs?.[i];
    const sp = speed[i];
    const head = h("tr", h("th", `batch ${tr.batch_size} · ${tr.prompt_len} + ${tr.new_tokens} tokens`), h("th.num", "teacher"), s ? [h("th.num", "student"), h("th.num", "speedup")] : null);
    const rows = BENCH_ROWS.map(([label, key, format, ratioKey]) => h("tr",
      h("td", label),
      h("td.num", num(tr[key], format, `teacher-${key}-${i}`)),
      sr ? [h("td.num", num(sr[key], format, `student-${key}-${i}`)), h("td.num", num(sp?.[ratioKey], times, `speedup-${ratioKey}-${i}`))] : null));
    return h("table", { dataset: { testid: `bench-table-${i}` } }, h("thead", head), h("tbody", rows));
  });
  const method = t.runs?.[0]?.memory_method;
  const notes = [
    `on ${t.device || "–"}`,
    method === "weights+kv_cache" ? "memory: weights + KV cache (CPU estimate)" : method ? `memory: ${method}` : null,
    r.device_wait_s !== undefined ? `waited ${duration(r.device_wait_s)} for the device${r.device_exclusive ? ", measured alone" : ""}` : null,
  ].filter(Boolean);
  return h("div.stack", { dataset: { testid: "benchmark-result" } }, cards, tables, h("div.hint", notes.join(" · ")), weightsNote(r));
}

function weightsNote(r) {
  if (!r.weights) return null;
  return h("div.hint", r.weights === "distilled" ? `distilled weights (distill job #${r.distill_job_id})` : "pruned weights, before distillation");
}

/** Distill: the final validation as cards, then where the weights went. */
export function distillResult(r) {
  const v = r.final_validation || {};
  return h("div.stack", { dataset: { testid: "distill-result" } },
    h("div.cards",
      card("validation perplexity", v.val_ppl, (x) => sig(x, 4), "val-ppl"),
      card("validation loss (nats)", v.val_loss, (x) => sig(x, 4), "val-loss"),
      v.val_kl !== undefined ? card("KL to the teacher", v.val_kl, (x) => sig(x, 3), "val-kl") : null,
      card("steps", r.steps, int, "steps", v.val_tokens !== undefined ? `validated on ${int(v.val_tokens)} tokens at step ${v.step ?? "–"}` : null)),
    r.protocol ? h("div.hint", "validated ", protocolNote(r.protocol, { testid: "distill-protocol" }), " (packed blocks: not the teacher's evaluation protocol; evaluate the student to compare)") : null,
    ranksResult(r),
    r.artifact ? h("div.hint.path", `weights: ${r.artifact}`) : null);
}

/** A distillation over several ranks: world size, throughput overall and per rank (a GPU on CUDA; on a
 * CPU worker gloo ranks share its cores), each rank's peak memory, the teacher's placement (the memory
 * planner's choice, and why) and the workers that ran it. `r.device`: the job's device (cpu, cuda:0). */
export function ranksResult(r) {
  if (!(r.world_size > 1)) return null;
  const nodes = r.nodes || 1;
  const perNode = r.gpus_per_node ?? r.world_size / nodes;
  const gpus = String(r.device ?? "").startsWith("cuda");
  const unit = gpus ? "GPU" : "rank";
  const ranks = `${gpus ? "GPU" : String(r.device ?? "").startsWith("cpu") ? "CPU rank" : "rank"}${perNode > 1 ? "s" : ""}`;
  const peaks = r.peak_memory_per_rank || [];
  return h("div.stack", { dataset: { testid: "ranks-result" } },
    h("div.cards",
      card("ranks (world size)", r.world_size, int, "world-size", `${perNode} ${ranks} x ${nodes} node${nodes > 1 ? "s" : ""}`),
      r.tokens_per_s !== undefined ? card("throughput", r.tokens_per_s, (x) => rate(x), "tokens-per-s", h("span", num(r.tokens_per_s / r.world_size, (x) => rate(x), "tokens-per-s-per-rank"), ` per ${unit} (median step)`)) : null,
      peaks.length ? card("peak memory, largest rank", Math.max(...peaks), bytes, "peak-memory", peaks.map((p, i) => `rank ${i}: ${bytes(p)}`).join(" · ")) : null),
    r.teacher_placement ? h("div.hint", { dataset: { testid: "teacher-placement" } }, `teacher ${r.teacher_placement === "shard" ? "sharded (forward only)" : "replicated on every rank"}`, r.teacher_placement_reason ? ` — ${r.teacher_placement_reason}` : "") : null,
    r.workers?.length ? h("div.hint", { dataset: { testid: "rank-workers" } }, `workers: ${r.workers.map((w, i) => (nodes > 1 ? `node ${i} ${w}` : w)).join(", ")}`) : null);
}

const RANK_SERIES = /^rank(\d+)_(tokens_per_s|peak_memory_bytes|step_s)$/;

/** A running distillation's rank figures at its latest logged step, from the job's metric series
 * (`world_size` and rank<r>_tokens_per_s / _peak_memory_bytes / _step_s, worker/distill_ranks.py), or
 * null for a job on one rank. */
export function rankFigures(store) {
  const sizes = store.points("world_size");
  if (!sizes.length) return null;
  const last = sizes[sizes.length - 1];
  const at = (name) => store.series.get(name)?.get(last.step)?.value;
  const ranks = [];
  for (const name of store.series.keys()) {
    const m = RANK_SERIES.exec(name);
    if (!m) continue;
    const r = Number(m[1]);
    ranks[r] = ranks[r] || { rank: r };
    ranks[r][m[2]] = at(name);
  }
  return { step: last.step, worldSize: last.value, tokensPerS: at("tokens_per_s"), ranks: ranks.filter(Boolean) };
}

/** Each rank's figures while the job runs: world size, throughput overall and per rank, peak memory and
 * step time per rank (as of `step`). */
export function liveRanks({ step, worldSize, tokensPerS, ranks }) {
  const peaks = ranks.map((r) => r.peak_memory_bytes).filter((p) => p !== undefined);
  return h("div.stack", { dataset: { testid: "live-ranks", step: String(step) } },
    h("div.cards",
      card("ranks (world size)", worldSize, int, "live-world-size"),
      card("throughput, all ranks", tokensPerS, (x) => rate(x), "live-tokens-per-s", `step ${step}`),
      peaks.length ? card("peak memory, largest rank", Math.max(...peaks), bytes, "live-peak-memory") : null),
    h("table", { dataset: { testid: "live-ranks-table" } },
      h("thead", h("tr", h("th", "rank"), h("th.num", "tokens / s"), h("th.num", "peak memory"), h("th.num", "step time"))),
      h("tbody", ranks.map((r) => h("tr", { dataset: { rank: String(r.rank) } },
        h("td", `rank ${r.rank}`),
        h("td.num", num(r.tokens_per_s, (x) => rate(x), `live-rank-tokens-per-s-${r.rank}`)),
        h("td.num", num(r.peak_memory_bytes, bytes, `live-rank-peak-memory-${r.rank}`)),
        h("td.num", num(r.step_s, ms, `live-rank-step-s-${r.rank}`)))))));
}

/** Preview: the teacher's and the masked teacher's perplexity on one protocol, and what the mask costs. */
export function previewResult(r) {
  const teacherFrom = r.teacher_from_job
    ? h("span", "measured by ", h("a", { href: href("job", [r.teacher_from_job]), dataset: { testid: "preview-teacher-job" } }, `job #${r.teacher_from_job}`))
    : "measured by this preview";
  return h("div.stack", { dataset: { testid: "preview-result" } },
    h("div.cards",
      card("teacher perplexity", r.ppl_teacher, (x) => sig(x, 4), "preview-teacher-ppl", teacherFrom),
      card("masked perplexity", r.ppl_masked, (x) => sig(x, 4), "preview-masked-ppl", h("span", num(r.ratio, times, "preview-ratio"), " the teacher's")),
      card("tokens scored", r.tokens, int, "preview-tokens", "each, teacher and masked teacher")),
    r.protocol ? h("div.hint", "measured ", protocolNote(r.protocol, { testid: "preview-protocol" })) : null,
    h("div.hint", "The masked teacher zeroes what the plan cuts, without cutting a weight: a quick look at a plan before its student is made and distilled."));
}

/** The result of any job kind. */
export function jobResult(kind, r, teacherEval = null) {
  if (kind === "distill" && r.final_validation && Object.keys(r.final_validation).length) return distillResult(r);
  if (kind === "evaluate" && r.perplexity) return evaluateResult(r, teacherEval);
  if (kind === "benchmark" && r.teacher) return benchmarkResult(r);
  if (kind === "preview" && r.ppl_masked !== undefined) return previewResult(r);
  return keyValues(r);
}

// keyValues lists at most this many fields, then says how many more there are (never a silent cut).
const SHOWN = 40;

/** A nested result object as a compact key/value list (prune, inspect, distill results). */
export function keyValues(result) {
  const rows = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) walk(v, key);
      // Identical entries (a uniform model's layers) once, as a range: not the same keys n times over.
      else if (Array.isArray(v) && v.length > 1 && v.every((x) => x && typeof x === "object" && JSON.stringify(x) === JSON.stringify(v[0]))) walk(v[0], `${key}[0–${v.length - 1}]`);
      else if (Array.isArray(v) && v.some((x) => x && typeof x === "object")) v.forEach((x, i) => walk(x, `${key}[${i}]`));
      else if (Array.isArray(v)) rows.push([key, v.length ? v.join(", ") : "–"]);
      else rows.push([key, typeof v === "number" ? (/bytes/.test(k) ? bytes(v) : sig(v)) : String(v)]);
    }
  };
  walk(result, "");
  const more = rows.length - SHOWN;
  return h("dl.kv", rows.slice(0, SHOWN).map(([k, v]) => [h("dt", k), h("dd", v)]),
    more > 0 ? [h("dt", "…"), h("dd.faint", { dataset: { testid: "result-more" } }, `${more} more field${more === 1 ? "" : "s"} not shown`)] : null);
}
