// The server's settings the dashboard needs (GET /config), asked once and shared by every view: they are
// fixed for the server's life (a restart with other settings needs a reload). A failed answer is not
// kept, so the next caller asks again.
import { api } from "./api.js";
import { pyG } from "./format.js";

let pending = null;

export function serverConfig() {
  if (!pending) pending = api.get("/config").catch((err) => { pending = null; throw err; });
  return pending;
}

/** The documents "the first `maxDocuments` documents of `split`" reads: fewer when the data is the demo
 * corpus (`datasetId` empty) and its split has fewer (GET /config demo_documents); `maxDocuments` when
 * the split's size is not known here (a registered dataset). */
export function documentsRead(maxDocuments, { datasetId = null, split } = {}, config = {}) {
  const available = datasetId ? undefined : config.demo_documents?.[split];
  return available === undefined ? maxDocuments : Math.min(maxDocuments, available);
}

/** The statuses of a distillation whose weights an evaluate / benchmark job may name: they exist or will
 * (backend/api/jobs.py MEASURABLE). */
export const MEASURABLE_DISTILLS = ["queued", "running", "succeeded"];

/** A job's tokens as a product, first the field a too-large job names: backend/schemas.py's
 * `size_factors` of the job kinds whose forms have a memory line (API params in, [[field, value]] out). */
export const SIZE_FACTORS = {
  importance: (p) => [["samples", p.samples], ["seq_len", p.seq_len]],
  distill: (p) => (p.tokens != null ? [["tokens", p.tokens]] : [["steps", p.steps], ["batch_size", p.batch_size], ["seq_len", p.seq_len]]),
};

/** backend/limits.job_tokens_excess: the API's words when the product of `factors` is over `limit`
 * tokens per job, else null (also when a factor is not a whole number yet: the API's 422 says that). */
export function jobTokensExcess(factors, limit, variable) {
  if (!factors.every(([, v]) => Number.isSafeInteger(v) && v >= 1)) return null;
  const tokens = factors.reduce((product, [, v]) => product * BigInt(v), 1n); // exact past 2^53, as Python
  const max = BigInt(limit);
  if (tokens <= max) return null;
  const [field, value] = factors[0];
  const perUnit = tokens / BigInt(value);
  const product = factors.map(([name, v]) => `${name} ${v}`).join(" x ");
  const fits = perUnit <= max ? `; with these settings ${field} can be at most ${max / perUnit}` : "";
  return `${product} = ${pyG(Number(tokens))} tokens is over this server's limit of ${pyG(limit)} tokens per job (${variable})${fits}`;
}

/** "batch_size 5000 is over this server's limit of 16 (PRUNESCOPE_MAX_BATCH_SIZE)" for the first of a
 * job's `params` over its limit (GET /config `limits`: {field: {limit, variable}}, the numbers and words
 * of backend/limits.py's 422), then its tokens against `limits.job_tokens` when `kind` is one of
 * SIZE_FACTORS; else null. */
export function overLimit(params, limits, kind = null) {
  for (const [name, { limit, variable }] of Object.entries(limits || {})) {
    const v = params[name];
    if (name !== "job_tokens" && typeof v === "number" && v > limit) return `${name} ${v} is over this server's limit of ${limit} (${variable})`;
  }
  const tokens = limits?.job_tokens;
  if (!tokens || !SIZE_FACTORS[kind]) return null;
  return jobTokensExcess(SIZE_FACTORS[kind](params), tokens.limit, tokens.variable);
}
