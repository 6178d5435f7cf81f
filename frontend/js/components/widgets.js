// Small shared widgets: progress bars, status badges, stability badges, form field builders.

import { h } from "../dom.js";
import { duration, pct } from "../format.js";

// A cancelled job was stopped on purpose: neutral ("stopped"), never the error red of a failure.
const STATUS_KIND = { succeeded: "ok", ready: "ok", failed: "err", cancelled: "stopped", running: "run", pending: "", queued: "" };

export function statusBadge(status) {
  const kind = STATUS_KIND[status] ?? "";
  return h(`span.badge${kind ? `.${kind}` : ""}`, { dataset: { status } }, status || "–");
}

/** The reason a job ended: red for a failure, neutral for a cancellation. `inline`: the small form
 * under a status badge in a table; otherwise a boxed message with "Failed:" / "Stopped:". */
export function statusReason(job, { inline = false, testid } = {}) {
  if (!job.error) return null;
  const failed = job.status === "failed";
  const tag = inline ? (failed ? "div.field-error" : "div.field-note") : failed ? "div.error-msg" : "div.stopped-msg";
  const text = inline ? job.error : `${failed ? "Failed" : "Stopped"}: ${job.error}`;
  return h(tag, { dataset: testid ? { testid } : {} }, text);
}

/** Progress bar + "42% · ETA 1m 3s" for a job-like object. */
export function progressBar(job, { big = false } = {}) {
  const p = Math.max(0, Math.min(1, job.progress || 0));
  const failed = job.status === "failed";
  const bar = h(`div.progress${big ? ".big" : ""}${failed ? ".failed" : ""}`, { role: "progressbar", "aria-valuenow": Math.round(p * 100), "aria-valuemin": 0, "aria-valuemax": 100 }, h("i", { style: { width: `${(job.status === "succeeded" ? 1 : p) * 100}%` } }));
  const text = [];
  if (job.status === "running") {
    text.push(pct(p, 0));
    if (job.eta_s !== null && job.eta_s !== undefined) text.push(`ETA ${duration(job.eta_s)}`);
  }
  if (job.message && job.status === "running") text.push(job.message);
  return h("div.stack", { style: { gap: "3px" } }, bar, text.length ? h("div.hint.num", text.join(" · ")) : null);
}

/** A table row that opens `url` (a hash route, router.href): `cells` should hold a `rowLink` to it, a
 * real link that Tab reaches, Enter follows and a middle-click opens in a tab; a click anywhere else on
 * the row (not on its own links, buttons or inputs) opens it too. */
export function linkRow(url, attrs, ...cells) {
  const open = (ev) => {
    if (ev.target.closest("a, button, input, select, textarea, label")) return;
    location.hash = url;
  };
  return h("tr.clickable", { ...attrs, onclick: open }, ...cells);
}

/** A table row that selects what it shows on the page (a student, a teacher): a click, or Tab to it and
 * Enter / Space; `selected` marks it (and tells a screen reader it is pressed). */
export function selectRow(selected, attrs, onSelect, ...cells) {
  const onkeydown = (ev) => {
    if (ev.target !== ev.currentTarget || (ev.key !== "Enter" && ev.key !== " ")) return;
    ev.preventDefault(); // Space would scroll the page
    onSelect();
  };
  return h("tr.clickable", { ...attrs, class: selected ? "selected" : "", tabindex: 0, role: "button", "aria-pressed": String(selected), onclick: onSelect, onkeydown }, ...cells);
}

/** Run `render` (which rebuilds `container`) and put the keyboard focus back on the row it was on, found
 * by `attr` (e.g. "data-student-id"): a poll's redraw must not throw a keyboard user back to the top. */
export function keepingFocus(container, attr, render) {
  const was = container.contains(document.activeElement) ? document.activeElement.closest(`[${attr}]`)?.getAttribute(attr) : null;
  render();
  if (was !== null && was !== undefined) container.querySelector(`[${attr}="${was}"]`)?.focus();
}

/** The link in a `linkRow` (its id, usually): the row's keyboard way in. */
export function rowLink(url, text, attrs = {}) {
  return h("a.row-link", { href: url, ...attrs }, text);
}

/** Spearman rho of two calibration halves: how much to trust a ranking. */
export function stabilityBadge(axis, rho) {
  if (rho === null || rho === undefined) return h("span.badge", `${axis}: –`);
  const kind = rho >= 0.9 ? "ok" : rho >= 0.7 ? "warn" : "err";
  const word = rho >= 0.9 ? "stable" : rho >= 0.7 ? "moderate" : "noisy";
  return h(`span.badge.${kind}`, { title: `Spearman correlation of the ${axis} ranking between two halves of the calibration set`, dataset: { testid: `stability-${axis}` } }, `${axis} ρ=${rho.toFixed(2)} ${word}`);
}

/** A labelled input. spec: {name, label, type, value, step, min, max, options: [[v, label]]} */
export function field(spec) {
  let input;
  if (spec.options) {
    input = h("select", { name: spec.name }, spec.options.map(([v, label]) => h("option", { value: v, selected: String(v) === String(spec.value) }, label)));
  } else if (spec.type === "checkbox") {
    input = h("input", { type: "checkbox", name: spec.name, checked: !!spec.value });
    return h("label.check", input, spec.label);
  } else {
    input = h("input", { name: spec.name, type: spec.type || "text", value: spec.value ?? "", step: spec.step, min: spec.min, max: spec.max, placeholder: spec.placeholder || "", size: spec.size });
  }
  if (spec.title) input.title = spec.title;
  return h("label.field", h("span", spec.label), input);
}

/** The "Wait for nodes (s)" field of a job over several nodes: the API's gang_timeout_s (backend/schemas.GangWait);
 * left blank, the worker's PRUNESCOPE_GANG_TIMEOUT_S applies. */
export function gangWaitField() {
  return field({ name: "gang_timeout_s", label: "Wait for nodes (s)", type: "number", min: 5, max: 7 * 86400, step: "any", placeholder: "worker default (300)",
    title: "with nodes > 1: how long node 0 waits for every node's worker to join, counted from its first try across the rounds it gives way to queued jobs; then the job fails, unstarted and resumable (blank: the worker's PRUNESCOPE_GANG_TIMEOUT_S, 300 s)" });
}

/** Enable `container`'s gang-wait field only while its Nodes field asks for more than one (a single
 * node has no gang to wait for); call again after setting Nodes by code. */
export function gangWaitFollowsNodes(container) {
  const nodes = container.querySelector("[name=nodes]");
  const wait = container.querySelector("[name=gang_timeout_s]");
  const sync = () => { wait.disabled = !(Number(nodes.value) > 1); };
  nodes.addEventListener("input", sync);
  sync();
}

/** `{ gang_timeout_s }` of read form values `v` when it applies (nodes > 1, the field filled), else {}. */
export function gangWaitParam(v) {
  return v.nodes > 1 && v.gang_timeout_s !== undefined ? { gang_timeout_s: v.gang_timeout_s } : {};
}

/** Read a form's named inputs into an object, converting numbers; empty fields are left out. */
export function readForm(form) {
  const out = {};
  for (const el of form.querySelectorAll("[name]")) {
    if (el.type === "checkbox") out[el.name] = el.checked;
    else if (el.value === "") continue;
    else if (el.type === "number") out[el.name] = Number(el.value);
    else out[el.name] = el.value;
  }
  return out;
}
