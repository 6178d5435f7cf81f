// The planner panel beside the heatmaps: live summary (counted locally on every click), validation
// messages (local at once, the server's GQA advice debounced), fill-to-target, save, preview, student.

import { api, showError } from "../api.js";
import { fitPositions, flopsContext, localMessages, planStats, resultingShape } from "../costmodel.js";
import { debounce, h, mount, toast } from "../dom.js";
import { bytes, compact, flops, int, parseCount, pct, sig } from "../format.js";
import { href, setQuery } from "../router.js";
import { subscribe } from "../sse.js";
import { field, progressBar, readForm } from "./widgets.js";
import { memoryLine, queueFor } from "./memline.js";
import { previewNeed, pruneFit, pruneModes, pruneModesOn, pruneWhere, sizedWorkers } from "../jobmemory.js";
import { fitLine } from "../memplan.js";
import { protocolNote } from "./protocol.js";
import { documentsRead, serverConfig } from "../serverconfig.js";
import { draftKey, dropDraft, keepDraft } from "../plandraft.js";
import { normalisePlan, samePlan } from "../planstate.js";

/** What a quick preview reads: blocks of calibration text (POST /plans/{id}/preview `samples`, `seq_len`). */
export const QUICK_PREVIEW = { samples: 16, seq_len: 128 };

/** A width rounded to a multiple of `m` (hardware-friendly: 64 / 128 for tensor cores), never above
 * `max` (the teacher's width) nor below one multiple; `down` for widths a budget chose (stay under it). */
export function roundWidth(n, m, max, down = false) {
  if (!m || n % m === 0) return n;
  let r = (down ? Math.floor(n / m) : Math.round(n / m)) * m;
  if (r > max) r = Math.floor(max / m) * m;
  return r >= m ? r : n; // a width smaller than one multiple stays as asked
}

/** The "Create student" memory line: where the cut fits in the mode each worker would run it, else the
 * nearest out_of_core exactly as the API's 409 names it. `both`: jobmemory.pruneModes; `workers`: the
 * job's queue's, most memory first (jobmemory.sizedWorkers). */
export function pruneLine(both, workers, requested) {
  if (!workers.length) {
    const needed = Math.min(...pruneModesOn({}, requested, 0).map((m) => both[m])); // either mode when unknown
    return { text: `needs ${bytes(needed)} (no live worker reports its memory)`, fits: null };
  }
  const fit = pruneFit(both, both.teacher_bytes, workers, requested);
  const head = `needs ${bytes(fit.need)} ${pruneWhere(fit.mode)}`;
  if (fit.fitting.length) {
    const first = fit.fitting[0];
    // A worker's mode is said only where it is not the headline's ("auto" may resolve per worker).
    const names = fit.fitting.map((f) => `${f.name} (${bytes(f.bytes)}${f.mode === first.mode ? "" : `, ${MODE_NAMES[f.mode]}`})`);
    return { text: `needs ${bytes(both[first.mode])} ${pruneWhere(first.mode)}; fits ${names.length} x ${names.join(", ")}`, fits: true, mode: first.mode };
  }
  const [best, name] = fit.largest;
  const far = `${head}; fits no live worker (largest: ${bytes(best)} on ${name})`;
  const near = fit.nearest;
  if (!near) return { text: `${far}; no smaller setting fits either`, fits: false, mode: fit.mode };
  return { text: `${far}; nearest setting that fits: out_of_core=${near.out_of_core} (${bytes(near.need)} ${pruneWhere(near.mode)})`, fits: false, mode: fit.mode };
}

/** POST /students names its student `name`: here that is the student name input (the plan's is `name`). */
const STUDENT_FIELDS = { fieldFor: (path) => (path[path.length - 1] === "name" ? "student_name" : null) };

const MODE_NAMES = { in_memory: "in memory", out_of_core: "out of core" };

/** What the cut needs read the other way than the line's headline (`mode`; both when it is unknown). */
function otherModeNote(both, mode) {
  const other = (m) => `${MODE_NAMES[m]}: ${bytes(both[m])}`;
  if (!mode) return `${other("in_memory")}; ${other("out_of_core")}`;
  return other(mode === "in_memory" ? "out_of_core" : "in_memory");
}

export class Planner {
  /** ctx: {run, teacher, state (PlanState), agg: () => ({batch, seq}), alive: () => bool} */
  constructor(ctx) {
    this.ctx = ctx;
    this.spec = ctx.teacher.spec;
    this.saved = null; // the Plan row this draft was loaded from / saved as
    this.takenNames = new Set(); // the teacher's plan names: the label names the default a save will use
    this.serverMessages = [];
    this.el = h("section.panel.sticky", { dataset: { testid: "planner" } });
    // The plan's headline in one line, for the one-column layout (app.css hides it beside the maps):
    // the planner then sits below every map, and this strip stays in sight while cells are clicked.
    this.strip = h("div.plan-strip", { dataset: { testid: "plan-strip" } });
    this._build();
    this.validate = debounce(() => this._validateRemote(), 350);
    ctx.state.subscribe(() => {
      this._keepDraft();
      this.update();
    });
    this.update();
    this.freeDefaultName().catch(() => {}); // fills takenNames for the label; a save asks again anyway
    // The panel's height follows the part of the window below its top, so its foot (the actions) is in
    // sight before the page is scrolled far enough for the panel to stick (audit 14).
    this.fitToWindow = () => {
      const top = Math.max(56, this.el.getBoundingClientRect().top);
      this.el.style.setProperty("--visible-height", `${Math.max(240, window.innerHeight - top - 14)}px`);
    };
    window.addEventListener("scroll", this.fitToWindow, { passive: true });
    window.addEventListener("resize", this.fitToWindow);
    requestAnimationFrame(this.fitToWindow);
  }

  _build() {
    const spec = this.spec;
    this.undoBtn = h("button.small", { title: "Undo (Ctrl+Z)", dataset: { testid: "undo" }, onclick: () => this.ctx.state.undo() }, "↶ Undo");
    this.redoBtn = h("button.small", { title: "Redo (Ctrl+Shift+Z)", dataset: { testid: "redo" }, onclick: () => this.ctx.state.redo() }, "↷ Redo");
    this.clearBtn = h("button.small", { title: "Keep everything", onclick: () => this.ctx.state.clear() }, "Clear");
    this.summary = h("div", { dataset: { testid: "plan-summary" } });
    this.messages = h("ul.messages", { dataset: { testid: "plan-messages" } });

    // ---- fill to target ----
    // A pruned (non-uniform) teacher: a per-layer target can keep at most its narrowest layer's width.
    const narrowest = (key) => Math.min(spec[key], ...(spec.layers || []).map((s) => s[key]));
    const of = (key) => (spec.uniform === false && narrowest(key) < Math.max(...spec.layers.map((s) => s[key])) ? `≤ ${narrowest(key)}, narrowest` : `of ${spec[key]}`);
    this.fillErr = h("div.error-msg");
    this.fillForm = h("form.stack", { dataset: { testid: "fill-form" } },
      h("div.form-grid", { style: { gridTemplateColumns: "1fr 1fr" } },
        field({ name: "num_layers", label: `Layers (of ${spec.num_layers})`, type: "number", min: 1, placeholder: String(spec.num_layers) }),
        field({ name: "layer_method", label: "Pick layers by", options: [["block", "block scan"], ["bi", "Block Importance"], ["drop", "drop loss"], ["angular", "angular distance (Gromov)"]], value: "block",
          title: "block: the contiguous block whose removal raised the loss least · angular: the contiguous block whose input and output point most alike (smallest arccos(cos)/π, Gromov et al.) · both need the run's block size k = layers dropped" }),
        field({ name: "heads_per_layer", label: `Heads / layer (${of("num_heads")})`, type: "number", min: 1, placeholder: String(narrowest("num_heads")) }),
        field({ name: "head_mode", label: "Heads removed", options: [["within_groups", "within KV groups"], ["whole_groups", "whole KV groups"]], value: "within_groups" }),
        field({ name: "intermediate_size", label: spec.num_experts ? `Expert FFN width (${of("intermediate_size")})` : `MLP size (${of("intermediate_size")})`, type: "number", min: 1, placeholder: String(narrowest("intermediate_size")) }),
        ...(spec.num_experts
          ? [
              field({ name: "experts_per_layer", label: `Experts / layer (of ${spec.num_experts}, top-${spec.experts_per_token})`, type: "number", min: spec.experts_per_token, placeholder: String(spec.num_experts) }),
              field({ name: "expert_metric", label: "Rank experts by", options: [["contribution", "contribution norm"], ["routed", "routed token share"], ["prob", "router probability"]], value: "contribution" }),
            ]
          : []),
        field({ name: "hidden_size", label: `Hidden (of ${spec.hidden_size})`, type: "number", min: 1, placeholder: String(spec.hidden_size) }),
        h("label.field", { style: { gridColumn: spec.num_experts ? "auto" : "1 / -1" } }, h("span", spec.num_experts ? "Total parameter budget" : "Parameter budget"), h("input", { name: "param_budget", placeholder: `e.g. 60% or ${compact(spec.params_total * 0.6)}` })),
        spec.num_experts ? h("label.field", h("span", "Active parameter budget"), h("input", { name: "active_param_budget", placeholder: `e.g. 80% or ${compact((spec.params_active || spec.params_total) * 0.8)}` })) : null,
        field({ name: "round_to", label: "Round widths", options: [["", "exact"], ["8", "to multiples of 8"], ["64", "to multiples of 64"], ["128", "to multiples of 128"]], value: "",
          title: "hardware-friendly sizes: matrix units run fastest on multiples of 64 / 128; the cost in parameters is shown after the fill" }),
      ),
      h("div.row", h("span.hint", "Marks the least important units; adjust by hand afterwards."), h("span.spacer"), h("button.primary", { type: "submit", dataset: { testid: "fill" } }, "Fill to target")),
      this.fillErr,
      h("div.hint", { dataset: { testid: "rounding-cost" } }),
      // The server's warnings on the filled widths (plan.fill_warnings): degenerate or off the multiples
      // of 8. The plan messages above are re-checked on every edit and do not hold them.
      h("ul.messages", { dataset: { testid: "fill-warnings" } }),
    );
    this.roundInfo = this.fillForm.querySelector("[data-testid=rounding-cost]");
    this.fillWarnings = this.fillForm.querySelector("[data-testid=fill-warnings]");
    this.fillForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.fill();
    });

    // ---- save / preview / student ----
    this.nameInput = h("input", { name: "name", value: `plan-${this.ctx.run.id}`, dataset: { testid: "plan-name" }, style: { flex: "1" } });
    this.nameInput.addEventListener("input", () => this._previewLabel());
    this.saveErr = h("div.error-msg");
    this.savedInfo = h("span.hint");
    // A saved plan edited and not saved again: said at the top, with the way back (audit 15).
    this.unsavedNote = h("div.note.unsaved", { dataset: { testid: "unsaved" }, hidden: true });
    this.previewBox = h("div.preview-box", { dataset: { testid: "preview" } });
    this.studentName = h("input", { name: "student_name", placeholder: "student name", style: { flex: "1" }, dataset: { testid: "student-name" } });
    // How the cut reads the teacher: auto = tensor by tensor from its checkpoint when it is big (API out_of_core).
    this.surgery = h("select", { name: "out_of_core", dataset: { testid: "out-of-core" }, title: "auto: cut tensor by tensor from the checkpoint when the teacher is bigger than the worker's threshold (PRUNESCOPE_OUT_OF_CORE_THRESHOLD_GB), else load it; out of core: never build the teacher (peak RAM ~ one tensor); in memory: load it whole" },
      h("option", { value: "auto" }, "auto (out of core when big)"), h("option", { value: "always" }, "tensor by tensor (out of core)"), h("option", { value: "never" }, "whole, in memory"));
    this.previewBtn = h("button", { onclick: () => this.preview(), dataset: { testid: "preview-btn" } }, "Preview perplexity");
    // On the teacher's protocol the preview's teacher number is its evaluations' (comparable, measured once
    // per protocol) but it reads every window of the protocol's documents: minutes on a CPU. A quick look
    // reads QUICK_PREVIEW blocks of calibration text instead (the API's preview defaults).
    const protocol = this.ctx.teacher.eval_protocol;
    // A teacher with fewer positions reads shorter blocks: the server refuses more than it has.
    this.quickPreview = { ...QUICK_PREVIEW, seq_len: fitPositions(spec, QUICK_PREVIEW.seq_len) };
    const docs = (n) => `on the teacher's protocol (${n} doc${n === 1 ? "" : "s"})`;
    const onProtocol = h("option", { value: "protocol", dataset: { testid: "preview-on-protocol" } }, docs(protocol?.max_documents ?? 64));
    // The documents it reads: the split may hold fewer than the protocol's "first N" (audit 24).
    serverConfig().then((config) => { onProtocol.textContent = docs(documentsRead(protocol?.max_documents ?? 64, { datasetId: protocol?.dataset_id, split: protocol?.split ?? "test" }, config)); }).catch(() => {});
    this.previewOn = h("select", { dataset: { testid: "preview-on" }, title: "what the preview reads: the teacher's evaluation protocol (the number its evaluations report) or a quick sample" },
      onProtocol,
      h("option", { value: "quick" }, `quick: ${this.quickPreview.samples} × ${this.quickPreview.seq_len} tokens`));
    // What the preview job needs (the teacher, then the masked teacher, a batch of 8 blocks).
    const context = Math.max(protocol?.context || 128, this.quickPreview.seq_len);
    this.previewMemory = memoryLine(h("div"), (_, workers) => {
      if (!this.spec) return null;
      const queue = queueFor("auto", workers);
      return fitLine(() => previewNeed(this.spec, { seq_len: context, device: queue === "gpu" ? "cuda" : "cpu" }), {}, workers, queue);
    });
    this.previewMemory.dataset.testid = "preview-memory";
    // What the prune job needs where each worker would cut it (memcheck.check_prune, jobmemory.pruneFit):
    // out of core in the host's RAM (a GPU worker's too), in memory on the device; "auto" as each worker
    // resolves it (its threshold, else half its free RAM); the 409's nearest out_of_core when none fits.
    this.surgeryRow = h("div.row.tight", { style: { marginTop: "4px" } }, h("span.hint", "read the teacher"), this.surgery);
    this.studentMemory = memoryLine(this.surgeryRow, (_, workers) => {
      if (!this.spec || !this.ctx.state?.plan) return null;
      const { hidden, layers } = resultingShape(this.spec, this.ctx.state.plan);
      const student = { ...this.spec, hidden_size: hidden, num_layers: layers.length, layers };
      const both = pruneModes(this.spec, student);
      const line = pruneLine(both, sizedWorkers(workers, queueFor("auto", workers)), this.surgery.value);
      return { ...line, text: `${line.text} · ${otherModeNote(both, line.mode)}` };
    });
    this.studentMemory.dataset.testid = "student-memory";
    this.studentErr = h("div.error-msg");
    this.studentInfo = h("div");

    // Saved plans of this teacher: picking one opens it (the URL then names it).
    this.plansSelect = h("select", { dataset: { testid: "saved-plans" }, onchange: (ev) => {
      if (ev.target.value) location.hash = href("explore", [this.ctx.run.id], { plan: ev.target.value });
    } }, h("option", { value: "" }, "saved plans…"));
    api.get(`/plans?teacher_id=${this.ctx.teacher.id}`).then((plans) => {
      for (const p of plans) this.plansSelect.append(h("option", { value: p.id, selected: p.id === this.saved?.id }, `#${p.id} ${p.name} (v${p.version})${p.importance_run_id === this.ctx.run.id ? "" : ` · run ${p.importance_run_id ?? "–"}`}`));
    }).catch(() => {});

    mount(this.el,
      h("header", h("h2", "Plan"), this.undoBtn, this.redoBtn, this.clearBtn),
      h("div.row.tight", { style: { marginBottom: "8px" } }, this.plansSelect),
      this.unsavedNote,
      this.summary,
      this.messages,
      h("h3.section-title", "Fill to target"),
      this.fillForm,
      h("h3.section-title", "Save & try"),
      this.previewMemory,
      this.previewBox,
      this.surgeryRow,
      this.studentMemory,
      this.studentInfo,
      h("div.hint", { style: { marginTop: "10px" } },
        "Click a cell to mark it, drag for a box, click a layer label to drop it. ", h("kbd", "Ctrl"), "+", h("kbd", "Z"), " undo, ", h("kbd", "Ctrl"), "+", h("kbd", "Shift"), "+", h("kbd", "Z"), " redo. ",
        h("span.legend-mark"), " = marked for removal."),
      // The actions stay in sight at the panel's foot while the panel scrolls (audit 14: at 1440 x 900
      // they sat below its fold, inside its own scroll).
      this.actions = h("div.plan-actions", { dataset: { testid: "plan-actions" } },
        h("div.row.tight", this.nameInput, h("button", { onclick: () => this.save(), dataset: { testid: "save-plan" } }, "Save plan")),
        this.savedInfo,
        this.saveErr,
        h("div.row.tight", this.previewBtn, this.previewOn),
        h("div.row.tight", this.studentName, h("button.primary", { onclick: () => this.createStudent(), dataset: { testid: "create-student" } }, "Create student")),
        this.studentErr),
    );
  }

  /** Recount everything locally: this runs on every click, so it must stay well under 100 ms. */
  update() {
    const t0 = performance.now();
    const { state } = this.ctx;
    const plan = state.plan;
    const context = flopsContext(this.spec); // the FLOPs' context: within the teacher's positions
    const stats = planStats(this.spec, plan, context);
    this.surgeryRow?.dispatchEvent(new Event("change")); // the student's memory line follows the plan
    const spec = this.spec;
    const ratio = (a, b) => (b ? a / b : 0);
    const headsKept = stats.layers.map((s) => s.num_heads);
    const mlpKept = stats.layers.map((s) => s.intermediate_size);
    const range = (xs) => (xs.length ? (Math.min(...xs) === Math.max(...xs) ? String(xs[0]) : `${Math.min(...xs)}–${Math.max(...xs)}`) : "–");
    // data-value carries the exact number (tests compare it with plan_stats; people read the text).
    const exact = { "params-total": stats.params_total, "params-nonemb": stats.params_non_embedding, "params-active": stats.params_active, flops: stats.flops_per_token, kvcache: stats.kv_cache_bytes_per_token };
    const expertsKept = stats.layers.map((s) => s.num_experts || 0);
    const metric = (label, value, delta, testid, extra = null, wide = false) =>
      h(`div.metric${wide ? ".wide" : ""}`, { dataset: { testid, value: exact[testid] ?? "" } }, h("div.label", label), h("div.value", value), delta ? h("div.delta", delta) : null, extra);
    mount(this.summary,
      h("div.summary-big",
        metric("Parameters", compact(stats.params_total), `${pct(stats.fraction_of_teacher)} of teacher (${compact(stats.teacher_params_total)}) · ${int(stats.params_total)}`, "params-total",
          h("div.budget-bar", h("i", { style: { width: `${Math.min(100, 100 * stats.fraction_of_teacher)}%` } })), true),
        // Mixture of experts: what one token runs (router + top-k experts) next to the total.
        spec.num_experts ? metric("Active / token", compact(stats.params_active), `${pct(ratio(stats.params_active, stats.teacher_params_active))} of teacher (${compact(stats.teacher_params_active)}) · top-${spec.experts_per_token}`, "params-active") : null,
        metric("Non-embedding", compact(stats.params_non_embedding), pct(ratio(stats.params_non_embedding, stats.teacher_params_non_embedding)), "params-nonemb"),
        metric("FLOPs / token", flops(stats.flops_per_token), `${pct(ratio(stats.flops_per_token, stats.teacher_flops_per_token))} @${context} ctx`, "flops"),
        metric("KV cache / token", bytes(stats.kv_cache_bytes_per_token), pct(ratio(stats.kv_cache_bytes_per_token, stats.teacher_kv_cache_bytes_per_token)), "kvcache"),
        metric("Shape", `${stats.num_layers}L · ${stats.hidden_size}d`, h("span", `heads ${range(headsKept)}/${spec.num_heads}`, h("br"), spec.num_experts ? `experts ${range(expertsKept)}/${spec.num_experts} × FFN ${range(mlpKept)}/${spec.intermediate_size}` : `MLP ${range(mlpKept)}/${spec.intermediate_size}`), "shape"),
      ),
    );
    mount(this.strip,
      h("span.label", "Plan"),
      h("b.num", { dataset: { testid: "strip-params", value: stats.params_total } }, compact(stats.params_total)),
      h("span", `params · ${pct(stats.fraction_of_teacher)} of teacher`),
      h("span.faint", `${stats.num_layers}L · ${stats.hidden_size}d · MLP ${range(mlpKept)}`),
      h("span.spacer"),
      h("a", { href: "#", dataset: { testid: "strip-to-plan" }, onclick: (ev) => { ev.preventDefault(); this.el.scrollIntoView({ block: "start" }); } }, "save, preview, cut ↓"));
    this._previewLabel();
    this._previewStale();
    this._unsavedNote();
    this.undoBtn.disabled = !state.canUndo();
    this.redoBtn.disabled = !state.canRedo();
    this.local = localMessages(spec, plan);
    this.serverMessages = [];
    this.serverChecked = false;
    this._renderMessages(true);
    this.validate();
    this.lastUpdateMs = performance.now() - t0;
    this.el.dataset.updateMs = this.lastUpdateMs.toFixed(2);
  }

  _renderMessages(pending = false) {
    // The local checks say the obvious at once; once the server has checked the plan its messages
    // (validate_plan: each problem once, in its words, with the valid range) replace them.
    const all = this.serverChecked ? this.serverMessages : [...this.local, ...this.serverMessages];
    const items = all.map((m) => h(`li.${m.level}`, m.field ? h("span.field", m.field) : null, m.text));
    if (!all.length) items.push(h("li.ok", pending ? "checking…" : "No problems: the plan fits the model."));
    mount(this.messages, items);
    this.messages.dataset.state = pending ? "pending" : "done";
  }

  async _validateRemote() {
    const plan = this.ctx.state.plan;
    try {
      const res = await api.post("/plans/validate", { teacher_id: this.ctx.teacher.id, plan });
      if (plan !== this.ctx.state.plan || !this.ctx.alive()) return; // an edit happened meanwhile
      this.serverMessages = res.messages || [];
      this.serverChecked = true;
      this.serverStats = res.stats;
      this._renderMessages(false);
    } catch (err) {
      if (plan !== this.ctx.state.plan) return;
      this.serverMessages = [{ level: "warning", field: "", text: `could not validate on the server: ${err.message}` }];
      this._renderMessages(false);
    }
  }

  async fill() {
    const v = readForm(this.fillForm);
    const targets = {};
    for (const key of ["num_layers", "heads_per_layer", "intermediate_size", "hidden_size", "experts_per_layer"]) if (v[key] !== undefined) targets[key] = v[key];
    if (targets.num_layers !== undefined) targets.layer_method = v.layer_method;
    if (targets.heads_per_layer !== undefined) targets.head_mode = v.head_mode;
    for (const budget of ["param_budget", "active_param_budget"]) {
      if (v[budget] === undefined) continue;
      const total = budget === "active_param_budget" ? this.spec.params_active || this.spec.params_total : this.spec.params_total;
      const n = parseCount(v[budget], total);
      if (!Number.isFinite(n) || n <= 0) {
        showError(this.fillErr, { fields: { [budget]: "write a share of the teacher or a number of parameters, e.g. 70%, 3.5M or 3500000" } }, this.fillForm);
        return;
      }
      targets[budget] = n;
    }
    if (!Object.keys(targets).length) {
      showError(this.fillErr, { message: "Set at least one target (layers, heads per layer, MLP size, hidden size or a parameter budget)." }, this.fillForm);
      return;
    }
    const { batch, seq } = this.ctx.agg();
    const request = (t) => {
      const body = { teacher_id: this.ctx.teacher.id, importance_run_id: this.ctx.run.id, targets: t, batch, seq };
      if (v.expert_metric) body.expert_metric = v.expert_metric;
      return api.post("/plans/fill", body);
    };
    mount(this.roundInfo);
    mount(this.fillWarnings);
    delete this.roundInfo.dataset.delta;
    try {
      const round = Number(v.round_to) || 0;
      const exact = await request(targets);
      const res = round ? await this._rounded(request, targets, exact, round) : exact;
      showError(this.fillErr, null, this.fillForm);
      this.ctx.state.replace(res.plan, "fill");
      const warnings = (res.messages || []).filter((m) => m.level === "warning" && m.field.startsWith("targets."));
      mount(this.fillWarnings, warnings.map((m) => h("li.warning", h("span.field", m.field), m.text)));
      toast(warnings.length ? "Plan filled to target, with warnings: see under the form." : "Plan filled to target: adjust it by hand if you like.");
    } catch (err) {
      showError(this.fillErr, err, this.fillForm);
    }
  }

  /** The fill's answer with its MLP and hidden widths rounded to multiples of `m`, and what that costs
   * (parameters against the exact fill) on the line under the form. Widths the user typed round to the
   * nearest multiple; widths a parameter budget chose round down, so the budget still holds. */
  async _rounded(request, targets, exactRes, m) {
    const spec = this.spec;
    const exact = planStats(spec, exactRes.plan);
    const widest = (stats) => Math.max(...stats.layers.map((l) => l.intermediate_size));
    const budget = targets.param_budget !== undefined || targets.active_param_budget !== undefined;
    const now = { intermediate_size: widest(exact), hidden_size: exact.hidden_size };
    const teacherMax = { intermediate_size: Math.max(spec.intermediate_size, ...(spec.layers || []).map((l) => l.intermediate_size)), hidden_size: spec.hidden_size };
    const changed = {};
    for (const key of ["intermediate_size", "hidden_size"]) {
      const r = roundWidth(now[key], m, teacherMax[key], budget && targets[key] === undefined);
      if (r !== now[key]) changed[key] = r;
    }
    if (!Object.keys(changed).length) {
      mount(this.roundInfo, `widths already multiples of ${m} (or smaller than one): nothing to round`);
      this.roundInfo.dataset.delta = "0";
      return exactRes;
    }
    const rest = Object.fromEntries(Object.entries(targets).filter(([k]) => k !== "param_budget" && k !== "active_param_budget"));
    const res = await request({ ...rest, ...now, ...changed });
    const rounded = planStats(spec, res.plan);
    const delta = rounded.params_total - exact.params_total;
    const names = { intermediate_size: spec.num_experts ? "expert FFN" : "MLP", hidden_size: "hidden" };
    const what = Object.entries(changed).map(([k, r]) => `${names[k]} ${now[k]} → ${r}`).join(", ");
    const sign = delta >= 0 ? "+" : "−";
    mount(this.roundInfo, `rounded to multiples of ${m}: ${what} · ${sign}${int(Math.abs(delta))} parameters (${sign}${pct(Math.abs(delta) / exact.params_total, 2)}) vs the exact fill (${compact(exact.params_total)} → ${compact(rounded.params_total)})`);
    this.roundInfo.dataset.delta = String(delta);
    return res;
  }

  /** Save as new, or update the loaded plan (optimistic concurrency on `version`). */
  async save() {
    const plan = this.ctx.state.plan;
    try {
      const typed = this.nameInput.value.trim();
      const name = this._isDefaultName(typed) ? await this.freeDefaultName() : typed;
      let row;
      if (this.saved && this.saved.name === name) {
        row = await api.put(`/plans/${this.saved.id}`, { version: this.saved.version, plan, name });
      } else {
        row = await api.post("/plans", { teacher_id: this.ctx.teacher.id, importance_run_id: this.ctx.run.id, name, plan });
      }
      this.takenNames.add(row.name);
      // Saved under another plan (a new name): the edits of the plan opened are in this one now.
      if (this.saved && this.saved.id !== row.id) dropDraft(draftKey({ planId: this.saved.id }));
      this.setSaved(row);
      this.savedPlan = plan;
      this._keepDraft();
      this._unsavedNote();
      showError(this.saveErr, null, this.actions);
      toast(`Saved plan "${row.name}" (v${row.version}).`);
      return row;
    } catch (err) {
      showError(this.saveErr, err, this.actions); // a taken name is said under the name field
      return null;
    }
  }

  /** `plan-<run>` (the name field's default), or the first of `plan-<run> (2)`... the teacher has no plan
   * called: plan names are unique per teacher (a name typed by hand that is taken gets the server's 409). */
  async freeDefaultName() {
    const plans = await api.get(`/plans?teacher_id=${this.ctx.teacher.id}&limit=1000`);
    this.takenNames = new Set(plans.map((p) => p.name));
    this._previewLabel();
    return this._firstFreeDefault();
  }

  /** The first free default among the names known taken (synchronous: the preview label uses it). */
  _firstFreeDefault() {
    const base = `plan-${this.ctx.run.id}`;
    let name = base;
    for (let n = 2; this.takenNames.has(name); n++) name = `${base} (${n})`;
    return name;
  }

  /** An empty name field, or the untouched default (not the loaded plan's own name): a save picks a free one. */
  _isDefaultName(typed) {
    return !typed || (typed === `plan-${this.ctx.run.id}` && this.saved?.name !== typed);
  }

  /** The name a save would use now. */
  _nameToSave() {
    const typed = this.nameInput.value.trim();
    return this._isDefaultName(typed) ? this._firstFreeDefault() : typed;
  }

  /** The preview runs on a saved plan: with unsaved edits the button says it saves first (never silently). */
  _previewLabel() {
    if (!this.previewBtn) return;
    const clean = this._clean();
    const name = this._nameToSave();
    const target = this.saved && this.saved.name === name ? `version ${this.saved.version + 1} of "${name}"` : `a new plan "${name}"`;
    this.previewBtn.textContent = clean ? "Preview perplexity" : "Save & preview";
    this.previewBtn.dataset.saves = clean ? "" : "1";
    this.previewBtn.title = clean
      ? "Masked perplexity of this saved plan on the unpruned teacher: a what-if before cutting"
      : `The preview runs on a saved plan: this saves the draft as ${target}, then previews it`;
  }

  /**
   * The plan on screen is saved plan `row` (opened or just saved). `draft`: the unsaved edits this browser
   * kept of it and opened instead ({plan, version}: plandraft.readDraft), null when none.
   */
  setSaved(row, draft = null) {
    this.saved = row;
    this.savedPlan = normalisePlan(row.plan);
    this.draftVersion = draft ? draft.version : null;
    this._unsavedNote();
    queueMicrotask(() => this._previewLabel());
    this.nameInput.value = row.name;
    mount(this.savedInfo, `saved as #${row.id} v${row.version} · `, h("a", { href: href("explore", [this.ctx.run.id], { plan: row.id }) }, "link"));
    setQuery({ plan: row.id });
  }

  /** The saved row for the current plan, saving first when there are unsaved edits. */
  async ensureSaved() {
    if (this._clean()) return this.saved;
    return this.save();
  }

  async preview() {
    const saving = !this._clean();
    const row = await this.ensureSaved();
    if (!row) return;
    if (saving) mount(this.savedInfo, `saved as #${row.id} v${row.version} to preview it · `, h("a", { href: href("explore", [this.ctx.run.id], { plan: row.id }) }, "link"));
    let job;
    try {
      job = await api.post(`/plans/${row.id}/preview`, this.previewOn.value === "quick" ? this.quickPreview : {});
    } catch (err) {
      mount(this.previewBox, h("div.error-msg", err.message));
      return;
    }
    if (this.closePreview) this.closePreview(); // an earlier preview's stream must not overwrite this one
    this.previewed = this.ctx.state.plan;
    // Which plan and job the box shows: it stays while the plan is edited (marked stale then).
    const title = () => h("div.hint", { dataset: { testid: "preview-of" } }, `preview of "${row.name}" v${row.version} · `,
      h("a", { href: href("job", [job.id]), style: { whiteSpace: "nowrap" } }, `job #${job.id}`), h("span.stale-note", " · the plan has changed since"));
    const render = (j) => {
      this._previewStale();
      if (j.status === "succeeded" && j.result) {
        const r = j.result;
        mount(this.previewBox, title(), h("div.kv", { style: { marginTop: "6px" } },
          h("dt", "teacher ppl"), h("dd", h("span", { dataset: { testid: "ppl-teacher" } }, sig(r.ppl_teacher)),
            // Measured once per weights and protocol (worker/teacher_perplexity.py): say by which job.
            r.teacher_from_job ? [" ", h("a.hint", { href: href("job", [r.teacher_from_job]), dataset: { testid: "ppl-teacher-from" } }, `from job #${r.teacher_from_job}`)] : null),
          h("dt", "masked ppl"), h("dd", { dataset: { testid: "ppl-masked" } }, `${sig(r.ppl_masked)}  (×${sig(r.ratio ?? r.ppl_masked / r.ppl_teacher, 3)})`),
          h("dt", "measured"), h("dd", protocolNote(r.protocol, { testid: "preview-protocol" }) ?? "–")));
      } else if (j.status === "failed" || j.status === "cancelled") {
        mount(this.previewBox, title(), h("div.error-msg", `Preview ${j.status}: ${j.error || "no reason given"}`));
      } else {
        mount(this.previewBox, title(), h("div", { style: { marginTop: "6px" } }, h("span.hint", "preview running…"), progressBar(j)));
      }
    };
    render(job);
    const close = subscribe(`/jobs/${job.id}/events`, { status: render });
    this.closePreview = close;
  }

  /** Whether the plan on screen is a saved plan as saved (remembered per plan: this runs on every click). */
  _clean() {
    if (!this.saved) return false;
    const now = this.ctx.state.plan;
    if (this._cleanOf?.plan !== now || this._cleanOf?.saved !== this.savedPlan) {
      this._cleanOf = { plan: now, saved: this.savedPlan, clean: samePlan(now, this.savedPlan) };
    }
    return this._cleanOf.clean;
  }

  /** Keep the plan on screen in this browser (plandraft.js): a saved plan's edits until saved or reverted. */
  _keepDraft() {
    const plan = this.ctx.state.plan;
    if (!this.saved) return keepDraft(draftKey({ runId: this.ctx.run.id }), plan);
    const key = draftKey({ planId: this.saved.id });
    if (this._clean()) dropDraft(key);
    else keepDraft(key, plan, this.draftVersion ?? this.saved.version);
  }

  /** "Unsaved changes to ..." with a revert, while the saved plan opened is edited. */
  _unsavedNote() {
    const dirty = this.saved && !this._clean();
    this.unsavedNote.hidden = !dirty;
    if (!dirty) {
      this.draftVersion = null; // saved or reverted: the next edits are made on the version saved now
      return mount(this.unsavedNote);
    }
    const { name, version } = this.saved;
    const older = this.draftVersion !== null && this.draftVersion !== version ? ` (made on v${this.draftVersion}; the saved plan is v${version} now)` : "";
    mount(this.unsavedNote,
      h("b", "Unsaved changes"), ` to "${name}" v${version}${older}, kept in this browser. `,
      h("button.small", { type: "button", dataset: { testid: "revert-plan" }, title: "Back to the plan as saved (undoable)", onclick: () => this.ctx.state.replace(this.savedPlan, "revert") }, "Revert to saved"));
  }

  /** The preview box keeps its result when the plan is edited, marked as being of an earlier plan. */
  _previewStale() {
    this.previewBox.dataset.stale = this.previewed && this.previewed !== this.ctx.state.plan ? "1" : "";
  }

  async createStudent() {
    const row = await this.ensureSaved();
    if (!row) return;
    const name = this.studentName.value.trim() || `${row.name}-student`;
    try {
      const student = await api.post("/students", { plan_id: row.id, name, out_of_core: this.surgery.value });
      showError(this.studentErr, null, this.actions, STUDENT_FIELDS);
      // The line follows the cut's live status events: being cut -> cut (or failed / cancelled).
      const said = { succeeded: "is cut", failed: "could not be cut", cancelled: "was not cut (cancelled)" };
      const render = (j) => {
        const status = j?.status || "queued";
        const reason = status === "failed" && j.error ? `: ${j.error}` : "";
        const link = status === "succeeded" ? h("a", { href: href("runs", [], { student: student.id }), dataset: { testid: "student-link" } }, "Distill it →") : status in said ? null : h("a", { href: href("runs", [], { student: student.id }), dataset: { testid: "student-link" } }, "Follow it →");
        mount(this.studentInfo, h("div.hint", { style: { marginTop: "6px" }, dataset: { testid: "student-info", status } }, `Student #${student.id} "${student.name}" ${said[status] || "is being cut"}${reason}. `, link));
      };
      render(null);
      if (this.closeCut) this.closeCut();
      this.closeCut = student.job_id ? subscribe(`/jobs/${student.job_id}/events`, { status: render }) : null;
    } catch (err) {
      showError(this.studentErr, err, this.actions, STUDENT_FIELDS);
    }
  }

  destroy() {
    window.removeEventListener("scroll", this.fitToWindow);
    window.removeEventListener("resize", this.fitToWindow);
    this.validate.cancel();
    if (this.closePreview) this.closePreview();
    if (this.closeCut) this.closeCut();
  }
}
