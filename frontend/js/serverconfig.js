// The server's settings the dashboard needs (GET /config), asked once and shared by every view: they are
// fixed for the server's life (a restart with other settings needs a reload). A failed answer is not
// kept, so the next caller asks again.
import { api } from "./api.js";

let pending = null;

export function serverConfig() {
  if (!pending) pending = api.get("/config").catch((err) => { pending = null; throw err; });
  return pending;
}

/** "batch_size 5000 is over this server's limit of 16 (PRUNESCOPE_MAX_BATCH_SIZE)" for the first of a
 * form's `values` over its limit (GET /config `limits`: {field: {limit, variable}}, the numbers and words
 * of backend/limits.py's 422), else null. Keys that name no form field (job_tokens) never match. */
export function overLimit(values, limits) {
  for (const [name, { limit, variable }] of Object.entries(limits || {})) {
    const v = values[name];
    if (typeof v === "number" && v > limit) return `${name} ${v} is over this server's limit of ${limit} (${variable})`;
  }
  return null;
}
