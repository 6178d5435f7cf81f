// Architecture search under a budget: start one from an importance run, watch candidates being scored,
// then read the result as a Pareto scatter (cost vs loss, coloured by how each candidate cuts, front
// drawn), a parallel-coordinates chart over the architecture axes and scores, and a ranked table.
// Click a point to open it in the planner; shift-click points (or tick rows) to pick a bake-off.
// URL: #/search?run=<importance run>  (start + list) · #/search/<job id>?x=params|memory|latency&y=loss|ppl

import { api, ApiError, showError } from "../api.js";
import { field, linkRow, progressBar, readForm, rowLink, statusBadge, statusReason } from "../components/widgets.js";
import { h, mount, segmented, toast } from "../dom.js";
import { bytes, compact, duration, flops, ms, parseCount, pct, sig, when } from "../format.js";
import { baseLayout, plotlyReady } from "../plots.js";
import { go, href, setQuery } from "../router.js";
import { archLine, axisBasis, COST_AXES, paretoFront, versusBest } from "../searchmath.js";
import { fitPositions } from "../costmodel.js";
import { protocolNote } from "../components/protocol.js";
import { followJob } from "../sse.js";
import { DISTILL_DEFAULTS, warnValEvery, warnWarmup } from "../components/distillform.js";

export const CUT_COLORS = { depth: "#8fa8ff", width: "#2bb3a3", mixed: "#f2b34b", none: "#8a96a8" };
// One name per kind of cut wherever it shows (table, legend, hover, badge): the engine's key "mixed" (a cut of
// both depth and width) reads "depth + width" (audit 18: the table said "mixed", the legend "depth + width").
export const CUT_NAMES = { depth: "depth", width: "width", mixed: "depth + width", none: "no cut" };
const CUT_LABELS = { depth: "depth (layers only)", width: "width (heads / MLP / hidden only)", mixed: "depth + width", none: "no cut" };
// The tolerance band is a reference region, not a warning: a faint neutral wash (audit 22: a red band
// drew the eye from the candidates); the budget line itself stays red.
export const TOLERANCE_FILL = "rgba(138, 150, 168, 0.07)";
const TOLERANCE_TEXT = "#5d6878";
const LABEL_CHAR_PX = 7; // an 11 px axis title's width per character, about (parallel coordinates)
const FRONT_COLOR = "#e8edf5";
const PICK_COLOR = "#ff4fa3";
// The table's "vs #1" column: what the figure is and when a rank is not a finding (noise.py NOISE_SES).
const NOISE_TITLE = "loss minus rank 1's, ± the paired standard error over the held-out windows; ≈ #1: within 2 standard errors, so this sample cannot tell the two apart (score more held-out samples to separate them)";
const Y_AXES = { loss: "LM loss on held-out data (lower is better)", ppl: "perplexity (lower is better)" };
const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "toImage"] };

/** A d3 format with the decimals an axis spanning `values` (sorted) needs for distinct ticks: ".3~g" read
 * a loss spread over 8.322..8.332 as "8.33" at four ticks. About ten ticks: a tenth of the span. */
export function axisFormat(values) {
  const span = values.length ? values[values.length - 1] - values[0] : 0;
  if (!(span > 0)) return ".4~g";
  const decimals = Math.max(0, Math.ceil(-Math.log10(span / 10)));
  return `.${Math.min(decimals, 8)}~f`;
}

export async function searchView(host, { args, query }, ctx) {
  const id = Number(args[0]);
  if (!id) return searchHome(host, query, ctx);
  return searchResult(host, id, query, ctx);
}

// ---- start a search + the list of searches ----------------------------------------------------------

async function searchHome(host, query, ctx) {
  const runId = Number(query.get("run")) || null;
  let runs;
  let searches;
  try {
    [runs, searches] = await Promise.all([api.get("/importance-runs?limit=200"), api.get("/searches?limit=100")]);
  } catch (err) {
    mount(host, h("div.error-msg", err.message));
    return;
  }
  if (!ctx.alive) return;
  const ready = runs.filter((r) => r.status === "succeeded");
  const teachers = new Map();
  for (const r of ready) if (!teachers.has(r.teacher_id)) teachers.set(r.teacher_id, await api.get(`/teachers/${r.teacher_id}`).catch(() => null));

  const err = h("div.error-msg");
  const form = searchForm(ready, teachers, runId);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = readForm(form);
    const at = `@${v.at_batch || 1},${v.at_context || 2048}`;
    const budgets = [];
    if (v.budget_params) budgets.push(`params=${String(v.budget_params).trim()}`);
    if (v.budget_memory) budgets.push(`memory=${String(v.budget_memory).trim()}${at}`);
    if (v.budget_latency) budgets.push(`latency=${String(v.budget_latency).trim()}${at}`);
    const body = {
      importance_run_id: Number(v.importance_run_id),
      top_k: v.top_k,
      settings: {
        budgets,
        tolerance: v.tolerance / 100,
        max_depth_cut: v.max_depth_cut / 100,
        max_width_cut: v.max_width_cut / 100,
        mlp_step: v.mlp_step,
        hidden_step: v.hidden_step,
        head_modes: v.head_modes === "both" ? ["whole_groups", "within_groups"] : [v.head_modes],
        frontier_only: v.frontier_only,
        eval_samples: v.eval_samples,
        eval_seq_len: v.eval_seq_len,
      },
    };
    try {
      const job = await api.post("/searches", body);
      go("search", [job.id]);
    } catch (e) {
      showError(err, inPercent(e), form, { fieldFor: searchFieldFor });
    }
  });
  form.append(err);

  const list = searches.length
    ? h("table", { dataset: { testid: "search-list" } },
        h("thead", h("tr", h("th", "search"), h("th", "teacher · run"), h("th", "budgets"), h("th", "status"), h("th", { style: { width: "28%" } }, "progress"))),
        h("tbody", searches.map((j) => linkRow(href("search", [j.id]), {},
          h("td.mono", rowLink(href("search", [j.id]), `#${j.id}`), h("div.faint", when(j.created_at))),
          h("td", teachers.get(j.teacher_id)?.name ?? `teacher #${j.teacher_id}`, h("div.faint.mono", `run #${j.importance_run_id}`)),
          h("td.mono", budgetText(j.params?.settings?.budgets)),
          h("td", statusBadge(j.status), statusReason(j, { inline: true })),
          // The count under the bar, not in a column of its own: six columns left the panel at 1024 px.
          h("td", progressBar(j), j.result ? h("div.hint", { dataset: { testid: "search-count" } }, `${j.result.candidates} candidates scored`) : null)))))
    : h("div.empty", "No search yet.");

  mount(host,
    h("div.page-head", h("h1", "Architecture search"), h("span.sub", "every architecture within a budget, scored on held-out data; the best few race in a bake-off")),
    h("div.grid.two",
      h("section.panel", h("header", h("h2", "New search")), ready.length ? form : h("div.empty", "A search needs a finished importance run: ", h("a", { href: href("") }, "start one on the Teachers page →"))),
      h("section.panel", h("header", h("h2", "Searches")), list)),
  );
}

/** The search form's input for an API field path (showError's fieldFor): the budgets are one list in the
 * request but three inputs here; the message names the budget at fault ("budget 'params=abc' is ..."). */
export function searchFieldFor(path, msg) {
  if (!path.includes("budgets")) return null;
  const kind = String(msg).match(/budget '(\w+)/)?.[1];
  return ["params", "memory", "latency"].includes(kind) ? `budget_${kind}` : "budget_params";
}

// The form's inputs in % that the API takes as fractions (readForm's value / 100 above).
const PERCENT_FIELDS = ["tolerance", "max_depth_cut", "max_width_cut"];
const BOUNDS = { "less than or equal to": "at most", "greater than or equal to": "at least", "less than": "under", "greater than": "over" };

/** A fraction's bound in the API's words ("Input should be less than or equal to 0.5") as the % field
 * it came from reads it ("at most 50 %"); any other message unchanged. */
export function percentMessage(msg) {
  const m = String(msg).match(/^Input should be (less than or equal to|greater than or equal to|less than|greater than) (-?[\d.]+)$/);
  return m ? `${BOUNDS[m[1]]} ${+(100 * Number(m[2])).toFixed(4)} %` : msg;
}

function inPercent(err) {
  if (!(err instanceof ApiError) || !Array.isArray(err.detail)) return err;
  for (const item of err.detail) if (PERCENT_FIELDS.includes(String(item.loc?.at(-1)))) item.msg = percentMessage(item.msg);
  return err;
}

/** Each budget's limit by its text (GET /searches/{id}/candidates `budgets`) -> the limit drawn on cost axis
 * `axis`: its first budget of that kind, whose figure a candidate's cost on that axis is (search_results.costs). */
export function budgetLimit(budgets, axis) {
  return Object.values(budgets || {}).find((b) => b.kind === axis)?.limit;
}

/** "+0.9% over params=60%, within tolerance" for each budget a candidate is past the bare limit of. */
export function overLimitText(budgets) {
  const over = Object.entries(budgets || {}).filter(([, b]) => b.over_limit > 0);
  return over.length ? `${over.map(([text, b]) => `+${(100 * b.over_limit).toFixed(1)}% over ${text}`).join(", ")}, within tolerance` : "";
}

function budgetText(budgets) {
  return budgets?.length ? budgets.join(" · ") : "–";
}

/** The search form's default lengths for run `runId`'s teacher: within its positions (audit 24). */
function searchLengths(runs, teachers, runId) {
  const spec = teachers.get(runs.find((r) => r.id === Number(runId))?.teacher_id)?.spec;
  return { at_context: fitPositions(spec, 2048), eval_seq_len: fitPositions(spec, 128) };
}

function searchForm(runs, teachers, runId) {
  const form = searchFormFields(runs, teachers, runId);
  // Another run may be of a teacher with fewer positions: a length still at the last default follows.
  let defaults = searchLengths(runs, teachers, form.querySelector("[name=importance_run_id]").value);
  form.querySelector("[name=importance_run_id]").addEventListener("change", (ev) => {
    const next = searchLengths(runs, teachers, ev.target.value);
    for (const [name, value] of Object.entries(next)) {
      const input = form.querySelector(`[name=${name}]`);
      if (Number(input.value) === defaults[name]) input.value = value;
    }
    defaults = next;
  });
  return form;
}

function searchFormFields(runs, teachers, runId) {
  const label = (r) => `run #${r.id} · ${teachers.get(r.teacher_id)?.name ?? `teacher #${r.teacher_id}`} · ${r.params?.samples ?? "?"}×${r.params?.seq_len ?? "?"}`;
  const lengths = searchLengths(runs, teachers, runId ?? runs[0]?.id);
  return h("form.stack", { dataset: { testid: "search-form" } },
    h("div.form-grid",
      h("div", { style: { gridColumn: "1 / -1" } }, field({ name: "importance_run_id", label: "Importance run (teacher and its scores)", options: runs.map((r) => [r.id, label(r)]), value: runId ?? runs[0]?.id })),
    ),
    // "any of them" read as OR: the engine keeps what meets every budget given.
    h("h3.section-title", "Budgets (all of those given must hold: each a share of the teacher, or an amount)"),
    h("div.form-grid",
      field({ name: "budget_params", label: "parameters ≤", placeholder: "60% or 5.8M", value: "60%", title: "total parameters: 60% of the teacher, or a count such as 5.8M" }),
      field({ name: "budget_memory", label: "memory ≤", placeholder: "70% or 1.2GB", title: "weights + KV cache at the batch and context on the right (70% of the teacher's, or 800MB, 1.2GB, 2GiB)" }),
      field({ name: "budget_latency", label: "decode latency ≤", placeholder: "70% or 4ms", title: "decode time per generated token, measured on the worker's device (each shape timed once with random weights, cached)" }),
      field({ name: "at_batch", label: "at batch", type: "number", value: 1, min: 1 }),
      field({ name: "at_context", label: "at context", type: "number", value: lengths.at_context, min: 1 }),
      field({ name: "tolerance", label: "tolerance %", type: "number", value: 2, min: 0, step: 0.5, title: "a cost may exceed its budget by this much" }),
    ),
    h("h3.section-title", "Search space"),
    h("div.form-grid",
      field({ name: "max_depth_cut", label: "cut depth ≤ %", type: "number", value: 20, min: 0, max: 99, title: "at most this share of the layers is removed (Model Optimizer's default: 20%)" }),
      field({ name: "max_width_cut", label: "cut widths ≤ %", type: "number", value: 40, min: 0, max: 99, title: "at most this share of any width axis (heads, MLP, hidden) is removed (default 40%)" }),
      field({ name: "mlp_step", label: "MLP step", type: "number", value: 64, min: 1, title: "MLP sizes are multiples of this" }),
      field({ name: "hidden_step", label: "hidden step", type: "number", value: 64, min: 1, title: "hidden sizes are multiples of this (and of the head count where the family needs it)" }),
      // Two columns wide: in one, "within or whole KV groups" was cut to "within or whole KV gr".
      h("div", { style: { gridColumn: "span 2" } }, field({ name: "head_modes", label: "heads removed", options: [["both", "within or whole KV groups"], ["within_groups", "within KV groups"], ["whole_groups", "whole KV groups"]], value: "both" })),
      field({ name: "frontier_only", label: "only the budget's frontier", type: "checkbox", value: true, title: "keep only candidates where no axis can grow one step and still fit" }),
    ),
    h("h3.section-title", "Scoring (held-out loss of each cut)"),
    h("div.form-grid",
      field({ name: "eval_samples", label: "held-out samples", type: "number", value: 16, min: 1 }),
      field({ name: "eval_seq_len", label: "seq len", type: "number", value: lengths.eval_seq_len, min: 2 }),
      field({ name: "top_k", label: "top K (bake-off pick)", type: "number", value: 3, min: 1 }),
    ),
    h("div.row", h("button.primary", { type: "submit", dataset: { testid: "start-search" } }, "Start search")),
  );
}

// ---- one search: Pareto scatter, parallel coordinates, table, bake-off picker -----------------------

async function searchResult(host, id, query, ctx) {
  const view = { x: query.get("x") || "params", y: query.get("y") || "loss" };
  let job;
  try {
    job = await api.get(`/jobs/${id}`);
  } catch (err) {
    mount(host, h("div.error-msg", err.message));
    return;
  }
  const teacher = await api.get(`/teachers/${job.teacher_id}`).catch(() => null);
  if (!ctx.alive) return;
  const spec = teacher?.spec || {};
  let data = null; // GET /searches/{id}/candidates
  const picked = new Set(); // candidate ids chosen for a bake-off

  const head = h("div");
  const progress = h("section.panel", { dataset: { testid: "search-progress" } });
  const scatter = h("div.plot.tall", { dataset: { testid: "pareto-plot" } });
  const parcoords = h("div.plot", { dataset: { testid: "parcoords-plot" } });
  const table = h("div", { dataset: { testid: "candidate-table" } });
  const bake = h("section.panel", { dataset: { testid: "bakeoff-picker" } });
  const detail = h("div", { dataset: { testid: "point-detail" } });
  const xSeg = h("span.ctl", h("span", "cost"));
  // What every loss on this page (the teacher's ★ too) was measured on: the search's own sample.
  const protocolLine = h("div.hint", { dataset: { testid: "search-protocol" } });
  const tableProtocol = h("span.hint", { dataset: { testid: "table-protocol" } });
  const ySeg = h("span.ctl", h("span", "quality"), segmented(Object.entries({ loss: "loss", ppl: "perplexity" }), view.y, (v) => { view.y = v; setQuery({ y: v }); draw(); }, { dataset: { testid: "y-axis" } }));

  mount(host,
    head,
    progress,
    h("div.search-layout",
      h("section.panel",
        h("header", h("h2", "Pareto front"), xSeg, ySeg),
        protocolLine,
        scatter,
        h("div.hint", "click a point: open it in the planner · ", h("kbd", "shift"), "-click: add it to the bake-off · the line joins the candidates no other beats on both cost and quality")),
      h("div.stack", bake, h("section.panel", h("header", h("h2", "Candidate")), detail))),
    h("section.panel", { style: { marginTop: "14px" } }, h("header", h("h2", "Architecture axes and scores"), h("span.hint", "drag along an axis to filter; colour: loss")), parcoords),
    h("section.panel", { style: { marginTop: "14px" } }, h("header", h("h2", "Candidates"), h("span.hint", "ranked by loss within the budget; tick rows for the bake-off"), tableProtocol), table),
  );

  /** The search's sample as a protocol note, and why the teacher's figure here is not its evaluation's. */
  function renderProtocol() {
    const protocol = data?.protocol ?? job.protocol;
    if (!protocol) return;
    const evaluation = teacher?.eval_protocol;
    mount(protocolLine, "every loss and perplexity here, the teacher's ★ too, is ", protocolNote(protocol, { testid: "search-protocol-note", prefix: "on " }),
      evaluation ? [": the search's quick sample, so the teacher's figure differs from its evaluation's (", protocolNote(evaluation, { testid: "teacher-protocol-note", prefix: "on " }), ")"] : null);
    mount(tableProtocol, "· loss and ppl ", protocolNote(protocol, { testid: "table-protocol-note" }));
  }

  function renderHead() {
    mount(head,
      h("div.page-head",
        h("h1", `Search #${job.id}`),
        statusBadge(job.status),
        teacher ? h("span.sub", teacher.name, " · ", h("a", { href: href("explore", [job.importance_run_id]) }, `importance run #${job.importance_run_id}`)) : null,
        h("span.hint.mono", budgetText(job.params?.settings?.budgets)),
        h("span.spacer"),
        ["queued", "running"].includes(job.status) ? h("button.danger", { onclick: cancel, dataset: { testid: "cancel" } }, "Cancel") : null,
      ));
    const r = job.result || {};
    const best = data?.candidates?.[0];
    const rate = r.candidates_per_minute ?? null;
    mount(progress,
      job.status === "succeeded"
        ? h("div.cards",
            // "4 · 8 within the budget" read as a contradiction: say the scored ones are some of those in budget.
            card("candidates scored", compact(r.candidates), scoredLine(r, job.params?.settings), "scored"),
            // No rate from a fraction of a second (the worker gives none: worker/engine/search/rate.py).
            // Why there is no rate, as the worker says it (rate.py: too few candidates, or too short a time).
            card("candidates / minute", rate === null ? "—" : sig(rate, 3), r.seconds ? `in ${duration(r.seconds)}${rate === null && r.rate_note ? ` (${r.rate_note})` : ""}` : "", "rate"),
            card("best loss", best ? sig(best.loss) : "–", data?.reference?.loss ? [`teacher ${sig(data.reference.loss)} `, protocolNote(data.protocol, { testid: "best-protocol", prefix: "both on " })] : "", "best"),
            card("best candidate", best ? `${compact(best.costs?.params)} params` : "–", best ? archLine(best.axes, spec) : "", "best-arch"))
        : h("div.stack", { style: { gap: "6px" } }, progressBar(job, { big: true }), statusReason(job, { testid: "search-error" })),
      // An empty search says why (the engine's note: which budget nothing meets, how close the space gets).
      job.status === "succeeded" && !r.candidates && (r.note || data?.stats?.note)
        ? h("div.error-msg", { dataset: { testid: "search-note" } }, "Nothing fits: ", r.note || data.stats.note)
        : null,
    );
  }
  function card(label, value, delta, testid) {
    return h("div.metric", { dataset: { testid: `search-${testid}` } }, h("div.label", label), h("div.value", value), h("div.delta", delta));
  }

  async function cancel() {
    try {
      job = await api.post(`/jobs/${job.id}/cancel`);
      renderHead();
    } catch (e) {
      toast(e.message, "err");
    }
  }

  // ---- data --------------------------------------------------------------------------------
  async function load() {
    try {
      data = await api.get(`/searches/${job.id}/candidates`);
    } catch (e) {
      mount(detail, h("div.error-msg", e.message));
      return;
    }
    if (!ctx.alive) return;
    for (const c of data.candidates) c.cut = c.cut || "none";
    const axes = Object.keys(COST_AXES).filter((k) => data.candidates.some((c) => Number.isFinite(c.costs?.[k])));
    if (!axes.includes(view.x)) view.x = axes[0] || "params";
    xSeg.replaceChildren(h("span", "cost"), segmented(axes.map((k) => [k, COST_AXES[k].name]), view.x, (v) => { view.x = v; setQuery({ x: v }); draw(); }, { dataset: { testid: "x-axis" } }));
    renderHead();
    renderProtocol();
    draw();
    renderTable();
    renderBake();
    mount(detail, h("div.empty", "Hover or click a point."));
  }

  const shown = () => data.candidates;
  const cost = (c) => c.costs?.[view.x];
  const quality = (c) => (view.y === "ppl" ? Math.exp(c.loss) : c.loss);
  const fmtCost = (v) => COST_AXES[view.x].format(v);

  function hover(c) {
    const ref = data.reference || {};
    const share = (k) => (ref[k] ? ` (${pct(c.costs[k] / ref[k], 0)})` : "");
    return [
      `<b>#${c.id}</b> ${c.rank ? `rank ${c.rank}` : "outside the budget"} · ${CUT_LABELS[c.cut]}`,
      archLine(c.axes, spec),
      Object.entries(COST_AXES).filter(([k]) => Number.isFinite(c.costs?.[k])).map(([k, a]) => `${a.name} ${a.format(c.costs[k])}${share(k)}`).join(" · "),
      `loss ${sig(c.loss)} · ppl ${sig(Math.exp(c.loss))}${data.protocol ? ` on ${data.protocol.id}` : ""}`,
      c.rank > 1 && versusBest(c) ? `vs #1: ${versusBest(c)}${c.within_noise_of_best ? " (within noise of #1)" : ""}` : null,
    ].filter(Boolean).join("<br>");
  }

  async function draw() {
    if (!data) return;
    const Plotly = await plotlyReady();
    if (!ctx.alive) return;
    const pts = shown();
    const traces = [];
    for (const kind of ["depth", "width", "mixed", "none"]) {
      const group = pts.filter((c) => c.cut === kind);
      if (!group.length) continue;
      traces.push({
        type: "scatter",
        mode: "markers",
        name: CUT_LABELS[kind],
        x: group.map(cost),
        y: group.map(quality),
        customdata: group.map((c) => c.id),
        text: group.map(hover),
        hovertemplate: "%{text}<extra></extra>",
        marker: { color: CUT_COLORS[kind], size: group.map((c) => (c.within_budget ? 8 : 6)), opacity: group.map((c) => (c.within_budget ? 0.85 : 0.35)), line: { color: "#0e1116", width: 0.5 } },
      });
    }
    const more = COST_AXES[view.x].minimum; // more is better: the front runs along the high end
    const front = paretoFront(pts, cost, quality, more).map((i) => pts[i]);
    traces.push({ type: "scatter", mode: "lines+markers", name: "Pareto front", x: front.map(cost), y: front.map(quality), customdata: front.map((c) => c.id), text: front.map(hover), hovertemplate: "%{text}<extra>front</extra>", line: { color: FRONT_COLOR, width: 1.5, shape: "hv", dash: "dot" }, marker: { size: 11, color: "rgba(0,0,0,0)", line: { color: FRONT_COLOR, width: 1.5 } } });
    const chosen = data.candidates.filter((c) => picked.has(c.id));
    traces.push({ type: "scatter", mode: "markers", name: "bake-off", x: chosen.map(cost), y: chosen.map(quality), customdata: chosen.map((c) => c.id), text: chosen.map(hover), hovertemplate: "%{text}<extra>bake-off</extra>", marker: { size: 16, color: "rgba(0,0,0,0)", line: { color: PICK_COLOR, width: 2.5 } }, showlegend: chosen.length > 0 });
    const ref = data.reference;
    if (ref && Number.isFinite(ref[view.x]) && Number.isFinite(ref.loss)) {
      traces.push({ type: "scatter", mode: "markers+text", name: "teacher", x: [ref[view.x]], y: [view.y === "ppl" ? Math.exp(ref.loss) : ref.loss], text: ["teacher"], textposition: "middle left", textfont: { color: "#8a96a8", size: 10 }, hovertemplate: `teacher · ${archLine(spec, spec)}<br>loss %{y:.4g}<extra></extra>`, marker: { symbol: "star", size: 13, color: "#fde725" } });
    }
    const budget = budgetLimit(data.budgets, view.x);
    // The engine lets a cost exceed its budget by the search's tolerance (budgets.py `fits`): shade that
    // margin up to the effective limit, or candidates "within the budget" sit right of the line.
    const tol = Number.isFinite(budget) && data.tolerance > 0 ? data.tolerance : 0;
    const limit = Number.isFinite(budget) ? budget * (more ? 1 - tol : 1 + tol) : undefined; // budgets.fits
    const shapes = Number.isFinite(budget) ? [{ type: "line", xref: "x", yref: "paper", x0: budget, x1: budget, y0: 0, y1: 1, line: { color: "#ff6b6b", width: 1, dash: "dash" } }] : [];
    const annotations = Number.isFinite(budget) ? [{ x: budget, y: 1, xref: "x", yref: "paper", text: "budget", showarrow: false, xanchor: "right", yanchor: "top", font: { size: 10, color: "#ff6b6b" } }] : [];
    if (tol) {
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: budget, x1: limit, y0: 0, y1: 1, fillcolor: TOLERANCE_FILL, line: { width: 0 }, layer: "below", name: "tolerance" });
      annotations.push({ x: budget, y: 0, xref: "x", yref: "paper", text: `${more ? "−" : "+"}${+(100 * tol).toFixed(2)}% tolerance`, showarrow: false, xanchor: more ? "right" : "left", yanchor: "bottom", font: { size: 10, color: TOLERANCE_TEXT } });
    }
    scatter.dataset.limit = Number.isFinite(limit) ? String(limit) : "";
    // The axes span the candidates (and the budget's effective limit): a teacher far up the cost axis would
    // otherwise squeeze them into a corner. It stays in the legend, and a note gives its figures when off the chart.
    const xs = pts.map(cost).filter(Number.isFinite).concat(Number.isFinite(budget) ? [budget, limit] : []);
    const ys = pts.map(quality).filter(Number.isFinite);
    const span = (vals, f) => {
      const lo = Math.min(...vals);
      const hi = Math.max(...vals);
      const d = hi - lo || Math.abs(hi) * 0.05 || 1;
      return [lo - f * d, hi + f * d];
    };
    const xRange = xs.length ? span(xs, 0.06) : undefined;
    const yRange = ys.length ? span(ys, 0.1) : undefined;
    const refX = ref?.[view.x];
    const refY = ref && (view.y === "ppl" ? Math.exp(ref.loss) : ref.loss);
    if (xRange && yRange && Number.isFinite(refX) && Number.isFinite(refY) && (refX > xRange[1] || refX < xRange[0] || refY < yRange[0] || refY > yRange[1])) {
      annotations.push({ x: 1, y: 1, xref: "paper", yref: "paper", xanchor: "right", yanchor: "bottom", showarrow: false, text: `★ teacher (off the chart): ${fmtCost(refX)} · ${view.y === "ppl" ? "ppl" : "loss"} ${sig(refY)}`, font: { size: 10, color: "#fde725" }, bgcolor: "rgba(14,17,22,0.8)" });
    }
    const layout = baseLayout({
      height: 440,
      width: scatter.clientWidth || undefined,
      xaxis: { title: { text: [COST_AXES[view.x].label, axisBasis(view.x, data.basis)].filter(Boolean).join(", "), font: { size: 11 } }, range: xRange, ...(view.x === "params" ? { tickformat: ".3s" } : {}) },
      yaxis: { title: { text: Y_AXES[view.y], font: { size: 11 } }, range: yRange },
      margin: { l: 60, r: 14, t: 30, b: 44 },
      shapes,
      annotations,
      hovermode: "closest",
      hoverlabel: { bgcolor: "#0a0c10", bordercolor: "#364152", align: "left", font: { family: "ui-monospace, monospace", size: 11, color: "#d9e0ea" } },
      dragmode: "zoom",
    });
    Plotly.react(scatter, traces, layout, PLOT_CONFIG);
    scatter.dataset.points = String(pts.length);
    scatter.dataset.front = front.map((c) => c.id).join(",");
    if (!scatter.dataset.bound) {
      scatter.dataset.bound = "1";
      scatter.on("plotly_click", (ev) => {
        const p = ev.points?.[0];
        if (!p || p.customdata === undefined) return;
        if (ev.event?.shiftKey) togglePick(p.customdata);
        else openInPlanner(p.customdata);
      });
      scatter.on("plotly_hover", (ev) => {
        const p = ev.points?.[0];
        const c = p && data.candidates.find((x) => x.id === p.customdata);
        if (c) showDetail(c);
      });
      scatter.on("plotly_selected", (ev) => {
        for (const p of ev?.points || []) if (p.customdata !== undefined) picked.add(p.customdata);
        renderBake();
        renderTable();
        draw();
      });
    }
    drawParcoords(Plotly, pts);
  }

  function drawParcoords(Plotly, pts) {
    if (!pts.length) return;
    const dims = [
      ["num_layers", "layers"],
      ["num_heads", "heads / layer"],
      ["num_kv_heads", "KV groups"],
      ["intermediate_size", "MLP size"],
      ["hidden_size", "hidden size"],
    ]
      .filter(([k]) => pts.some((c) => c.axes[k] !== undefined) && new Set(pts.map((c) => c.axes[k])).size > 1)
      .map(([k, label]) => ({ label, values: pts.map((c) => c.axes[k]) }));
    for (const k of Object.keys(COST_AXES)) {
      if (COST_AXES[k].chart !== false && pts.every((c) => Number.isFinite(c.costs?.[k]))) {
        const { unit, scale } = COST_AXES[k];
        dims.push({ label: unit, values: pts.map((c) => c.costs[k] / scale) });
      }
    }
    dims.push({ label: "loss", values: pts.map((c) => c.loss) });
    // Range labels at the axes' ends otherwise show raw floats ("5.11507" M params, loss "4.7064"); a
    // whole-number axis (layers, heads, widths) with few values ticks those values, not "7.5 layers".
    for (const d of dims) {
      const distinct = [...new Set(d.values)].sort((a, b) => a - b);
      if (d.values.every(Number.isInteger)) {
        if (distinct.length <= 12) d.tickvals = distinct;
      } else d.tickformat = axisFormat(distinct);
    }
    const trace = {
      type: "parcoords",
      dimensions: dims,
      // Colour by loss (lowest bright), read off the last axis: no colour bar crowding it.
      line: { color: pts.map((c) => c.loss), colorscale: "Viridis", reversescale: true, showscale: false },
      // No text shadow: Plotly's automatic one (a dark halo) blurred the tick numbers on the dark panel.
      labelfont: { size: 11, color: "#d9e0ea", shadow: "none" },
      tickfont: { size: 10, color: "#8a96a8", shadow: "none" },
      rangefont: { size: 9, color: "#5d6878", shadow: "none" },
      labelangle: 0,
    };
    // Axis titles are centred on their axis: where neighbours are closer than the longest title, the
    // titles tilt (with room above) instead of running into each other.
    const width = parcoords.clientWidth || 900;
    const gap = (width - 120) / Math.max(1, dims.length - 1);
    const longest = LABEL_CHAR_PX * Math.max(...dims.map((d) => d.label.length));
    const tilt = gap < longest + 12;
    if (tilt) trace.labelangle = -30;
    // A tilted title rises by half its length (sin 30°) above its axis: the top margin grows with the
    // longest one (a fixed 70 px cut "heads / layer" off at the chart's top edge, audit 20).
    const top = tilt ? 44 + Math.ceil(longest / 2) : 40;
    const layout = { paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { family: "Inter, Segoe UI, system-ui, sans-serif", color: "#c4ccd8" }, height: 290 + top, width: parcoords.clientWidth || undefined, margin: { l: 60, r: 60, t: top, b: 20 } };
    Plotly.react(parcoords, [trace], layout, { displaylogo: false, responsive: true });
    parcoords.dataset.dimensions = dims.map((d) => d.label).join(",");
  }

  function showDetail(c) {
    mount(detail,
      h("div.stack", { style: { gap: "8px" } },
        h("div.row", h("b", `#${c.id}`), h("span.badge", { style: { color: CUT_COLORS[c.cut], borderColor: CUT_COLORS[c.cut] } }, CUT_LABELS[c.cut]), c.rank ? h("span.hint", `rank ${c.rank}`) : h("span.hint", "outside the budget")),
        h("div.mono", archLine(c.axes, spec)),
        h("dl.kv",
          h("dt", "loss"), h("dd", `${sig(c.loss)} (ppl ${sig(Math.exp(c.loss))}) `, protocolNote(data.protocol, { testid: "detail-protocol" })),
          Object.entries(COST_AXES).filter(([k]) => Number.isFinite(c.costs?.[k])).map(([k, a]) => [h("dt", a.name), h("dd", a.format(c.costs[k]))])),
        h("div.row",
          h("button.small", { onclick: () => openInPlanner(c.id), dataset: { testid: "open-planner" } }, "Open in planner →"),
          h("button.small", { onclick: () => togglePick(c.id) }, picked.has(c.id) ? "Remove from bake-off" : "Add to bake-off"))));
  }

  async function openInPlanner(cid) {
    try {
      const plan = await api.post(`/searches/${job.id}/candidates/${encodeURIComponent(cid)}/plan`);
      go("explore", [job.importance_run_id], { plan: plan.id });
    } catch (e) {
      toast(e.message, "err");
    }
  }

  function togglePick(cid) {
    if (picked.has(cid)) picked.delete(cid);
    else picked.add(cid);
    renderBake();
    renderTable();
    draw();
  }

  function renderTable() {
    const rows = shown().slice().sort((a, b) => (a.rank ?? Infinity) - (b.rank ?? Infinity) || a.loss - b.loss).slice(0, 200);
    const hasMem = rows.some((c) => Number.isFinite(c.costs.memory));
    const hasLat = rows.some((c) => Number.isFinite(c.costs.latency));
    mount(table, h("table",
      h("thead", h("tr", h("th", ""), h("th.num", "rank"), h("th", "cut"), h("th", "architecture"), h("th.num", "params"), h("th.num", { title: `forward FLOPs per token, ${axisBasis("flops", data.basis)}` }, "FLOPs / tok"), hasMem ? h("th.num", { title: `weights + KV cache ${axisBasis("memory", data.basis)}` }, "memory") : null, hasLat ? h("th.num", { title: `decode time per token, ${axisBasis("latency", data.basis)}` }, "latency") : null, h("th.num", "loss"), h("th.num", { title: NOISE_TITLE }, "vs #1 ± SE"), h("th.num", "ppl"), h("th", ""))),
      h("tbody", rows.map((c) => h(`tr${picked.has(c.id) ? ".selected" : ""}`, { dataset: { candidate: c.id } },
        h("td", h("input", { type: "checkbox", checked: picked.has(c.id), dataset: { testid: "pick" }, onchange: () => togglePick(c.id) })),
        h("td.num", c.rank ?? "–"),
        h("td.nowrap", h("span", { style: { color: CUT_COLORS[c.cut] } }, "● "), CUT_NAMES[c.cut] ?? c.cut),
        h("td.mono", archLine(c.axes, spec)),
        h("td.num", compact(c.costs.params), overLimitText(c.budgets) ? h("div.hint.nowrap", { dataset: { testid: "over-limit" } }, overLimitText(c.budgets)) : null),
        h("td.num", flops(c.costs.flops)),
        hasMem ? h("td.num", bytes(c.costs.memory)) : null,
        hasLat ? h("td.num", ms(c.costs.latency)) : null,
        h("td.num", sig(c.loss)),
        h("td.num.nowrap", { dataset: { testid: "versus-best" } }, versusBest(c), c.within_noise_of_best ? h("span.badge.warn", { style: { marginLeft: "6px" }, title: NOISE_TITLE, dataset: { testid: "within-noise" } }, "≈ #1") : null),
        h("td.num", sig(Math.exp(c.loss))),
        h("td.nowrap", h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); openInPlanner(c.id); } }, "planner →")))))));
    if (shown().length > rows.length) table.append(h("div.hint", `${shown().length - rows.length} more not listed (all are in the charts)`));
  }

  const bakeErr = h("div.error-msg");
  function renderBake() {
    const chosen = data.candidates.filter((c) => picked.has(c.id));
    const form = h("form.row", { dataset: { testid: "bakeoff-form" }, onsubmit: (ev) => { ev.preventDefault(); startBakeoff(chosen, form); } },
      h("span.ctl", h("span", "tokens"), h("input", { name: "tokens", type: "text", value: "256k", size: 6, title: "distillation tokens per candidate (e.g. 64k, 2M), the same for each" })),
      h("span.ctl", h("span", "batch"), h("input", { name: "batch_size", type: "number", value: 8, min: 1, style: { width: "60px" } })),
      h("span.ctl", h("span", "seq"), h("input", { name: "seq_len", type: "number", value: 128, min: 2, style: { width: "70px" } })),
      h("span.ctl", h("span", "val every"), h("input", { name: "val_every", type: "number", value: 25, min: 0, style: { width: "60px" } })),
      h("span.ctl", { title: "peak learning rate (after warm-up; cosine decay to a tenth of it)" }, h("span", "lr"), h("input", { name: "lr", type: "number", value: DISTILL_DEFAULTS.lr, min: 0, step: "any", style: { width: "80px" } })),
      h("span.ctl", { title: "steps the learning rate rises linearly to its peak; a run no longer than this barely trains" }, h("span", "warm-up"), h("input", { name: "warmup", type: "number", value: DISTILL_DEFAULTS.warmup, min: 0, style: { width: "60px" } })),
      h("label.check", { title: "also measure each student's prefill / decode speed (a benchmark job per candidate)" }, h("input", { name: "benchmark", type: "checkbox", checked: true }), "speed"),
      h("span.spacer"),
      h("button.primary", { type: "submit", disabled: chosen.length < 2, dataset: { testid: "start-bakeoff" } }, `Start bake-off (${chosen.length})`));
    warnValEvery(form, () => bakeDistill(readForm(form)));
    warnWarmup(form, () => bakeDistill(readForm(form)));
    mount(bake,
      h("header", h("h2", "Bake-off"), h("span.hint", "distil the picked candidates side by side; the ranking after distillation decides")),
      chosen.length
        ? h("ul.messages", { dataset: { testid: "picked" } }, chosen.map((c) => h("li.ok", h("span.field", `#${c.rank}`), archLine(c.axes, spec), h("span.faint", ` · loss ${sig(c.loss)}`))))
        : h("div.empty", "Pick candidates: shift-click points, tick rows, or use the box select tool."),
      h("div.row",
        h("button.small", { onclick: () => { for (const c of topK()) picked.add(c.id); renderBake(); renderTable(); draw(); }, dataset: { testid: "pick-top" } }, `Pick the top ${job.params?.top_k ?? 3}`),
        chosen.length ? h("button.small", { onclick: () => { picked.clear(); renderBake(); renderTable(); draw(); } }, "Clear") : null),
      form,
      bakeErr);
  }
  const topK = () => data.candidates.filter((c) => c.rank).sort((a, b) => a.rank - b.rank).slice(0, job.params?.top_k ?? 3);

  /** The bake-off form's values as the workflow's distill params (the same for every candidate). */
  function bakeDistill(v) {
    const p = { tokens: parseCount(v.tokens || ""), batch_size: v.batch_size, seq_len: v.seq_len, val_every: v.val_every, warmup: v.warmup };
    if (v.lr !== undefined) Object.assign(p, { lr: v.lr, min_lr: v.lr / 10 }); // the defaults' ratio (1e-4 -> 1e-5)
    return p;
  }

  async function startBakeoff(chosen, form) {
    const v = readForm(form);
    const tokens = parseCount(v.tokens);
    if (!Number.isFinite(tokens) || tokens < 1) return showError(bakeErr, { fields: { tokens: "a count such as 64k or 2M" } }, form);
    try {
      // One request: the server saves each candidate's plan (the one the planner opens) in the workflow's
      // transaction, so a refused bake-off leaves no plan behind.
      const bakeoff = await api.post("/workflows", {
        definition: "bakeoff",
        name: `bake-off of search #${job.id}`,
        teacher_id: job.teacher_id,
        importance_run_id: job.importance_run_id,
        // No name: the server names each by its shape (and keeps the search's id beside it).
        // The search's rank of each is kept beside the bake-off's own as-cut ranking (its page shows both).
        search_job_id: job.id,
        candidates: chosen.map((c) => ({ candidate_id: c.id })),
        distill: bakeDistill(v),
        ...(v.benchmark ? {} : { benchmark: null }),
        metric: "loss",
      });
      go("bakeoff", [bakeoff.id]);
    } catch (e) {
      showError(bakeErr, e, form);
    }
  }

  // ---- live --------------------------------------------------------------------------------
  renderHead();
  renderProtocol();
  if (job.status === "succeeded") await load();
  else mount(detail, h("div.empty", "Candidates appear when the search finishes."));
  const close = followJob(() => job, (j) => {
    const done = j.status === "succeeded" && job.status !== "succeeded";
    job = j;
    renderHead();
    if (done) load();
  });
  const redraw = () => draw();
  window.addEventListener("resize", redraw);
  ctx.onCleanup(() => {
    close();
    window.removeEventListener("resize", redraw);
  });
}

/** The line under "candidates scored": of how many within the budget, and why fewer were scored. */
export function scoredLine(result, settings) {
  const within = result.within_budget;
  if (within === undefined || within === null) return "";
  const why = settings?.frontier_only && result.candidates < within ? " (only its frontier scored)" : "";
  return `of ${compact(within)} within the budget${why}`;
}
