// HTTP client for /api/v1: one place that turns FastAPI error bodies into words a user can act on.

export const API_BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, detail) {
    super(describe(status, detail));
    this.status = status;
    this.detail = detail;
  }

  /** {fieldName: message} from FastAPI's [{loc, msg}] detail, keyed by the last path element. */
  get fields() {
    const out = {};
    // Plain-string errors that name their field ("source: outside the allowed roots") count too.
    const named = typeof this.detail === "string" && this.detail.match(/^([a-z_]+): (.+)$/s);
    if (named) out[named[1]] = named[2];
    if (Array.isArray(this.detail)) {
      for (const item of this.detail) {
        const loc = (item.loc || []).filter((p) => p !== "body" && p !== "query" && p !== "path");
        if (loc.length) out[String(loc[loc.length - 1])] = item.msg;
      }
    }
    return out;
  }
}

function describe(status, detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const loc = (item.loc || []).filter((p) => p !== "body" && p !== "query" && p !== "path");
        const msg = String(item.msg).replace(/^Value error, /, ""); // pydantic's prefix says nothing to a user
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
 * `form` whose name matches an error field get outlined with their own message.
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
    for (const [name, msg] of Object.entries(err.fields)) {
      const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
      if (!input) continue;
      input.classList.add("invalid");
      const note = document.createElement("div");
      note.className = "field-error";
      note.textContent = msg;
      input.insertAdjacentElement("afterend", note);
    }
  }
}
