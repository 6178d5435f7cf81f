// The runs table (what W&B / TensorBoard users expect): search and filters, rename, tags, delete,
// duration and hyperparameter columns, each run's headline number with its protocol, any runs' curves
// overlaid, CSV / JSON export of the selected (or shown) runs.
//
// Search and filters run on the server over every job (GET /runs, a page at a time), so a run older
// than any page is found. While the server answers, the table shows the same filter applied to the runs
// it already knows (`known`), so typing feels immediate; the server's page then replaces it.

import { api, authUrl, qs, request, showError } from "../api.js";
import { h, mount, segmented, toast } from "../dom.js";
import { compact, duration, sig, when } from "../format.js";
import { href } from "../router.js";
import { baseLayout, logAxis, PLOT_CONFIG, plotlyReady, SERIES_COLORS } from "../plots.js";
import { stepTicks } from "./curves.js";
import { mismatchMark } from "./protocol.js";
import { linkRow, progressBar, rowLink, statusBadge, statusReason } from "./widgets.js";

const ACTIVE = ["queued", "running"];
const PAGE = 100; // runs per page
const SEARCH_DELAY_MS = 200; // typing pauses this long before the server is asked

/** GET /runs's `q` semantics on one run: every word in its name, kind, model name or tags, or its id
 * (`#12` only that run; `12` that run or the text). `model`: its student's or teacher's name. */
export function matchesSearch(j, q, model) {
  const text = [j.name || "", j.kind, model, ...(j.tags || [])].join(" ").toLowerCase();
  return q.toLowerCase().split(/\s+/).filter(Boolean).every((word) => {
    const digits = word.replace(/^#/, "");
    const isId = /^\d+$/.test(digits) && j.id === Number(digits);
    return word.startsWith("#") && /^\d+$/.test(digits) ? isId : isId || text.includes(word);
  });
}

// Kinds whose `dataset_id` left empty means the built-in demo corpus (the API's default for them).
const DEMO_DEFAULT_KINDS = ["distill", "evaluate", "preview"];

/** The data a run read: "demo corpus", a dataset by name ("dataset 7" when it is gone), then an
 * evaluation's split and document count; null for a kind that reads none. `datasets`: GET /datasets. */
export function dataLabel(j, datasets = []) {
  const p = j.params || {};
  const id = p.dataset_id;
  const named = id ? datasets.find((d) => d.id === id)?.name ?? `dataset ${id}` : DEMO_DEFAULT_KINDS.includes(j.kind) ? "demo corpus" : null;
  const parts = [named, p.split, p.max_documents ? `${p.max_documents} docs` : null].filter(Boolean);
  return parts.length ? parts.join(" · ") : null;
}

// Hyperparameter columns: [header, value of a run (blank when its kind has none), title]; `datasets`:
// GET /datasets, for the data column's names.
const HP_COLUMNS = [
  ["budget", ({ params: p }) => (p.tokens ? `${compact(p.tokens)} tok` : p.steps ?? null), "steps (or tokens) of training"],
  ["lr", ({ params: p }) => (p.lr !== undefined ? String(p.lr) : null), "peak learning rate"],
  ["batch", ({ params: p }) => p.batch_size ?? null, "batch size (global)"],
  ["seq", ({ params: p }) => p.seq_len ?? null, "sequence length / evaluation window"],
  ["T", ({ params: p }) => p.temperature ?? null, "distillation temperature"],
  ["data", (j, datasets) => dataLabel(j, datasets), "the data it read (demo corpus or a dataset; an evaluation's split and documents)"],
];

// The table fits its panel at 1280 px (audit 8: Created and Delete were cut off): these columns wrap
// ("demo corpus · test · 2 docs" over two lines), and these few are left out below 1200 px (app.css).
const WRAPS = ["data"];
const NARROW_HIDDEN = ["T", "data"];

/** "21:42", or "30 Nov" over "21:42": the date and the time each stay whole, the cell may wrap between. */
function createdCell(iso) {
  const text = when(iso);
  const cut = text.lastIndexOf(" ");
  return cut < 0 ? text : [h("span.nowrap", text.slice(0, cut)), " ", h("span.nowrap", text.slice(cut + 1))];
}

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
    this.jobs = []; // the page shown
    this.known = new Map(); // id -> every run seen (pages, the view's jobs): the instant filter, the curves
    this.students = [];
    this.teachers = [];
    this.datasets = []; // GET /datasets: the data column names them
    this.filter = { q: "", kind: "", status: "", tag: "" };
    this.offset = 0;
    this.total = 0;
    this.nextOffset = null;
    this.facets = null; // the filter menus' values over every job (GET /runs)
    this.asked = 0; // the latest request: an older answer arriving late is dropped
    this.selected = new Set();
    this.metric = "loss";
    this.curves = new Map(); // job id -> {points, series}
    this.err = h("div.error-msg");
    this.search = h("input", { type: "search", placeholder: "search name, model, tag, #id…", dataset: { testid: "runs-search" }, oninput: () => { this.filter.q = this.search.value.trim().toLowerCase(); this.refilter(SEARCH_DELAY_MS); } });
    this.kindSel = this.select("kind", "runs-kind");
    this.statusSel = this.select("status", "runs-status");
    this.tagSel = this.select("tag", "runs-tag");
    this.exportCsv = h("a.btn", { dataset: { testid: "runs-export-csv" }, download: "prunescope-runs.csv" }, "Export CSV");
    this.exportJson = h("a.btn", { dataset: { testid: "runs-export-json" }, download: "prunescope-runs.json" }, "Export JSON");
    this.count = h("span.hint", { dataset: { testid: "runs-count" } });
    this.prev = h("button.ghost.small", { dataset: { testid: "runs-prev" }, title: "newer runs", onclick: () => this.turn(Math.max(0, this.offset - PAGE)) }, "‹ newer");
    this.next = h("button.ghost.small", { dataset: { testid: "runs-next" }, title: "older runs", onclick: () => this.nextOffset !== null && this.turn(this.nextOffset) }, "older ›");
    this.table = h("div.table-scroll", { dataset: { testid: "runs-rows" } });
    this.plot = h("div.plot", { dataset: { testid: "overlay-plot" }, style: { height: "300px" } });
    this.plotHint = h("div.empty", "Tick runs in the table to overlay their curves (any students, any teachers).");
    this.metricBar = h("span");
    this.el = h("div.stack",
      h("div.row.runs-toolbar", this.search, this.kindSel, this.statusSel, this.tagSel, this.count, this.prev, this.next, h("span.spacer"), this.exportCsv, this.exportJson),
      this.err, this.table,
      h("div.overlay", h("header.row", h("h3", "Curves of the selected runs"), h("span.spacer"), this.metricBar), this.plotHint, this.plot));
    this.renderMetricBar();
  }

  select(key, testid) {
    return h("select", { dataset: { testid }, onchange: (ev) => { this.filter[key] = ev.target.value; this.refilter(0); } });
  }

  /** The view's data changed (its poll): `jobs` are runs it loaded (seen at once), then the page is
   * asked again from the server. */
  update({ jobs, students, teachers, datasets = [] }) {
    this.students = students;
    this.teachers = teachers;
    this.datasets = datasets;
    for (const j of jobs) this.known.set(j.id, j);
    if (!this.facets) this.fillMenus(this.localFacets());
    return this.load();
  }

  /** A filter changed: back to the first page, the known runs filtered at once, the server's page
   * after `delay` ms (the search box waits for a pause in typing). */
  refilter(delay) {
    this.asked++; // a page asked before this change is stale: dropped when it arrives
    this.table.dataset.loading = "true"; // until the server's page replaces the instant one
    this.offset = 0;
    this.jobs = this.localShown();
    this.renderRows();
    clearTimeout(this.pending);
    this.pending = setTimeout(() => this.load(), delay);
  }

  turn(offset) {
    this.offset = offset;
    this.load();
  }

  /** The page at `offset` of the runs matching the filters, from GET /runs. */
  async load() {
    const asked = ++this.asked;
    const { q, kind, status, tag } = this.filter;
    this.table.dataset.loading = "true";
    let page;
    try {
      page = await api.get(`/runs${qs({ q, kind, status, tag, limit: PAGE, offset: this.offset })}`);
    } catch (e) {
      if (asked === this.asked) {
        delete this.table.dataset.loading;
        showError(this.err, e);
      }
      return;
    }
    if (asked !== this.asked || !this.ctx.alive) return;
    showError(this.err, null);
    this.jobs = page.runs;
    this.total = page.total;
    this.nextOffset = page.next_offset;
    this.facets = page.facets;
    for (const j of page.runs) this.known.set(j.id, j);
    this.fillMenus(page.facets);
    delete this.table.dataset.loading;
    if (!this.editing) this.renderRows();
    this.drawCurves();
  }

  localFacets() {
    const runs = [...this.known.values()];
    return {
      kinds: [...new Set(runs.map((j) => j.kind))].sort(),
      statuses: [...new Set(runs.map((j) => j.status))].sort(),
      tags: [...new Set(runs.flatMap((j) => j.tags || []))].sort(),
    };
  }

  fillMenus({ kinds, statuses, tags }) {
    this.fillOptions(this.kindSel, "all kinds", kinds, this.filter.kind);
    this.fillOptions(this.statusSel, "all statuses", statuses, this.filter.status);
    this.fillOptions(this.tagSel, "all tags", tags, this.filter.tag);
  }

  fillOptions(sel, all, values, current) {
    const shown = current && !values.includes(current) ? [...values, current] : values; // a choice stays
    mount(sel, h("option", { value: "" }, all), shown.map((v) => h("option", { value: v, selected: v === current }, v)));
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

  /** The filter over the runs already known, newest first (shown until the server's page arrives). */
  localShown() {
    const { q, kind, status, tag } = this.filter;
    const lower = tag.toLowerCase();
    const rows = [...this.known.values()].filter((j) => {
      if (kind && j.kind !== kind) return false;
      if (status && j.status !== status) return false;
      if (tag && !(j.tags || []).some((t) => t.toLowerCase() === lower)) return false;
      return !q || matchesSearch(j, q, this.modelName(j));
    });
    rows.sort((a, b) => b.id - a.id);
    this.total = rows.length;
    this.nextOffset = null;
    return rows.slice(0, PAGE);
  }

  renderRows() {
    const rows = this.jobs;
    const filtered = Object.values(this.filter).some(Boolean);
    const range = rows.length ? `${this.offset + 1}–${this.offset + rows.length} of ` : "";
    this.count.textContent = `${range}${this.total} ${filtered ? "matching " : ""}runs${this.selected.size ? ` · ${this.selected.size} selected` : ""}`;
    this.prev.disabled = this.offset === 0;
    this.next.disabled = this.nextOffset === null;
    this.prev.hidden = this.next.hidden = this.offset === 0 && this.nextOffset === null;
    const ids = (this.selected.size ? [...this.selected] : rows.map((j) => j.id)).join(",");
    for (const [a, format] of [[this.exportCsv, "csv"], [this.exportJson, "json"]]) {
      a.href = ids ? authUrl(`/runs/export?ids=${ids}&format=${format}`) : "#";
      a.title = `${format.toUpperCase()} of the parameters, protocol, result and every metric point of ${this.selected.size ? "the selected runs" : "the runs shown"}`;
    }
    if (!rows.length) {
      mount(this.table, h("div.empty", filtered ? "No run matches the search and filters." : "No run yet."));
      return;
    }
    const allTicked = rows.length > 0 && rows.every((j) => this.selected.has(j.id));
    const tickAll = h("input", { type: "checkbox", checked: allTicked, title: "select every run shown", dataset: { testid: "runs-select-all" }, onchange: (ev) => { for (const j of rows) ev.target.checked ? this.selected.add(j.id) : this.selected.delete(j.id); this.renderRows(); this.drawCurves(); } });
    mount(this.table, h("table.runs", { dataset: { testid: "runs-table" } },
      h("thead", h("tr", h("th", tickAll), h("th", "run"), h("th", "status"), h("th", "tags"), h("th.num", { title: "how long it ran (so far, while it runs)" }, "duration"),
        HP_COLUMNS.map(([name, , title]) => h(`th.num${NARROW_HIDDEN.includes(name) ? ".wide-only" : ""}`, { title }, name)),
        h("th.num", { title: "its headline number (an evaluation's perplexity, a distillation's final validation perplexity); ≠ marks one measured on another protocol than its teacher's" }, "result"),
        h("th", "progress"), h("th", "created"), h("th", ""))),
      h("tbody", rows.map((j) => this.row(j)))));
  }

  row(j) {
    const tick = h("input", { type: "checkbox", checked: this.selected.has(j.id), dataset: { testid: "run-select" }, onclick: (ev) => ev.stopPropagation(), onchange: (ev) => { ev.target.checked ? this.selected.add(j.id) : this.selected.delete(j.id); this.renderRows(); this.drawCurves(); } });
    const [value, label, protocol] = headline(j);
    const stop = (fn) => (ev) => { ev.stopPropagation(); fn(); };
    const p = j.params || {};
    return linkRow(href("job", [j.id]), { dataset: { jobId: j.id }, class: this.selected.has(j.id) ? "selected" : "" },
      h("td", tick),
      h("td.run-name", this.nameCell(j)),
      h("td", statusBadge(j.status), statusReason(j, { inline: true })),
      h("td.tags", (j.tags || []).map((t) => h("span.chip", { dataset: { testid: "run-tag" } }, t, h("button.chip-x", { title: `remove tag ${t}`, onclick: stop(() => this.save(j, { tags: j.tags.filter((x) => x !== t) })) }, "×"))),
        h("button.ghost.small", { title: "add a tag", dataset: { testid: "run-add-tag" }, onclick: stop(() => this.editTag(j)) }, "+ tag")),
      h("td.num.nowrap", { dataset: { testid: "run-duration" } }, j.duration_s !== null && j.duration_s !== undefined ? duration(j.duration_s) : "–"),
      HP_COLUMNS.map(([name, get]) => h(`td.num${WRAPS.includes(name) ? ".wraps" : ".nowrap"}${NARROW_HIDDEN.includes(name) ? ".wide-only" : ""}`, { dataset: { hp: name } }, get({ ...j, params: p }, this.datasets) ?? "–")),
      // The value, then its label and mark: the cell may wrap between the two (a narrow table).
      h("td.num", { dataset: { testid: "run-result" } }, value !== null && value !== undefined ? [h("span.nowrap", { title: protocol ? `${label} on ${protocol.id}: ${protocol.description}` : label }, `${sig(value, 4)}`), " ", h("span.nowrap", h("span.faint", label), mismatchMark(protocol, this.teacherProtocol(j)))] : "–"),
      h("td.run-progress", progressBar(j)),
      h("td.faint.run-created", createdCell(j.created_at)),
      h("td.nowrap", h("button.ghost.small", {
        dataset: { testid: "run-delete" },
        disabled: ACTIVE.includes(j.status),
        title: ACTIVE.includes(j.status) ? "cancel it first: a queued or running job cannot be deleted" : "delete the run with its metrics, logs, results and files",
        onclick: stop(() => this.remove(j)),
      }, "Delete")));
  }

  nameCell(j) {
    const name = h("span", { dataset: { testid: "run-name" } }, j.name || this.defaultName(j));
    return [rowLink(href("job", [j.id]), `#${j.id}`, { class: "mono faint", dataset: { testid: "run-link" } }), " ", name,
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
      this.known.set(j.id, j);
      if (this.facets) this.facets.tags = [...new Set([...this.facets.tags, ...(j.tags || [])])].sort();
      this.fillMenus(this.facets || this.localFacets()); // a new tag is a filter at once
      showError(this.err, null);
    } catch (e) {
      showError(this.err, e);
    }
    this.renderRows();
    this.load(); // the new name / tags may change what matches, and the tag menu
  }

  async remove(j) {
    if (!confirm(`Delete run #${j.id} (${j.name || this.defaultName(j)}) with its metrics, logs, results and files?`)) return;
    try {
      await api.del(`/jobs/${j.id}`);
      showError(this.err, null);
      this.selected.delete(j.id);
      this.known.delete(j.id);
      this.curves.delete(j.id);
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
      const job = this.known.get(id);
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
      const job = this.known.get(id);
      const points = this.curves.get(id)?.series?.[this.metric] || [];
      if (!points.length || !job) return;
      const protocol = this.metric.startsWith("val_") && job.protocol ? ` (${job.protocol.id})` : "";
      traces.push({ x: points.map((p) => p.step), y: points.map((p) => p.value), name: `#${id} ${job.name || this.defaultName(job)}${protocol}`, mode: "lines", line: { color: SERIES_COLORS[i % SERIES_COLORS.length], width: 1.6 } });
    });
    this.plot.dataset.traces = String(traces.length);
    Plotly.react(this.plot, traces, baseLayout({ height: 300, xaxis: { title: { text: "step", font: { size: 10 } }, ...stepTicks(traces) }, yaxis: this.metric.endsWith("ppl") ? logAxis(traces) : { type: "linear" } }), PLOT_CONFIG);
  }
}
