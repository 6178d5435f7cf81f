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

  /**
   * {fieldName: {msg, nearby, path}} of the entries that name a field, keyed by the last element of
   * the field path (an input's `name`); `path` is the whole path ("remove_heads.3") for inputs named so.
   */
  get fields() {
    const out = {};
    for (const item of entries(this.detail)) {
      const loc = fieldPath(item);
      if (!loc.length) continue;
      const name = String(loc[loc.length - 1]);
      const field = { msg: cleanMsg(item.msg), nearby: item.nearby || [], path: loc.join(".") };
      out[name] = out[name] ? { ...field, msg: `${out[name].msg}; ${field.msg}` } : field;
    }
    return out;
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
        return loc.length ? `${loc.join(".")}: ${msg}` : msg;
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
 * Show an API error next to the control the user used: `box` gets the sentence, and inputs inside
 * `form` whose name matches an error field (last path element, or the whole dotted path) get outlined
 * with their own message and, below it, the nearby valid values.
 */
export function showError(box, err, form = null) {
  if (form) {
    for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
    for (const el of form.querySelectorAll(".field-error")) el.remove();
  }
  if (!err) {
    if (box) box.textContent = "";
    return;
  }
  if (box) box.textContent = err.message || String(err);
  if (form && err.fields) {
    for (const [name, field] of Object.entries(err.fields)) {
      const { msg, nearby = [], path = name } = typeof field === "string" ? { msg: field } : field;
      const input =
        form.querySelector(`[name="${CSS.escape(name)}"]`) || form.querySelector(`[name="${CSS.escape(path)}"]`);
      if (!input) continue;
      input.classList.add("invalid");
      const note = document.createElement("div");
      note.className = "field-error";
      note.dataset.field = input.name;
      note.textContent = msg;
      if (nearby.length) {
        const near = document.createElement("div");
        near.className = "field-nearby";
        near.textContent = nearbyText(nearby);
        note.append(near);
      }
      // A checkbox sits inside its label text: the note goes under the whole label.
      const anchor = input.type === "checkbox" || input.type === "radio" ? input.closest("label") || input : input;
      anchor.insertAdjacentElement("afterend", note);
      clearOnEdit(input, note, box, form, err.message || String(err));
    }
  }
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
