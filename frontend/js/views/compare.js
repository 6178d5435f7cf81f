// Compare students (and their teacher): architecture diff, overlaid curves, benchmark table with the
// best value per column marked, and the depth-vs-width study wizard.
// URL: #/compare?teacher=<id>&students=<id,id>&metric=val_ppl

import { api, showError } from "../api.js";
import { field, readForm, statusBadge } from "../components/widgets.js";
import { debounce, h, mount, segmented } from "../dom.js";
import { bytes, compact, flops, pct, sig } from "../format.js";
import { baseLayout, logAxis, PLOT_CONFIG, plotlyReady, SERIES_COLORS, smooth } from "../plots.js";
import { href, setQuery } from "../router.js";
import { subscribe } from "../sse.js";
import { distillFieldFor, distillFields, distillParams, fitSeqLen } from "../components/distillform.js";
import { studyMemoryLine } from "../components/studymemory.js";
import { stepTicks } from "../components/curves.js";
import { mismatchMark } from "../components/protocol.js";
import { BUDGET_COUNTS, STUDY_SIZE_GAP, studyTargets, targetSizes } from "../studymath.js";
import { isStudy, retriable, stepLabel, STUDY_NAME } from "../components/workflowsteps.js";
import { lookAtTeacher, teacherLookedAt } from "../lookingat.js";

export async function compareView(host, { query }, ctx) {
  const chosen = new Set((query.get("students") || "").split(",").filter(Boolean).map(Number));
  let teacherId = Number(query.get("teacher")) || null;
  let metric = query.get("metric") || "val_ppl";
  let students;
  let teachers;
  let datasets;
  try {
    [students, teachers, datasets] = await Promise.all([api.get("/students"), api.get("/teachers"), api.get("/datasets")]);
  } catch (err) {
    mount(host, h("div.error-msg", err.message));
    return;
  }
  if (!ctx.alive) return;
  if (!teacherId && chosen.size) teacherId = students.find((s) => chosen.has(s.id))?.teacher_id || null;

  const picker = h("div");
  const result = h("div.stack");
  const wizard = h("section.panel", { dataset: { testid: "wizard" } });
  mount(host,
    h("div.page-head", h("h1", "Compare"), h("span.sub", "Depth- and width-pruned students side by side, against their teacher.")),
    h("div.grid", { style: { gridTemplateColumns: "minmax(280px, 360px) minmax(0, 1fr)" } },
      h("div.stack", h("section.panel", h("header", h("h2", "Models")), picker), wizard),
      result),
  );

  function renderPicker() {
    const byTeacher = teachers.map((t) => ({ t, list: students.filter((s) => s.teacher_id === t.id) })).filter((g) => g.list.length || g.t.id === teacherId);
    mount(picker, byTeacher.length ? byTeacher.map(({ t, list }) => h("div", { style: { marginBottom: "8px" } },
      h("label.check", h("input", { type: "checkbox", checked: teacherId === t.id, dataset: { testid: `pick-teacher-${t.id}` }, onchange: (ev) => { teacherId = ev.target.checked ? t.id : null; if (teacherId) look(teacherId); update(); } }), h("strong", t.name), h("span.faint", " teacher")),
      h("div", { style: { paddingLeft: "18px", display: "flex", flexDirection: "column", gap: "2px" } },
        list.map((s) => h("label.check", h("input", { type: "checkbox", checked: chosen.has(s.id), dataset: { testid: `pick-student-${s.id}` }, onchange: (ev) => { ev.target.checked ? chosen.add(s.id) : chosen.delete(s.id); if (ev.target.checked && !teacherId) look(s.teacher_id); update(); } }), s.name, " ", statusBadge(s.status)))),
    )) : h("div.empty", "No student yet: use the wizard below or the planner."));
  }

  /** The user looks at teacher `tid` (ticked, or a student of it ticked): the study wizard follows it. */
  function look(tid) {
    lookAtTeacher(tid);
    study.follow(tid);
  }

  function update() {
    setQuery({ students: Array.from(chosen).join(","), teacher: teacherId || "" });
    load();
  }

  // Curves keep growing while distillations run: redraw them every few seconds while the page is open.
  let curveTimer = null;
  ctx.onCleanup(() => clearInterval(curveTimer));

  // One stream per teacher of the shown models; a status event (debounced) calls `onStatus` and
  // refreshes the students' badges in the picker.
  let streams = [];
  const closeStreams = () => streams.forEach((close) => close());
  ctx.onCleanup(closeStreams);
  function listenForStatus(models, onStatus) {
    closeStreams();
    const teacherOf = (m) => (m.kind === "teacher" ? m.id : students.find((x) => x.id === m.id)?.teacher_id);
    const ids = new Set(models.map(teacherOf).filter(Boolean));
    if (teacherId) ids.add(teacherId);
    const changed = debounce(async () => {
      await onStatus();
      const fresh = await api.get("/students").catch(() => null);
      if (ctx.alive && fresh) {
        students = fresh;
        renderPicker();
      }
    }, 300);
    streams = Array.from(ids, (id) => subscribe(`/teachers/${id}/events`, { status: changed }));
  }

  async function load() {
    if (!chosen.size && !teacherId) {
      mount(result, h("section.panel", h("div.empty", "Pick two or more models on the left, or run the depth-vs-width study.")));
      return;
    }
    let data;
    const shown = new URLSearchParams({ ...(teacherId ? { teacher: teacherId } : {}), students: Array.from(chosen).join(",") });
    try {
      data = await api.get(`/compare?${shown}`);
    } catch (err) {
      mount(result, h("div.error-msg", err.message));
      return;
    }
    if (!ctx.alive) return;
    const models = data.models;
    const curvesPlot = h("div.plot.tall", { dataset: { testid: "compare-curves" } });
    const benchErr = h("div.error-msg");
    const benchBtn = h("button.small", {
      dataset: { testid: "queue-benchmarks" },
      title: "Queue a perplexity evaluation and a speed benchmark for every model shown (they run after queued distillations)",
      onclick: async () => {
        try {
          await queueBenchmarks(models);
          showError(benchErr, null);
          benchBtn.textContent = "Queued ✓ (reload when done)";
          benchBtn.disabled = true;
        } catch (err) {
          showError(benchErr, err);
        }
      },
    }, "Evaluate & benchmark all");
    // Several students' columns outgrow a panel at 1024 px: the tables scroll inside it, not out of it.
    const archBox = h("div.table-scroll", archDiff(models));
    const tableBox = h("div.table-scroll", benchTable(models));
    clearInterval(curveTimer);
    curveTimer = setInterval(() => { if (ctx.alive) drawCurves(curvesPlot, models); }, 5000);
    // Tables follow the live events too: any job of a shown teacher changing status re-reads /compare.
    listenForStatus(models, async () => {
      const fresh = await api.get(`/compare?${shown}`).catch(() => null);
      if (!ctx.alive || !fresh || JSON.stringify(fresh.models) === JSON.stringify(models)) return;
      models.splice(0, models.length, ...fresh.models); // drawCurves holds this array
      mount(archBox, archDiff(models));
      mount(tableBox, benchTable(models));
    });
    mount(result,
      h("section.panel", h("header", h("h2", "Architecture")), archBox),
      h("section.panel", h("header", h("h2", "Benchmarks"), h("span.hint", "★ best in column"), benchBtn), tableBox, benchErr),
      h("section.panel", h("header", h("h2", "Distillation curves"),
        segmented([["val_ppl", "val ppl"], ["val_loss", "val loss"], ["kd_loss", "KD loss"], ["ce_loss", "CE loss"], ["loss", "loss"]], metric, (v) => { metric = v; setQuery({ metric: v }); drawCurves(curvesPlot, models); })),
        h("div.hint", { dataset: { testid: "curves-protocol" }, title: "Each distillation validates on packed blocks of its own sequence length from the validation split (its job page names them); the table's perplexity is on the teacher's protocol." }, "Validation curves: packed validation blocks of each run's sequence length — another protocol than the table's perplexity ", h("span.protocol-mismatch", "≠")),
        curvesPlot),
    );
    drawCurves(curvesPlot, models);
  }

  async function drawCurves(el, models) {
    const Plotly = await plotlyReady();
    const traces = [];
    let i = 0;
    for (const m of models) {
      for (const jobId of (m.distill_jobs || []).slice(-1)) {
        try {
          const res = await api.get(`/jobs/${jobId}/metrics?names=${metric}`);
          const pts = res.series?.[metric] || [];
          if (!pts.length) continue;
          traces.push({ x: pts.map((p) => p.step), y: smooth(pts.map((p) => p.value), metric.startsWith("val") ? 0 : 0.6), name: `${m.name} (job ${jobId})`, mode: pts.length < 3 ? "lines+markers" : "lines", line: { color: SERIES_COLORS[i % SERIES_COLORS.length], width: 2 } });
        } catch {
          /* a missing curve is simply not drawn */
        }
      }
      i += 1;
    }
    if (!ctx.alive) return;
    if (!traces.length) {
      if (!el.data) mount(el, h("div.empty", "No distillation curve yet for these models."));
      return;
    }
    if (!el.data) el.replaceChildren(); // drop the placeholder once, then let plotly update in place
    Plotly.react(el, traces, baseLayout({ height: 320, xaxis: { title: { text: "step", font: { size: 10 } }, ...stepTicks(traces) }, yaxis: metric.endsWith("ppl") ? logAxis(traces) : { type: "linear" } }), PLOT_CONFIG);
  }

  renderPicker();
  // Once a study's students are cut, the comparison shows them (once per study: the user may pick others).
  const shownStudies = new Set();
  const showStudents = (studyId, ids, tid) => {
    if (shownStudies.has(studyId)) return;
    shownStudies.add(studyId);
    chosen.clear();
    ids.forEach((id) => chosen.add(id));
    teacherId = tid;
    update();
    renderPicker();
  };
  // The study starts from the page's teacher, else the one last looked at (not the newest: audit 7).
  const study = renderWizard(wizard, { teachers, datasets, ctx, onStudents: showStudents, teacherId: teacherId ?? teacherLookedAt() });
  load();
}

/** The evaluation settings of the compare page's jobs (the server's defaults), before and after distillation. */
const EVAL_PARAMS = {};

/**
 * Perplexity + speed jobs for each model: students by id, the teacher alone by teacher_id. The teacher's
 * job ids go to `teacherJobs` (a student's jobs are deleted with the student).
 */
async function queueBenchmarks(models, teacherJobs = []) {
  for (const m of models) {
    const who = m.kind === "teacher" ? { teacher_id: m.id } : { student_id: m.id };
    const ids = [(await api.post("/jobs", { kind: "evaluate", ...who, params: EVAL_PARAMS })).id];
    ids.push((await api.post("/jobs", { kind: "benchmark", ...who, params: {} })).id);
    if (m.kind === "teacher") teacherJobs.push(...ids);
  }
}

// ---- tables ------------------------------------------------------------------------------------

const ARCH_ROWS = [
  ["layers", (s) => s.num_layers],
  ["hidden", (s) => s.hidden_size],
  ["query heads", (s) => layerRange(s, "num_heads")],
  ["KV groups", (s) => layerRange(s, "num_kv_heads")],
  ["MLP", (s) => layerRange(s, "intermediate_size")],
  ["parameters", (s) => compact(s.params_total)],
  ["non-embedding", (s) => compact(s.params_non_embedding)],
  ["FLOPs / token", (s) => flops(s.flops_per_token)],
  ["KV cache / token", (s) => bytes(s.kv_cache_bytes_per_token)],
];

function layerRange(spec, key) {
  const xs = (spec.layers || []).map((l) => l[key]);
  if (!xs.length) return spec[key];
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  return lo === hi ? String(lo) : `${lo}–${hi}`;
}

function archDiff(models) {
  const ref = models.find((m) => m.kind === "teacher") || models[0];
  return h("table", { dataset: { testid: "arch-diff" } },
    // Model names as written ("s6", not the header style's "S6").
    h("thead", h("tr", h("th", ""), models.map((m) => h("th.num.model-name", m.name, h("div.faint", m.kind))))),
    h("tbody", ARCH_ROWS.map(([label, get]) => h("tr", h("th", label), models.map((m) => {
      if (!m.spec) return h("td.num", "–");
      const v = String(get(m.spec));
      const differs = ref.spec && m !== ref && v !== String(get(ref.spec));
      return h(`td.num${differs ? ".diff" : ""}`, v);
    })))));
}

/** The newest result of a list (by job id; the API lists newest first today). */
const latest = (list) => (list && list.length ? list.reduce((a, b) => ((b.job_id ?? 0) > (a.job_id ?? 0) ? b : a)) : null);

/** A model's side of the benchmark the table shows ({runs, device, dtype, ...}), or null. */
function benchSide(model, benchmarks) {
  const b = latest(model.benchmarks);
  const side = model.kind === "teacher" ? b?.teacher : b?.student;
  if (side?.runs?.length) return side;
  // A teacher without its own benchmark: every student benchmark measured it too, in the same run.
  if (model.kind === "teacher") for (const other of benchmarks) if (other?.teacher?.runs?.length) return other.teacher;
  return null;
}

/** First measured run (one batch size) of a model's side of a benchmark result. */
const run0 = (model, benchmarks) => benchSide(model, benchmarks)?.runs[0] ?? null;

/** "bfloat16 on cuda:0": what a result ran in (older results lack the dtype, or both); null: unknown. */
function ranOn(result) {
  if (!result?.dtype && !result?.device) return null;
  return [result.dtype, result.device && `on ${result.device}`].filter(Boolean).join(" ");
}

/** What the row's numbers ran in: one phrase when perplexity and speed agree, else each named. */
function ranIn(model, benchmarks) {
  const evaluation = ranOn(shownEvaluation(model));
  const speed = ranOn(benchSide(model, benchmarks));
  if (evaluation && speed && evaluation !== speed) return `perplexity ${evaluation} · speed ${speed}`;
  return evaluation || speed;
}

/** The newest result of a list that measured these weights ("pruned" | "distilled"). */
const latestOf = (list, weights) => latest((list || []).filter((r) => r.weights === weights));

/** A model's evaluations on its teacher's protocol (all of them when the protocol is not known). */
const onProtocol = (model) => (model.eval_protocol ? (model.evaluations || []).filter((r) => r.protocol?.id === model.eval_protocol.id) : model.evaluations || []);

/** The evaluation the table shows: on the teacher's protocol when there is one (else another, marked
 * "≠"), a student's newest of its distilled weights, else the newest of any. */
const shownEvaluation = (model) => {
  const same = onProtocol(model);
  return latestOf(same, "distilled") || latest(same) || latestOf(model.evaluations, "distilled") || latest(model.evaluations);
};
const shownPruned = (model) => latestOf(onProtocol(model), "pruned") || latestOf(model.evaluations, "pruned");

/** "teacher", or which of a student's weights its shown results measured. */
function measuredLabel(model) {
  if (model.kind !== "student") return model.kind;
  const r = shownEvaluation(model) || latest(model.benchmarks);
  if (r?.weights === "distilled") return `student · distilled (job ${r.distill_job_id})`;
  if (r?.weights === "pruned") return "student · pruned, not distilled";
  return "student";
}

function perplexityValue(evaluation) {
  const p = evaluation?.perplexity;
  return typeof p === "number" ? p : p?.perplexity;
}

/** Columns: [label, value getter, "min"|"max" for best, formatter, header tooltip, result shown (its job in the cell's tooltip)]. */
function benchColumns(models) {
  const all = models.map((m) => latest(m.benchmarks)).filter(Boolean);
  const ppl = models.map((m) => shownEvaluation(m)?.perplexity).find((p) => p && typeof p === "object");
  const protocol = models.map((m) => m.eval_protocol).find(Boolean);
  const run = models.map((m) => run0(m, all)).find(Boolean);
  const device = all.map((b) => b?.teacher?.device || b?.student?.device).find(Boolean);
  const cols = [
    ["perplexity", (m) => perplexityValue(shownEvaluation(m)), "min", null, `Perplexity of each model's latest evaluation on the teacher's protocol (a student's newest evaluation of its distilled weights when there is one, i.e. after distillation). ${protocol ? `Protocol ${protocol.id}: ${protocol.description}` : ppl ? `(${ppl.documents} documents, context ${ppl.context}, stride ${ppl.stride})` : ""} ≠ marks a number measured on another protocol (not comparable). The distillation curves' validation perplexity is measured on packed validation blocks: another protocol.`, shownEvaluation],
    // Minitron reports both: how much pruning alone costs, and what distillation wins back.
    ["ppl pruned", (m) => perplexityValue(shownPruned(m)), "min", null, "Perplexity before distillation: a student's newest evaluation of its pruned weights (weights: pruned), as cut from the teacher, on the teacher's protocol; blank when none was run", shownPruned],
    ["params", (m) => m.spec?.params_total, "min"],
    ["prefill tok/s", (m) => run0(m, all)?.prefill_tokens_per_s, "max", null, run ? `batch ${run.batch_size}, ${run.prompt_len}-token prompt${device ? `, on ${device}` : ""}` : ""],
    ["decode tok/s", (m) => run0(m, all)?.decode_tokens_per_s, "max", null, run ? `batch ${run.batch_size}, ${run.new_tokens} new tokens` : ""],
    // Speedup against the teacher measured in the same benchmark job (robust to machine noise), so it
    // need not equal the ratio of the tok/s columns, which come from separate jobs: the header says so.
    [["decode speedup", h("div.faint.th-basis", "vs teacher, same job")], (m) => (m.kind === "teacher" ? 1 : latest(m.benchmarks)?.speedup?.[0]?.decode), "max", (v) => `${v.toFixed(2)}×`, "student decode tok/s ÷ the teacher's, both measured in the student's own benchmark job (the teacher is 1× by definition; the tok/s columns come from separate jobs)"],
    ["peak memory", (m) => run0(m, all)?.peak_memory_bytes, "min", bytes, "weights + KV cache"],
  ];
  // lm-eval task scores: one column per task metric found in any model.
  const taskKeys = new Set();
  for (const m of models) {
    const tasks = shownEvaluation(m)?.tasks;
    if (!tasks || Array.isArray(tasks)) continue;
    for (const [task, metrics] of Object.entries(tasks)) for (const k of Object.keys(metrics || {})) if (typeof metrics[k] === "number" && !k.includes("stderr")) taskKeys.add(`${task}|${k}`);
  }
  for (const key of taskKeys) {
    const [task, k] = key.split("|");
    const lowerBetter = /perplexity|bits|loss/.test(k);
    cols.push([`${task} ${k}`, (m) => shownEvaluation(m)?.tasks?.[task]?.[k], lowerBetter ? "min" : "max"]);
  }
  return cols;
}

/** The row's "ran in" line (dtype, device), when its results recorded them. */
function rowRanIn(model, benchmarks) {
  const text = ranIn(model, benchmarks);
  return text ? h("div.faint", { dataset: { testid: "ran-in" }, title: "dtype and device of the shown evaluation and benchmark" }, text) : null;
}

function benchTable(models) {
  const cols = benchColumns(models);
  const all = models.map((m) => latest(m.benchmarks)).filter(Boolean);
  // A perplexity measured on another protocol than its teacher's is not a candidate for ★ best.
  const comparable = (m, source) => {
    const r = source ? source(m) : null;
    return !(r && r.perplexity !== undefined && m.eval_protocol && r.protocol?.id !== m.eval_protocol.id);
  };
  const best = cols.map(([, get, dir, , , source]) => {
    const vals = models.filter((m) => comparable(m, source)).map(get).filter((v) => typeof v === "number" && Number.isFinite(v));
    if (vals.length < 2) return null;
    return dir === "min" ? Math.min(...vals) : Math.max(...vals);
  });
  return h("table.bench-table", { dataset: { testid: "bench-table" } },
    h("thead", h("tr", h("th", "model"), cols.map(([label, , , , title]) => h(`th.num${title ? ".explained" : ""}`, title ? { title } : {}, label)))),
    h("tbody", models.map((m) => h("tr", h("td", m.name, h("div.faint", { dataset: { testid: "measured-weights" } }, measuredLabel(m)), rowRanIn(m, all)), cols.map(([, get, , fmt, , source], i) => {
      const v = get(m);
      const isBest = best[i] !== null && v === best[i];
      const r = typeof v === "number" && source ? source(m) : null;
      const mark = r && r.perplexity !== undefined ? mismatchMark(r.protocol, m.eval_protocol) : null;
      const shown = typeof v === "number" ? (fmt ? fmt(v) : v >= 1e5 ? compact(v) : sig(v)) : "–";
      // The ★ is an element of its own, so the layout tests can hold it beside its value; its glyph is CSS
      // content, so a cell's text stays its number.
      return h(`td.num${isBest ? ".best" : ""}`, r ? { title: `evaluate job ${r.job_id}${r.weights ? ` (${r.weights} weights)` : ""}${r.protocol ? ` on ${r.protocol.id}` : ""}: ${v}` } : {},
        h("span", { dataset: { testid: "bench-value" } }, shown), isBest ? h("span.best-mark", { dataset: { testid: "best-mark" }, title: "best in column" }) : null, mark);
    })))));
}

// ---- depth vs width wizard ------------------------------------------------------------------------

/** A readable study name, "depth-75%-1": kind, budget, and the next free number among `existing`. */
export function studentName(kind, budgetPct, existing) {
  const stem = `${kind}-${Number(Number(budgetPct).toPrecision(3))}%-`;
  const taken = existing.filter((n) => n.startsWith(stem)).map((n) => Number(n.slice(stem.length))).filter(Number.isInteger);
  return `${stem}${taken.length ? Math.max(...taken) + 1 : 1}`;
}

/**
 * How the depth plan picks its dropped layers from the run's layer scores (GET /importance-runs/{id}/layers):
 * a contiguous block (paper 2) when the run scanned blocks of exactly k layers, else lowest Block
 * Importance, else lowest drop loss, else the angular-distance block (a run with only that scan).
 */
export function depthLayerMethod(layers, k) {
  if (layers.block_loss?.[String(k)]) return "block";
  if (layers.block_importance) return "bi";
  if (layers.drop_loss) return "drop";
  if (Object.keys(layers.block_angular || {}).length) return "angular";
  return "drop"; // no layer scan: the server's refusal names the scans the run lacks
}

// ---- the study: a server-side workflow (backend/workflows; POST /workflows) --------------------------


// How a study step's status shows in its list.
const STEP_CLASS = { succeeded: ".done", running: ".active", queued: ".active", failed: ".failed", cancelled: ".failed" };

/**
 * A study as the server runs it: each model's steps in order (each a link to its job, with its progress),
 * why a step failed, and cancel / retry. The browser only observes: the workers advance the study.
 */
function studyPanel(wf, { onAction, actionErr }) {
  const active = wf.status === "running";
  const stepItem = (s, teacher) => {
    const pct = s.status === "running" && s.progress ? ` ${Math.round(s.progress * 100)}%` : "";
    const name = stepLabel(s.name, teacher);
    const label = `${name}${pct}${s.tries > 1 ? ` (try ${s.tries})` : ""}`;
    return h(`li${STEP_CLASS[s.status] || ""}`, { dataset: { step: s.name, status: s.status } },
      s.job_id ? h("a", { href: href("job", [s.job_id]), title: `job ${s.job_id}: ${s.status}` }, label) : label,
      s.error ? h("div.field-error", s.error) : null);
  };
  return h("div.stack", { dataset: { testid: "study", id: wf.id } },
    h("div.row",
      h("a", { href: href("bakeoff", [wf.id]), dataset: { testid: "study-link" } }, `Bake-off #${wf.id}`),
      statusBadge(wf.status),
      h("span.spacer"),
      active ? h("button.small.danger", { type: "button", dataset: { testid: "study-cancel" }, onclick: () => onAction("cancel") }, "Cancel") : null,
      retriable(wf) ? h("button.small", { type: "button", dataset: { testid: "study-retry" }, title: "run the failed steps again (a distillation resumes from its checkpoint)", onclick: () => onAction("retry") }, "Retry") : null),
    wf.error ? h("div.error-msg", { dataset: { testid: "study-error" } }, wf.error) : null,
    actionErr,
    wf.branches.map((b) => h("div", { dataset: { testid: `study-branch-${b.role === "teacher" ? "teacher" : b.index}` } },
      h("div.row", h("strong", b.name), b.student_id ? h("a.faint", { href: href("compare", [], { students: b.student_id }) }, `student #${b.student_id}`) : null, statusBadge(b.status)),
      h("ol.steps", { dataset: { testid: "wizard-steps" } }, b.steps.map((s) => stepItem(s, b.role === "teacher"))))));
}

/** The budgets (in % of non-embedding parameters) at which the depth student is a whole number of layers
 * and the width one can match it: the ones around the depth student's. */
function wholeLayerHint(spec, depth) {
  if (!depth) return "";
  // Rounded up: n layers are a hair over n/L of the parameters (the final norm is counted whole).
  const at = (n) => Math.ceil(1000 * targetSizes(spec, { num_layers: n }).share_non_embedding - 1e-9) / 10;
  const options = [depth.num_layers, depth.num_layers + 1].filter((n) => n >= 1 && n < spec.num_layers).map((n) => `${at(n).toFixed(1)}% (${n} layers)`);
  return options.length ? `Budgets where depth lands on whole layers: ${options.join(" or ")} of non-embedding params.` : "";
}

function renderWizard(panel, { teachers, datasets, ctx, onStudents, teacherId }) {
  const ready = teachers.filter((t) => t.status === "ready");
  // The page's teacher (?teacher=, its students', the one last looked at), not merely the first ready one.
  const first = ready.find((t) => t.id === teacherId) ?? ready[0];
  const err = h("div.error-msg");
  const study = h("div", { style: { marginTop: "10px" } });
  const runSelect = h("select", { name: "importance_run_id" });
  const preview = h("div.hint");
  const form = h("form.stack",
    h("div.form-grid",
      field({ name: "teacher_id", label: "Teacher", options: ready.map((t) => [t.id, t.name]), value: first?.id }),
      h("label.field", h("span", "Importance run"), runSelect),
      // 51%: about the reference study's size (50%), just over the demo teacher's 4 of 8 layers (whole
      // layers are a hair over 50% with the final norm), so its default students are one size.
      field({ name: "budget_pct", label: "Budget, %", type: "number", value: 51, min: 1, step: "any" }),
      // Non-embedding by default: equal total parameters pair a depth student with far fewer transformer
      // parameters and FLOPs than the width one when the embeddings are a large part of the model.
      field({ name: "budget_count", label: "of the teacher's", options: Object.entries(BUDGET_COUNTS), value: "non_embedding" }),
    ),
    preview,
    h("details", h("summary.hint", "distillation settings (the same for both)"), distillFields(datasets, { steps: 100 })),
    h("div.row", h("span.spacer"), h("button.primary", { type: "submit", dataset: { testid: "wizard-go" } }, "Build, distill & compare")),
    err, study);
  const teacherSelect = form.querySelector("[name=teacher_id]");
  const budgetInput = form.querySelector("[name=budget_pct]");
  const countSelect = form.querySelector("[name=budget_count]");
  // What the study's largest step (a distillation of the bigger student) needs, live, against the workers.
  form.insertBefore(studyMemoryLine(form, ready, studyTargets, distillParams), err);

  // The shown study follows the teacher's event stream (its children are the teacher's jobs).
  let watched = null;
  let started = null; // the study this page started: its students are shown in the comparison once cut
  let closeStream = null;
  ctx.onCleanup(() => closeStream?.());
  const actionErr = h("div.error-msg");
  async function show(id) {
    const wf = await api.get(`/workflows/${id}`).catch(() => null);
    if (!ctx.alive || !wf || watched !== id) return;
    mount(study, studyPanel(wf, { onAction: act, actionErr }));
    // Once both students are cut (ready), the comparison shows them.
    const candidates = wf.branches.filter((b) => b.role === "candidate");
    const cut = candidates.every((b) => b.steps.find((x) => x.name === "cut")?.status === "succeeded");
    if (wf.id === started && candidates.length && cut) onStudents(wf.id, candidates.map((b) => b.student_id), wf.teacher_id);
  }
  async function act(action) {
    try {
      await api.post(`/workflows/${watched}/${action}`);
      showError(actionErr, null);
    } catch (e) {
      showError(actionErr, e);
    }
    show(watched);
  }
  function watch(wf) {
    closeStream?.();
    watched = wf.id;
    const refresh = debounce(() => show(wf.id), 300);
    closeStream = subscribe(`/teachers/${wf.teacher_id}/events`, { status: refresh });
    show(wf.id);
  }

  async function loadRuns() {
    const tid = Number(teacherSelect.value);
    if (!tid) return;
    const runs = (await api.get(`/importance-runs?teacher_id=${tid}`).catch(() => [])).filter((r) => r.status === "succeeded");
    const about = (p = {}) => `${p.samples ?? "?"} × ${p.seq_len ?? "?"} tokens, scans: ${(p.scans || []).join(", ") || "none"}${(p.scans || []).some((s) => s === "block" || s === "angular") ? ` (block k=${p.block_size})` : ""}`;
    mount(runSelect, runs.length ? runs.map((r) => h("option", { value: r.id, title: about(r.params) }, `#${r.id} (${r.params?.samples ?? "?"}×${r.params?.seq_len ?? "?"})`)) : h("option", { value: "" }, "no finished run"));
    showPreview();
    // A study started earlier (in a tab closed since) is still running on the server: show the latest.
    const latest = (await api.get(`/workflows?teacher_id=${tid}&limit=50`).catch(() => [])).find(isStudy);
    if (ctx.alive && latest && !watched) watch(latest);
  }
  function showPreview() {
    const t = ready.find((x) => x.id === Number(teacherSelect.value));
    if (!t) return;
    const { budget, count, depth: d, width: w, gap } = studyTargets(t.spec, Number(budgetInput.value), countSelect.value);
    // Each student's size in both counts and its compute: the budget holds one count, the other follows.
    const size = (target) => {
      const z = targetSizes(t.spec, target);
      return `${compact(z.non_embedding)} non-emb. = ${pct(z.share_non_embedding, 1)}, ${compact(z.total)} total = ${pct(z.share_total, 1)}, ${flops(z.flops)}/token`;
    };
    const dropped = d ? t.spec.num_layers - d.num_layers : 0;
    mount(preview,
      h("div", `budget ${compact(budget)} of ${compact(t.spec[`params_${count}`] ?? budget)} ${BUDGET_COUNTS[count]} →`),
      // One line per student, so the two sizes read one above the other.
      h("div", { dataset: { testid: "study-depth-size" } }, `depth: ${d ? `keeps ${d.num_layers} of ${t.spec.num_layers} layers, drops ${dropped} (${size(d)})` : "impossible"}`),
      h("div", { dataset: { testid: "study-width-size" } }, `width: ${w ? `hidden ${w.hidden_size}, MLP ${w.intermediate_size} (${size(w)})` : "impossible"}`),
      // Depth moves in whole layers, width in aligned steps: two students apart in transformer parameters
      // compare sizes as much as shapes, so say so (and which budgets put depth on a whole layer).
      gap !== null && Math.abs(gap) > STUDY_SIZE_GAP
        ? h("div.field-warning", { dataset: { testid: "study-size-gap" } },
          `The two students are not one size: the ${gap > 0 ? "depth" : "width"} student has ${(100 * Math.abs(gap)).toFixed(1)} percentage points fewer non-embedding parameters, so a difference in loss or speed is partly a difference in size. ${wholeLayerHint(t.spec, d)}`)
        : null);
  }
  const fitToTeacher = () => fitSeqLen(form, ready.find((x) => x.id === Number(teacherSelect?.value))?.spec);
  fitToTeacher();
  teacherSelect?.addEventListener("change", () => { watched = null; fitToTeacher(); loadRuns(); });
  budgetInput.addEventListener("input", showPreview);
  countSelect.addEventListener("change", showPreview);

  const goBtn = form.querySelector("[data-testid=wizard-go]");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = readForm(form);
    const t = ready.find((x) => x.id === Number(v.teacher_id));
    const runId = Number(runSelect.value);
    if (!t || !runId) {
      showError(err, { message: "Pick a ready teacher with a finished importance run (start one in Teachers & data)." });
      return;
    }
    const { depth, width, count } = studyTargets(t.spec, v.budget_pct, v.budget_count || "non_embedding");
    const targets = { depth, width };
    if (!targets.depth || !targets.width) {
      showError(err, { fields: { budget_pct: `${pct(v.budget_pct / 100)} of the teacher's ${BUDGET_COUNTS[count]} is too small for a depth- or a width-pruned student` } }, form);
      return;
    }
    showError(err, null, form);
    goBtn.disabled = true;
    try {
      const k = t.spec.num_layers - targets.depth.num_layers;
      targets.depth.layer_method = depthLayerMethod(await api.get(`/importance-runs/${runId}/layers`), k);
      const existing = (await api.get("/students")).map((x) => x.name);
      // One request: the server fills and saves both plans and starts the study, or refuses it whole
      // (a 422 names the field) and creates nothing. From then on the workers run it, tab open or not.
      const wf = await api.post("/workflows", {
        definition: "bakeoff",
        name: `${STUDY_NAME}${Number(v.budget_pct)}% of ${BUDGET_COUNTS[count]}`,
        teacher_id: t.id,
        importance_run_id: runId,
        candidates: ["depth", "width"].map((kind) => ({ name: studentName(kind, v.budget_pct, existing), targets: targets[kind] })),
        distill: distillParams(form),
        evaluate: EVAL_PARAMS,
        benchmark: {},
        measure_teacher: true,
      });
      started = wf.id;
      watch(wf); // the form keeps its settings: change one and start another study
    } catch (e) {
      // A refused distillation setting is marked in the settings (showError unfolds them).
      showError(err, e, form, { lead: "The study was not started; nothing was created.", fieldFor: distillFieldFor });
    } finally {
      goBtn.disabled = false;
    }
  });

  mount(panel, h("header", h("h2", "Depth vs width study")),
    h("div.hint", { style: { marginBottom: "8px" } }, "From one parameter budget: a depth-pruned student (fewest layers dropped: a contiguous block when the run scanned that block length, else lowest Block Importance, else lowest drop loss, else the block of least angular distance) and a width-pruned one (hidden and MLP shrunk, all layers and heads kept), both from the same importance run, each evaluated as cut, then distilled with the same budget. The server runs the study: closing this tab does not stop it."),
    ready.length ? form : h("div.empty", "Register a teacher first."));
  loadRuns();
  /** The page's teacher changed (ticked in Models): the study follows it, as it started with it. */
  const follow = (tid) => {
    if (!teacherSelect || Number(teacherSelect.value) === tid || !ready.some((t) => t.id === tid)) return;
    teacherSelect.value = String(tid);
    teacherSelect.dispatchEvent(new Event("change"));
    showPreview();
  };
  return { follow };
}
