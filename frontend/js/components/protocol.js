// Evaluation protocols on screen: which text and window a perplexity was measured on
// (worker/engine/eval_protocol.py), and a clear mark where two numbers were not measured alike.

import { api, request, showError } from "../api.js";
import { h, mount, toast } from "../dom.js";
import { readForm } from "./widgets.js";
import { documentsRead, serverConfig } from "../serverconfig.js";

/**
 * A small "on <protocol id>" note whose hover is the protocol's definition. The documents it names are
 * those it reads: a split with fewer than the protocol's "first N" shows its own count (audit 24: "64
 * docs" of a 16-document split); data-protocol-id keeps the id itself, which numbers are matched by.
 */
export function protocolNote(protocol, { testid = "protocol", prefix = "on " } = {}) {
  if (!protocol) return null;
  const note = h("span.protocol-note", { title: protocol.description, dataset: { testid, protocolId: protocol.id } }, `${prefix}${protocol.id}`);
  if (protocol.kind === "documents" && protocol.max_documents) {
    serverConfig().then((config) => {
      const n = documentsRead(protocol.max_documents, { datasetId: protocol.dataset_id, split: protocol.split }, config);
      if (n === protocol.max_documents) return;
      note.textContent = `${prefix}${protocol.id.replace(` · ${protocol.max_documents} docs · `, ` · ${n} docs · `)}`;
      note.title = `${protocol.description} The ${protocol.split} split holds ${n} documents: all of them are read.`;
    }).catch(() => {});
  }
  return note;
}

/** Same protocol id, or both unknown: the numbers can be compared. */
export function sameProtocol(a, b) {
  return (a?.id ?? null) === (b?.id ?? null);
}

/** "≠" after a number measured on another protocol than `reference` (the teacher's), with both
 * definitions on hover; null when they agree. */
export function mismatchMark(protocol, reference, { testid = "protocol-mismatch" } = {}) {
  if (!reference || sameProtocol(protocol, reference)) return null;
  const what = protocol ? `measured on ${protocol.id}: ${protocol.description}` : "measured on an unknown protocol (before protocols were recorded)";
  return h("span.protocol-mismatch", {
    title: `Not comparable with numbers on the teacher's protocol (${reference.id}): ${what}`,
    dataset: { testid, protocolId: protocol?.id ?? "" },
  }, "≠");
}

const SPLITS = ["test", "validation", "calibration", "train"];

/** A teacher's protocol, changeable: "Change" opens a small form (dataset, split, window, stride,
 * documents) that PATCHes /teachers/{id}; a bad field is outlined with its nearby values. Numbers
 * already measured keep their protocol (the tables then mark them ≠). `onSaved(teacher)` after a save. */
export function protocolEditor(teacher, { onSaved = () => {} } = {}) {
  const p = teacher.eval_protocol || {};
  const err = h("div.error-msg", { dataset: { testid: "protocol-error" } });
  const dataset = h("select", { name: "dataset_id" }, h("option", { value: "" }, "demo corpus"));
  const number = (name, label, value, min) => h("label.field", h("span", label), h("input", { name, type: "number", value, min, step: 1 }));
  const form = h("form.stack", { hidden: true, dataset: { testid: "protocol-form" } },
    h("div.form-grid",
      h("label.field", h("span", "Data"), dataset),
      h("label.field", h("span", "Split"), h("select", { name: "split" }, SPLITS.map((s) => h("option", { value: s, selected: s === p.split }, s)))),
      number("context", "Window (tokens)", p.context, 2),
      number("stride", "Stride", p.stride, 1),
      number("max_documents", "Documents", p.max_documents, 1)),
    h("div.hint", "From now on, this teacher's and its students' default evaluations use it; numbers already measured keep their protocol and are marked ≠."),
    h("div.row", h("span.spacer"),
      h("button", { type: "button", onclick: () => { form.hidden = true; showError(err, null, form); } }, "Cancel"),
      h("button.primary", { type: "submit", dataset: { testid: "protocol-save" } }, "Save protocol")),
    err);
  const open = async () => {
    form.hidden = false;
    try {
      const datasets = await api.get("/datasets?limit=1000");
      mount(dataset, h("option", { value: "" }, "demo corpus"), datasets.filter((d) => d.source !== "demo").map((d) => h("option", { value: d.id, selected: d.id === p.dataset_id }, `${d.name} (#${d.id})`)));
    } catch (e) {
      showError(err, e);
    }
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = readForm(form);
    const change = { dataset_id: v.dataset_id ? Number(v.dataset_id) : null, split: v.split };
    for (const key of ["context", "stride", "max_documents"]) if (v[key] !== undefined) change[key] = v[key];
    try {
      const saved = await request("PATCH", `/teachers/${teacher.id}`, { eval_protocol: change });
      showError(err, null, form);
      form.hidden = true;
      toast(`Evaluation protocol of ${saved.name}: ${saved.eval_protocol.id}`);
      onSaved(saved);
    } catch (e) {
      showError(err, e, form);
    }
  });
  const button = h("button.small", { type: "button", onclick: open, dataset: { testid: "protocol-edit" }, title: "change the protocol new evaluations of this teacher and its students use" }, "Change");
  return { button, form };
}
