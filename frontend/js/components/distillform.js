// The distillation form: its fields (the runs page's and the depth-vs-width wizard's), its defaults
// (the API's, tests/platform/test_distill_defaults.py) and its values as the API's distill params.

import { h } from "../dom.js";
import { field, gangWaitField, gangWaitFollowsNodes, gangWaitParam, readForm } from "./widgets.js";
import { restore } from "../remember.js";
import { fitPositions } from "../costmodel.js";
import { valEveryWarning, warmupWarning } from "../distillmath.js";

export const DISTILL_DEFAULTS = { steps: 200, lr: 1e-4, min_lr: 1e-5, warmup: 20, temperature: 1.0, ce_weight: 0.0, teacher_correction_steps: 0, batch_size: 8, seq_len: 128, val_every: 50, checkpoint_every: 50, seed: 0 };

/** The distillation form (shared with the depth-vs-width wizard). */
export const DISTILL_FORM_KEY = "distill";

/** The distillation form (shared with the depth-vs-width wizard), with the last submitted settings
 * (remember.js) in place of the defaults; `values` given here still win. */
export function distillFields(datasets, values = {}) {
  const grid = distillGrid(datasets, values);
  restore(DISTILL_FORM_KEY, grid, Object.keys(values).map((k) => (k === "steps" || k === "tokens" ? "budget" : k)));
  gangWaitFollowsNodes(grid); // after restore: the remembered Nodes decides
  warnValEvery(grid, () => distillParams(grid));
  warnWarmup(grid, () => distillParams(grid));
  return grid;
}

/** The seq len of distill settings `form` within `spec`'s positions (a default or remembered length the
 * server would refuse for this model: audit 24). */
export function fitSeqLen(form, spec) {
  const input = form.querySelector("[name=seq_len]");
  const fit = fitPositions(spec, Number(input.value));
  if (input.value && fit < Number(input.value)) input.value = fit;
}

/**
 * A note at the end of `host` that says, live as the user types, when validate-every is more than the
 * run's steps (`params()`: the distill params the form would send; distillmath.valEveryWarning).
 */
export function warnValEvery(host, params) {
  const note = h("div.note", { dataset: { testid: "val-every-warning" }, style: { gridColumn: "1 / -1", flexBasis: "100%" } });
  const check = () => { note.textContent = valEveryWarning(params()); };
  host.addEventListener("input", check);
  host.addEventListener("change", check);
  host.append(note);
  check();
}

/** A note at the end of `host` that says, live as the user types, when the whole run is LR warm-up
 * (`params()`: the distill params the form would send; distillmath.warmupWarning). */
export function warnWarmup(host, params) {
  const note = h("div.note", { dataset: { testid: "warmup-warning" }, style: { gridColumn: "1 / -1", flexBasis: "100%" } });
  const check = () => { note.textContent = warmupWarning(params()); };
  host.addEventListener("input", check);
  host.addEventListener("change", check);
  host.append(note);
  check();
}

function distillGrid(datasets, values) {
  const v = { ...DISTILL_DEFAULTS, ...values };
  return h("div.form-grid",
    field({ name: "budget_kind", label: "Budget in", options: [["steps", "steps"], ["tokens", "tokens"]], value: "steps" }),
    field({ name: "budget", label: "Budget", type: "number", value: v.steps, min: 1 }),
    field({ name: "lr", label: "Peak LR", type: "number", value: v.lr, step: "any" }),
    field({ name: "min_lr", label: "Min LR", type: "number", value: v.min_lr, step: "any" }),
    field({ name: "warmup", label: "Warm-up steps", type: "number", value: v.warmup, min: 0 }),
    field({ name: "temperature", label: "Temperature", type: "number", value: v.temperature, step: "any" }),
    field({ name: "ce_weight", label: "CE weight", type: "number", value: v.ce_weight, step: "any", min: 0, title: "0 = logit KD only (Minitron's recipe)" }),
    field({ name: "teacher_correction_steps", label: "Teacher correction", type: "number", value: v.teacher_correction_steps, min: 0, title: "steps of fine-tuning the teacher on the distillation data first" }),
    field({ name: "batch_size", label: "Batch", type: "number", value: v.batch_size, min: 1 }),
    field({ name: "seq_len", label: "Seq len", type: "number", value: v.seq_len, min: 8 }),
    field({ name: "val_every", label: "Validate every", type: "number", value: v.val_every, min: 1 }),
    field({ name: "checkpoint_every", label: "Checkpoint every", type: "number", value: v.checkpoint_every, min: 1 }),
    field({ name: "dataset_id", label: "Data", options: [["", "demo corpus"], ...datasets.filter((d) => d.source !== "demo").map((d) => [d.id, d.name])], value: "" }),
    field({ name: "device", label: "Device", options: [["auto", "auto"], ["cuda", "GPU (cuda)"], ["cpu", "CPU"]], value: v.device ?? "auto", title: "auto: a GPU worker when one is running, else a CPU worker" }),
    field({ name: "weights_dtype", label: "Weights", options: [["float32", "float32"], ["bfloat16", "bfloat16"]], value: v.weights_dtype ?? "float32", title: "bfloat16: student and teacher weights, gradients and AdamW states in half the memory" }),
    field({ name: "gpus", label: "GPUs per node", type: "number", value: v.gpus ?? 1, min: 1, title: "ranks on each worker (torchrun; gloo ranks on a CPU worker): the student is FSDP2-sharded over all ranks, the batch is the global batch" }),
    field({ name: "nodes", label: "Nodes", type: "number", value: v.nodes ?? 1, min: 1, title: "workers (machines) meeting at one rendezvous, each running the GPUs above; the job waits until all have joined" }),
    gangWaitField(),
    // The switches get a row of their own across the grid: in a grid cell each label wrapped over 4 lines.
    h("div.row", { style: { gridColumn: "1 / -1" } },
      field({ name: "baseline", label: "baseline: no teacher (CE only)", type: "checkbox", value: false }),
      field({ name: "gradient_checkpointing", label: "gradient checkpointing (less memory, ~1/3 more compute)", type: "checkbox", value: !!v.gradient_checkpointing })),
  );
}

/** The distill form's input for an API field path (showError's fieldFor): steps / tokens are its Budget. */
export function distillFieldFor(path) {
  return ["steps", "tokens"].includes(path[path.length - 1]) ? "budget" : null;
}

/** Form values -> distill params of the API. */
export function distillParams(form) {
  const v = readForm(form);
  const params = {};
  for (const key of ["lr", "min_lr", "warmup", "temperature", "ce_weight", "teacher_correction_steps", "batch_size", "seq_len", "val_every", "checkpoint_every"]) {
    if (v[key] !== undefined) params[key] = v[key];
  }
  if (v.budget !== undefined) params[v.budget_kind === "tokens" ? "tokens" : "steps"] = v.budget;
  if (v.dataset_id) params.dataset_id = Number(v.dataset_id);
  if (v.device) params.device = v.device;
  if (v.weights_dtype) params.weights_dtype = v.weights_dtype;
  if (v.gpus > 1) params.gpus = v.gpus;
  if (v.nodes > 1) params.nodes = v.nodes;
  Object.assign(params, gangWaitParam(v));
  params.baseline = !!v.baseline;
  params.gradient_checkpointing = !!v.gradient_checkpointing;
  return params;
}
