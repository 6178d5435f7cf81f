// HTTP client for /api/v1: one place that turns error bodies into words a user can act on.
// Every error answer is {detail: [{loc, msg, type, nearby}]} (backend/api/errors.py): `loc` is the field
// path (["body", "params", "batch_size"]; [] when no field is at fault), `nearby` valid values to try.

export const API_BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, detail) {
    super(describe(status, detail));
    this.status = status;
    this.detail = detail;
  }
}

function entries(detail) {
  return Array.isArray(detail) ? detail.filter((item) => item && typeof item === "object") : [];
}

/** The field path without FastAPI's request part ("body", "query", "path", "header"). */
function fieldPath(item) {
  const loc = item.loc || [];
  return ["body", "query", "path", "header"].includes(loc[0]) ? loc.slice(1) : loc;
}

function cleanMsg(msg) {
  return String(msg).replace(/^Value error, /, ""); // pydantic's prefix says nothing to a user
}

/** "nearby: 4, 6, 8" (valid values close to the one sent), or "" when there are none. */
export function nearbyText(nearby) {
  return nearby && nearby.length ? `nearby valid: ${nearby.map(String).join(", ")}` : "";
}

function describe(status, detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return entries(detail)
      .map((item) => {
        const loc = fieldPath(item);
        const msg = cleanMsg(item.msg);
        return loc.length ? `${fieldWords(loc)}: ${msg}` : msg;
      })
      .join("; ");
  }
  if (detail && typeof detail === "object") return detail.message || JSON.stringify(detail);
  if (status === 0) return "The server did not answer (is `prunescope up` running?)";
  return `Request failed with HTTP ${status}`;
}

/** Bearer token for servers started with PRUNESCOPE_TOKEN (stored from a `#token=...` link). */
export function token() {
  const match = location.hash.match(/[#&?]token=([^&]+)/);
  if (match) {
    localStorage.setItem("prunescope_token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search + location.hash.replace(/[#&?]token=[^&]+/, "") || "#/");
  }
  return localStorage.getItem("prunescope_token");
}

function headers(json) {
  const out = json ? { "Content-Type": "application/json" } : {};
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** URL for EventSource / downloads, which cannot send headers: the token goes in the query. */
export function authUrl(path) {
  const t = token();
  const url = API_BASE + path;
  return t ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(t)}` : url;
}

export async function request(method, path, body, { signal } = {}) {
  let response;
  try {
    response = await fetch(API_BASE + path, {
      method,
      signal,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, null);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) throw new ApiError(response.status, data && data.detail !== undefined ? data.detail : data);
  return data;
}

export const api = {
  get: (path, opts) => request("GET", path, undefined, opts),
  post: (path, body = {}, opts) => request("POST", path, body, opts),
  put: (path, body, opts) => request("PUT", path, body, opts),
  del: (path, opts) => request("DELETE", path, undefined, opts),
};

/** Build "?a=1&b=2" skipping empty values. */
export function qs(params) {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return entries.length ? `?${new URLSearchParams(entries).toString()}` : "";
}

/**
 * A field path in words: ["plan", "targets", "hidden_size"] -> "Plan › targets › hidden size" (for a
 * message no input of the form shows: the raw dotted path said nothing to a user, audit 12).
 */
export function fieldWords(path) {
  const text = path.map((p) => String(p).replace(/_/g, " ")).join(" › ");
  return text ? text[0].toUpperCase() + text.slice(1) : "";
}

/** An error's problems, one each: [{path, msg, nearby}] (path [] when no field is at fault). Takes an
 * ApiError, a plain {message} / Error, or {fields: {name: msg | {msg, nearby, path}}} checked here. */
export function problems(err) {
  if (err instanceof ApiError && Array.isArray(err.detail)) {
    return entries(err.detail).map((item) => ({ path: fieldPath(item).map(String), msg: cleanMsg(item.msg), nearby: item.nearby || [] }));
  }
  const fields = Object.entries(err.fields || {});
  if (fields.length) {
    return fields.map(([name, f]) => (typeof f === "string" ? { path: [name], msg: f, nearby: [] } : { path: String(f.path || name).split("."), msg: f.msg, nearby: f.nearby || [] }));
  }
  return [{ path: [], msg: err.message || String(err), nearby: [] }];
}

/** The input of `form` a field path names: `fieldFor(path, msg)`'s name when given (a form whose inputs
 * are not the API's fields), else the whole dotted path, else its last element. */
function inputFor(form, { path, msg }, fieldFor) {
  if (!form || !path.length) return null;
  const names = [fieldFor?.(path, msg), path.join("."), path[path.length - 1]].filter(Boolean);
  for (const name of names) {
    const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (input) return input;
  }
  return null;
}

/**
 * Show an error once, where it belongs (audit 12): each problem whose field path names an input of
 * `form` is said under that input (outlined, the nearby valid values below); `box` says the rest, the
 * field in words, after `lead` (a sentence about the whole request, e.g. "Nothing was created.").
 * `fieldFor(path, msg)`: the input name for a path when the form's inputs are not named as the API's
 * fields. Every form that posts goes through here, so every form does it one way. `err` null clears.
 */
export function showError(box, err, form = null, { lead = "", fieldFor = null } = {}) {
  if (form) {
    for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
    for (const el of form.querySelectorAll(".field-error")) el.remove();
  }
  if (!err) {
    if (box) box.textContent = "";
    return;
  }
  const placed = new Map(); // input -> its problems
  const unplaced = [];
  for (const problem of problems(err)) {
    const input = inputFor(form, problem, fieldFor);
    if (input) placed.set(input, [...(placed.get(input) || []), problem]);
    else unplaced.push(problem);
  }
  const sentence = unplaced.map(({ path, msg }) => (path.length ? `${fieldWords(path)}: ${msg}` : msg)).join("; ");
  const text = [lead, sentence].filter(Boolean).join(" ");
  if (box) box.textContent = text;
  for (const [input, list] of placed) markField(input, list, box, form, text);
  const first = placed.keys().next().value;
  if (first) {
    const fold = first.closest("details");
    if (fold) fold.open = true; // a setting folded away is unfolded, so the user sees where
    first.scrollIntoView({ block: "nearest" });
  }
}

/** Outline `input` and put its problems' messages (and the nearby valid values) right under it. */
function markField(input, list, box, form, text) {
  input.classList.add("invalid");
  const note = document.createElement("div");
  note.className = "field-error";
  note.dataset.field = input.name;
  note.textContent = list.map((p) => p.msg).join("; ");
  const nearby = list.flatMap((p) => (/nearby valid/.test(p.msg) ? [] : p.nearby)); // not said twice
  if (nearby.length) {
    const near = document.createElement("div");
    near.className = "field-nearby";
    near.textContent = nearbyText(nearby);
    note.append(near);
  }
  // A checkbox sits inside its label text: the note goes under the whole label.
  const anchor = input.type === "checkbox" || input.type === "radio" ? input.closest("label") || input : input;
  anchor.insertAdjacentElement("afterend", note);
  clearOnEdit(input, note, box, form, text);
}

/**
 * The first edit of `input` takes its error `note` away (and its red outline): the message was about a
 * value that is no longer there (audit 13: a seq_len error stayed beside another value while the
 * browser blocked the next submit). When no field error is left in `form`, the form's sentence in `box`
 * goes too, if it is still this error's. A note already replaced by a later showError is left alone.
 */
function clearOnEdit(input, note, box, form, message) {
  const clear = () => {
    if (!note.isConnected) return;
    note.remove();
    input.classList.remove("invalid");
    if (box && box.textContent === message && !form.querySelector(".field-error")) box.textContent = "";
  };
  input.addEventListener("input", clear, { once: true });
  input.addEventListener("change", clear, { once: true });
}
