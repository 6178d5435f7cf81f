// The runs table (what W&B / TensorBoard users expect): search and filters, rename, tags, delete,
// duration and hyperparameter columns, each run's headline number with its protocol, any runs' curves
// overlaid, CSV / JSON export of the selected (or shown) runs.

import { api, authUrl, request, showError } from "../api.js";
import { h, mount, segmented, toast } from "../dom.js";
import { compact, duration, sig, when } from "../format.js";
import { go } from "../router.js";
import { baseLayout, PLOT_CONFIG, plotlyReady, SERIES_COLORS } from "../plots.js";
import { mismatchMark } from "./protocol.js";
import { progressBar, statusBadge, statusReason } from "./widgets.js";

const ACTIVE = ["queued", "running"];

// Hyperparameter columns: [header, value of params (blank when the kind has none), title]
const HP_COLUMNS = [
  ["budget", (p) => (p.tokens ? `${compact(p.tokens)} tok` : p.steps ?? null), "steps (or tokens) of training"],
  ["lr", (p) => (p.lr !== undefined ? String(p.lr) : null), "peak learning rate"],
  ["batch", (p) => p.batch_size ?? null, "batch size (global)"],
  ["seq", (p) => p.seq_len ?? null, "sequence length / evaluation window"],
  ["T", (p) => p.temperature ?? null, "distillation temperature"],
  ["data", (p) => (p.split ? `${p.split}${p.max_documents ? ` · ${p.max_documents} docs` : ""}` : p.dataset_id ? `dataset ${p.dataset_id}` : null), "evaluation split / dataset"],
];

const CURVE_METRICS = [["loss", "loss"], ["val_ppl", "val ppl"], ["val_loss", "val loss"], ["kd_loss", "KD loss"], ["ce_loss", "CE loss"]];

/** The number a run is about: [value, label, protocol]. */
function headline(j) {
  const r = j.result || {};
  if (j.kind === "evaluate" && r.perplexity) return [r.perplexity.perplexity ?? r.perplexity, "ppl", r.protocol || j.protocol];
  if (j.kind === "distill" && r.final_validation?.val_ppl !== undefined) return [r.final_validation.val_ppl, "val ppl", j.protocol];
  if (j.kind === "preview" && r.ppl_masked !== undefined) return [r.ppl_masked, "masked ppl", r.protocol || j.protocol];
  return [null, "", null];
}

export class RunsTable {
  /** ctx: the view's context (alive, onCleanup); onChange(): reload the view's data. */
  constructor(ctx, onChange) {
    this.ctx = ctx;
    this.onChange = onChange;
    this.jobs = [];
    this.students = [];
    this.teachers = [];
    this.filter = { q: "", kind: "", status: "", tag: "" };
    this.selected = new Set();
    this.metric = "loss";
    this.curves = new Map(); // job id -> {points, series}
    this.err = h("div.error-msg");
    this.search = h("input", { type: "search", placeholder: "search name, model, tag, #id…", dataset: { testid: "runs-search" }, oninput: () => { this.filter.q = this.search.value.trim().toLowerCase(); this.renderRows(); } });
    this.kindSel = this.select("kind", "runs-kind");
    this.statusSel = this.select("status", "runs-status");
    this.tagSel = this.select("tag", "runs-tag");
    this.exportCsv = h("a.btn", { dataset: { testid: "runs-export-csv" }, download: "prunescope-runs.csv" }, "Export CSV");
    this.exportJson = h("a.btn", { dataset: { testid: "runs-export-json" }, download: "prunescope-runs.json" }, "Export JSON");
    this.count = h("span.hint", { dataset: { testid: "runs-count" } });
    this.table = h("div.table-scroll");
    this.plot = h("div.plot", { dataset: { testid: "overlay-plot" }, style: { height: "300px" } });
    this.plotHint = h("div.empty", "Tick runs in the table to overlay their curves (any students, any teachers).");
    this.metricBar = h("span");
    this.el = h("div.stack",
      h("div.row.runs-toolbar", this.search, this.kindSel, this.statusSel, this.tagSel, this.count, h("span.spacer"), this.exportCsv, this.exportJson),
      this.err, this.table,
      h("div.overlay", h("header.row", h("h3", "Curves of the selected runs"), h("span.spacer"), this.metricBar), this.plotHint, this.plot));
    this.renderMetricBar();
  }

  select(key, testid) {
    return h("select", { dataset: { testid }, onchange: (ev) => { this.filter[key] = ev.target.value; this.renderRows(); } });
  }

  update({ jobs, students, teachers }) {
    this.jobs = jobs;
    this.students = students;
    this.teachers = teachers;
    const ids = new Set(jobs.map((j) => j.id));
    for (const id of [...this.selected]) if (!ids.has(id)) this.selected.delete(id);
    this.fillOptions(this.kindSel, "all kinds", [...new Set(jobs.map((j) => j.kind))], this.filter.kind);
    this.fillOptions(this.statusSel, "all statuses", [...new Set(jobs.map((j) => j.status))], this.filter.status);
    this.fillOptions(this.tagSel, "all tags", [...new Set(jobs.flatMap((j) => j.tags || []))].sort(), this.filter.tag);
    if (!this.editing) this.renderRows();
    this.drawCurves();
  }

  fillOptions(sel, all, values, current) {
    mount(sel, h("option", { value: "" }, all), values.map((v) => h("option", { value: v, selected: v === current }, v)));
  }

  modelName(j) {
    const s = this.students.find((x) => x.id === j.student_id);
    if (s) return s.name;
    if (j.student_id) return `student ${j.student_id}`;
    const t = this.teachers.find((x) => x.id === j.teacher_id);
    return t ? `${t.name} (teacher)` : "–";
  }

  defaultName(j) {
    return `${j.kind} · ${this.modelName(j)}`;
  }

  teacherProtocol(j) {
    return this.teachers.find((t) => t.id === j.teacher_id)?.eval_protocol || null;
  }

  shown() {
    const { q, kind, status, tag } = this.filter;
    return this.jobs.filter((j) => {
      if (kind && j.kind !== kind) return false;
      if (status && j.status !== status) return false;
      if (tag && !(j.tags || []).includes(tag)) return false;
      if (!q) return true;
      const text = [`#${j.id}`, j.name || "", this.defaultName(j), ...(j.tags || [])].join(" ").toLowerCase();
      return q.split(/\s+/).every((word) => text.includes(word));
    });
  }

  renderRows() {
    const rows = this.shown();
    this.count.textContent = `${rows.length} of ${this.jobs.length} runs${this.selected.size ? ` · ${this.selected.size} selected` : ""}`;
    const ids = (this.selected.size ? [...this.selected] : rows.map((j) => j.id)).join(",");
    for (const [a, format] of [[this.exportCsv, "csv"], [this.exportJson, "json"]]) {
      a.href = ids ? authUrl(`/runs/export?ids=${ids}&format=${format}`) : "#";
      a.title = `${format.toUpperCase()} of the parameters, protocol, result and every metric point of ${this.selected.size ? "the selected runs" : "the runs shown"}`;
    }
    if (!this.jobs.length) {
      mount(this.table, h("div.empty", "No run yet."));
      return;
    }
    const allTicked = rows.length > 0 && rows.every((j) => this.selected.has(j.id));
    const tickAll = h("input", { type: "checkbox", checked: allTicked, title: "select every run shown", dataset: { testid: "runs-select-all" }, onchange: (ev) => { for (const j of rows) ev.target.checked ? this.selected.add(j.id) : this.selected.delete(j.id); this.renderRows(); this.drawCurves(); } });
    mount(this.table, h("table.runs", { dataset: { testid: "runs-table" } },
      h("thead", h("tr", h("th", tickAll), h("th", "run"), h("th", "status"), h("th", "tags"), h("th.num", { title: "how long it ran (so far, while it runs)" }, "duration"),
        HP_COLUMNS.map(([name, , title]) => h("th.num", { title }, name)),
        h("th.num", { title: "its headline number (an evaluation's perplexity, a distillation's final validation perplexity); ≠ marks one measured on another protocol than its teacher's" }, "result"),
        h("th", "progress"), h("th", "created"), h("th", ""))),
      h("tbody", rows.map((j) => this.row(j)))));
  }

  row(j) {
    const tick = h("input", { type: "checkbox", checked: this.selected.has(j.id), dataset: { testid: "run-select" }, onclick: (ev) => ev.stopPropagation(), onchange: (ev) => { ev.target.checked ? this.selected.add(j.id) : this.selected.delete(j.id); this.renderRows(); this.drawCurves(); } });
    const [value, label, protocol] = headline(j);
    const stop = (fn) => (ev) => { ev.stopPropagation(); fn(); };
    const p = j.params || {};
    return h("tr.clickable", { dataset: { jobId: j.id }, class: this.selected.has(j.id) ? "selected" : "", onclick: () => go("job", [j.id]) },
      h("td", tick),
      h("td.run-name", this.nameCell(j)),
      h("td", statusBadge(j.status), statusReason(j, { inline: true })),
      h("td.tags", (j.tags || []).map((t) => h("span.chip", { dataset: { testid: "run-tag" } }, t, h("button.chip-x", { title: `remove tag ${t}`, onclick: stop(() => this.save(j, { tags: j.tags.filter((x) => x !== t) })) }, "×"))),
        h("button.ghost.small", { title: "add a tag", dataset: { testid: "run-add-tag" }, onclick: stop(() => this.editTag(j)) }, "+ tag")),
      h("td.num.nowrap", { dataset: { testid: "run-duration" } }, j.duration_s !== null && j.duration_s !== undefined ? duration(j.duration_s) : "–"),
      HP_COLUMNS.map(([name, get]) => h("td.num.nowrap", { dataset: { hp: name } }, get(p) ?? "–")),
      h("td.num.nowrap", { dataset: { testid: "run-result" } }, value !== null && value !== undefined ? [h("span", { title: protocol ? `${label} on ${protocol.id}: ${protocol.description}` : label }, `${sig(value, 4)}`), h("span.faint", ` ${label}`), mismatchMark(protocol, this.teacherProtocol(j))] : "–"),
      h("td", { style: { minWidth: "110px" } }, progressBar(j)),
      h("td.faint.nowrap", when(j.created_at)),
      h("td.nowrap", h("button.ghost.small", {
        dataset: { testid: "run-delete" },
        disabled: ACTIVE.includes(j.status),
        title: ACTIVE.includes(j.status) ? "cancel it first: a queued or running job cannot be deleted" : "delete the run with its metrics, logs, results and files",
        onclick: stop(() => this.remove(j)),
      }, "Delete")));
  }

  nameCell(j) {
    const name = h("span", { dataset: { testid: "run-name" } }, j.name || this.defaultName(j));
    return [h("span.mono.faint", `#${j.id} `), name,
      h("button.ghost.small", { title: "rename", dataset: { testid: "run-rename" }, onclick: (ev) => { ev.stopPropagation(); this.editName(j, name); } }, "✎")];
  }

  inlineInput(anchor, value, placeholder, onSave) {
    this.editing = true;
    const input = h("input.inline", { value, placeholder, dataset: { testid: "run-inline-input" }, onclick: (ev) => ev.stopPropagation() });
    const done = (save) => {
      if (!this.editing) return;
      this.editing = false;
      if (save) onSave(input.value.trim());
      else this.renderRows();
    };
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") done(true);
      if (ev.key === "Escape") done(false);
    });
    input.addEventListener("blur", () => done(false));
    anchor.replaceWith(input);
    input.focus();
    input.select();
  }

  editName(j, anchor) {
    this.inlineInput(anchor, j.name || "", this.defaultName(j), (name) => this.save(j, { name: name || null }));
  }

  editTag(j) {
    const cell = this.table.querySelector(`tr[data-job-id="${j.id}"] [data-testid=run-add-tag]`);
    this.inlineInput(cell, "", "tag", (tag) => (tag ? this.save(j, { tags: [...(j.tags || []), tag] }) : this.renderRows()));
  }

  async save(j, body) {
    try {
      const job = await request("PATCH", `/jobs/${j.id}`, body);
      Object.assign(j, job);
      showError(this.err, null);
    } catch (e) {
      showError(this.err, e);
    }
    this.renderRows();
    this.update({ jobs: this.jobs, students: this.students, teachers: this.teachers });
  }

  async remove(j) {
    if (!confirm(`Delete run #${j.id} (${j.name || this.defaultName(j)}) with its metrics, logs, results and files?`)) return;
    try {
      await api.del(`/jobs/${j.id}`);
      showError(this.err, null);
      this.selected.delete(j.id);
      toast(`Run #${j.id} deleted.`);
      this.onChange();
    } catch (e) {
      showError(this.err, e);
    }
  }

  renderMetricBar() {
    mount(this.metricBar, segmented(CURVE_METRICS, this.metric, (v) => { this.metric = v; this.drawCurves(); }, { dataset: { testid: "overlay-metric" } }));
  }

  async drawCurves() {
    const ids = [...this.selected];
    this.plotHint.hidden = ids.length > 0;
    this.plot.hidden = ids.length === 0;
    if (!ids.length) return;
    const Plotly = await plotlyReady();
    await Promise.all(ids.map(async (id) => {
      const job = this.jobs.find((x) => x.id === id);
      const cached = this.curves.get(id);
      if (cached && (cached.status === job?.status) && !ACTIVE.includes(job?.status)) return;
      try {
        const m = await api.get(`/jobs/${id}/metrics`);
        this.curves.set(id, { status: job?.status, series: m.series });
      } catch {
        this.curves.set(id, { status: job?.status, series: {} });
      }
    }));
    if (!this.ctx.alive) return;
    const traces = [];
    ids.forEach((id, i) => {
      const job = this.jobs.find((x) => x.id === id);
      const points = this.curves.get(id)?.series?.[this.metric] || [];
      if (!points.length || !job) return;
      const protocol = this.metric.startsWith("val_") && job.protocol ? ` (${job.protocol.id})` : "";
      traces.push({ x: points.map((p) => p.step), y: points.map((p) => p.value), name: `#${id} ${job.name || this.defaultName(job)}${protocol}`, mode: "lines", line: { color: SERIES_COLORS[i % SERIES_COLORS.length], width: 1.6 } });
    });
    this.plot.dataset.traces = String(traces.length);
    Plotly.react(this.plot, traces, baseLayout({ height: 300, xaxis: { title: { text: "step", font: { size: 10 } } }, yaxis: { type: this.metric.endsWith("ppl") ? "log" : "linear" } }), PLOT_CONFIG);
  }
}
