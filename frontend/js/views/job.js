// One job, live: loss curves growing from SSE metric events (components/curves.js), smoothing / log-y /
// x-axis controls, each rank's live figures (several ranks), progress with ETA, cancel & resume, logs and
// failure reasons, results.
// URL: #/job/<id>?x=step|tokens|time&smooth=0.6&logy=1

import { api, showError } from "../api.js";
import { curveTraces, debounced, SeriesStore, smoothable, smoothingControl, stepTicks, X_FIELDS, xAxisControl } from "../components/curves.js";
import { jobResult, liveRanks, rankFigures } from "../components/results.js";
import { dataLabel } from "../components/runtable.js";
import { progressBar, statusBadge, statusReason } from "../components/widgets.js";
import { h, mount } from "../dom.js";
import { compact, duration, when } from "../format.js";
import { baseLayout, logAxis, PLOT_CONFIG, plotlyReady } from "../plots.js";
import { href, setQuery } from "../router.js";
import { followJob } from "../sse.js";
import { mismatchMark, protocolNote, sameProtocol } from "../components/protocol.js";

// One small chart per metric (W&B style): losses of very different scales never share an axis.
const METRICS = [
  ["kd_loss", "KD loss · KL(teacher ‖ student)"],
  ["ce_loss", "CE loss"],
  ["loss", "training loss (optimised)"],
  ["val_ppl", "validation perplexity"],
  ["val_loss", "validation loss"],
  ["val_kl", "validation KL to the teacher"],
  ["grad_norm", "gradient norm"],
  ["lr", "learning rate"],
  ["tokens_per_s", "throughput (tokens / s)"],
];

export async function jobView(host, { args, query }, ctx) {
  const id = Number(args[0]);
  const view = { x: query.get("x") || "step", smooth: Number(query.get("smooth") ?? 0.6), logy: query.get("logy") === "1" };
  let job;
  try {
    job = await api.get(`/jobs/${id}`);
  } catch (err) {
    mount(host, h("div.error-msg", err.message));
    return;
  }
  // A workflow (a bake-off, a depth-vs-width study) has its own page: its branches, steps and ranking.
  if (job.kind === "workflow") {
    if (ctx.alive) location.replace(href("bakeoff", [job.id]));
    return;
  }
  const [student, datasets, plan] = await Promise.all([
    job.student_id ? api.get(`/students/${job.student_id}`).catch(() => null) : null,
    api.get("/datasets").catch(() => []), // the params line names the data it read
    job.plan_id ? api.get(`/plans/${job.plan_id}`).catch(() => null) : null, // what a preview measures
  ]);
  if (!ctx.alive) return; // the user left while this loaded: never draw over the next page
  const store = new SeriesStore();
  // The event stream replays the job's events from the start (and again after a resume re-connects):
  // a log line already shown, by its event id, is not shown twice.
  const shownLogs = new Set();

  const header = h("div");
  const actionErr = h("div.error-msg");
  // Only distillation records curves: other kinds show their numbers under Result, with no empty chart area.
  const curves = job.kind === "distill";
  const waiting = h("section.panel", h("div.empty", "Waiting for the first training step…"));
  const charts = new Map(
    METRICS.map(([name, label]) => {
      const plot = h("div.plot", { dataset: { testid: `plot-${name}` } });
      // A validation curve says what it is measured on, and whether that is its teacher's protocol.
      const validated = name.startsWith("val_") && job.protocol;
      const measured = h("div.chart-sub", validated ? protocolNote(job.protocol, { testid: `curve-protocol-${name}` }) : null);
      if (validated && job.teacher_id) {
        api.get(`/teachers/${job.teacher_id}`).then((t) => measured.append(mismatchMark(job.protocol, t.eval_protocol, { testid: `curve-mismatch-${name}` }) ?? ""), () => {});
      }
      const panel = h("section.panel.hidden", h("header.chart-head", h("h2", label), measured), plot);
      return [name, { panel, plot }];
    }),
  );
  const logBox = h("div.log", { dataset: { testid: "job-log" } });
  const resultBox = h("div", { dataset: { testid: "job-result" } });
  const benchBox = h("div");
  const pointCount = h("span.hint", { dataset: { testid: "point-count" } });
  // A distillation over several ranks: each rank's figures of the latest logged step, while it runs.
  const ranksBox = h("div");
  const ranksPanel = h("section.panel.hidden", { style: { marginBottom: "14px" }, dataset: { testid: "live-ranks-panel" } }, h("header", h("h2", "Ranks"), h("span.hint", "latest logged step, live")), ranksBox);
  const redraw = debounced(() => drawCurves(), 200);
  const schedule = redraw.schedule;

  mount(host,
    header,
    h(`section.panel${job.kind === "distill" ? "" : ".hidden"}`, { style: { marginBottom: "14px" } },
      h("div.row",
        xAxisControl(view, [["step", "step"], ["tokens", "tokens"], ["time", "wall time"]], schedule, { dataset: { testid: "x-axis" } }),
        smoothingControl(view, schedule, { dataset: { testid: "smoothing" } }),
        h("label.check", h("input", { type: "checkbox", checked: view.logy, dataset: { testid: "logy" }, onchange: (ev) => { view.logy = ev.target.checked; setQuery({ logy: view.logy ? "1" : "" }); schedule(); } }), "log y"),
        h("span.spacer"), pointCount)),
    curves ? ranksPanel : null,
    curves ? h("div.grid.charts", waiting, Array.from(charts.values(), (c) => c.panel)) : null,
    h("section.panel", { style: { marginTop: curves ? "14px" : 0 } }, h("header", h("h2", "Result")), resultBox),
    // A job without a student (inspect, importance, a teacher's evaluation) has no student measurements to list.
    h(`div${student ? ".grid.two" : ""}`, { style: { marginTop: "14px" } },
      student ? h("section.panel", { dataset: { testid: "student-benchmarks" } }, h("header", h("h2", job.kind === "evaluate" || job.kind === "benchmark" ? "Other measurements of this student" : "Benchmarks of this student")), benchBox) : null,
      h("section.panel", h("header", h("h2", "Log")), logBox)),
  );

  function renderHeader() {
    const canCancel = job.status === "queued" || job.status === "running";
    const canResume = job.resumable && (job.status === "failed" || job.status === "cancelled");
    mount(header,
      h("div.page-head",
        h("h1", `${job.kind} job #${job.id}`),
        statusBadge(job.status),
        student ? h("span.sub", "student ", h("a", { href: href("runs", [], { student: student.id }) }, student.name)) : null,
        // A preview names the plan it measures, opened in the explorer on its importance run when it has one.
        plan ? h("span.sub", { dataset: { testid: "job-plan" } }, "plan ", plan.importance_run_id
          ? h("a", { href: href("explore", [plan.importance_run_id], { plan: plan.id }) }, plan.name)
          : plan.name, h("span.faint", ` #${plan.id} v${plan.version}`)) : null,
        // A step of a workflow (a bake-off, a depth-vs-width study): its page shows the other steps.
        job.parent_id ? h("span.sub", "step of ", h("a", { href: href("bakeoff", [job.parent_id]), dataset: { testid: "job-workflow" } }, `workflow #${job.parent_id}`)) : null,
        job.params?.baseline ? h("span.badge", "baseline (no teacher)") : null,
        h("span.hint", { dataset: { testid: "job-where" } }, `${job.device ? `on ${job.device}${job.worker ? ` (${job.worker})` : ""} · ` : ""}created ${when(job.created_at)}${job.attempts > 1 ? ` · attempt ${job.attempts}` : ""}`),
        h("span.spacer"),
        // Only the actions this status allows: a succeeded job offers neither; a failed one without a
        // checkpoint shows Resume greyed, its title saying why.
        canCancel ? h("button.danger", { onclick: () => act("cancel"), dataset: { testid: "cancel" } }, "Cancel") : null,
        job.status === "failed" || job.status === "cancelled"
          ? h("button", { disabled: !canResume, onclick: () => act("resume"), dataset: { testid: "resume" }, title: job.checkpoint_step ? `resume from step ${job.checkpoint_step}` : job.resumable ? "run it again (it never started; routed to a worker anew)" : "needs a checkpoint" }, "Resume")
          : null,
        // A queued job whose message the broker lost (the API also re-sends those by itself).
        job.status === "queued" ? h("button", { onclick: () => act("resend"), dataset: { testid: "resend" }, title: "publish its message again, if it is stuck in the queue (a duplicate never runs it twice)" }, "Re-send") : null,
        student ? h("a.btn", { href: href("compare", [], { students: student.id, teacher: student.teacher_id }) }, "Compare") : null,
        // An importance job's scores are read in the explorer.
        job.kind === "importance" && job.importance_run_id && job.status === "succeeded" ? h("a.btn", { href: href("explore", [job.importance_run_id]), dataset: { testid: "job-explore" } }, "Open explorer →") : null,
      ),
      h("section.panel", { style: { marginBottom: "14px" }, dataset: { testid: "job-progress" } },
        progressBar(job, { big: true }),
        h("div.hint", { style: { marginTop: "4px" }, dataset: { testid: "job-params" } }, paramsLine(job, datasets)),
        statusReason(job, { testid: "job-error" }),
        actionErr),
    );
  }

  async function act(what) {
    try {
      job = await api.post(`/jobs/${job.id}/${what}`);
      showError(actionErr, null);
      renderHeader();
      if (what === "resume") connect();
    } catch (err) {
      showError(actionErr, err);
    }
  }

  async function renderResult() {
    const r = job.result;
    if (!r) {
      const text = { succeeded: "No result recorded.", failed: "No result: the job failed (reason above).", cancelled: "No result: the job was cancelled." }[job.status] || "Appears when the job finishes.";
      mount(resultBox, h("div.empty", text));
      return;
    }
    // A distillation's result is on its validation protocol (the job's), named under its cards; its ranks
    // are GPUs or CPU ranks by the job's device.
    mount(resultBox, jobResult(job.kind, job.kind === "distill" ? { ...r, protocol: r.protocol ?? job.protocol, device: r.device ?? job.device } : r, await teacherEvaluation(job)));
  }

  // ---- curves ------------------------------------------------------------------------------
  async function drawCurves() {
    const Plotly = await plotlyReady();
    if (!ctx.alive) return;
    const figures = rankFigures(store);
    ranksPanel.classList.toggle("hidden", !figures);
    if (figures) mount(ranksBox, liveRanks(figures));
    const opts = { x: view.x, weight: view.smooth };
    const xaxis = { title: { text: X_FIELDS[view.x][1], font: { size: 10 } } };
    const yaxis = { type: "linear" };
    // Show every panel that has data first, then draw at the final widths (explicit, so a panel
    // appearing later never leaves its neighbours drawn at a stale size).
    for (const [name] of METRICS) if (store.count(name)) charts.get(name).panel.classList.remove("hidden");
    let any = false;
    METRICS.forEach(([name], i) => {
      const { plot } = charts.get(name);
      const weight = smoothable(name) ? opts.weight : 0;
      const traces = curveTraces(store, [name], { ...opts, weight, colorOffset: i });
      if (!traces.length) return;
      any = true;
      // Learning rates read as 1e-4 (as set in the form), not Plotly's SI "100µ".
      // Log y: ticks by how far the values span (plots.logTicks), not a label at every digit.
      const axis = view.logy ? logAxis(traces) : yaxis;
      const y = name === "lr" ? { ...axis, tickformat: "~e" } : axis;
      const x = view.x === "step" ? { ...xaxis, ...stepTicks(traces) } : xaxis;
      const layout = baseLayout({ xaxis: x, yaxis: y, height: 220, width: plot.clientWidth || undefined, showlegend: false, margin: { l: 52, r: 10, t: 6, b: 34 } });
      Plotly.react(plot, traces, layout, PLOT_CONFIG);
    });
    waiting.classList.toggle("hidden", any);
    pointCount.textContent = `${store.count("loss") || store.count("kd_loss") || store.count("ce_loss")} steps · ${store.count("val_ppl") || store.count("val_loss")} validation points`;
    pointCount.dataset.steps = String(store.count("loss") || store.count("kd_loss") || store.count("ce_loss"));
  }

  // ---- data: metrics snapshot, then the live stream (deduplicated by step) --------------------
  try {
    store.addSnapshot(await api.get(`/jobs/${job.id}/metrics`));
  } catch (err) {
    console.warn(err);
  }
  try {
    const logs = await api.get(`/jobs/${job.id}/logs`);
    for (const line of logs) appendLog(line, line.id);
  } catch {
    /* logs are optional */
  }
  if (!logBox.childElementCount) logBox.append(h("div.faint", "No log lines yet."));
  function appendLog(line, id) {
    if (id) {
      if (shownLogs.has(id)) return;
      shownLogs.add(id);
    }
    const placeholder = logBox.querySelector(".faint");
    if (placeholder) placeholder.remove();
    const el = h(`div${line.level === "error" ? ".err" : ""}`, `${line.t ? `${String(line.t).slice(11, 19)} ` : ""}${line.level !== "info" ? `[${line.level}] ` : ""}${line.msg}`);
    logBox.append(el);
    logBox.scrollTop = logBox.scrollHeight;
  }

  function showJob(j) {
    const changed = j.status !== job.status;
    job = j;
    renderHeader();
    if (changed) {
      renderResult();
      loadBenchmarks();
    }
  }

  let close = null;
  function connect() {
    if (close) close();
    close = followJob(() => job, showJob, {
      metric: (ev) => {
        store.addMetricEvent(ev);
        schedule();
      },
      log: (line, ev) => appendLog({ t: new Date().toISOString(), ...line }, Number(ev.lastEventId) || null),
    });
  }
  // Charts are drawn at explicit widths: redraw them when the window changes size.
  window.addEventListener("resize", schedule);
  ctx.onCleanup(() => {
    if (close) close();
    redraw.cancel();
    window.removeEventListener("resize", schedule);
  });

  async function loadBenchmarks() {
    if (!student) {
      mount(benchBox, h("div.empty", "–"));
      return;
    }
    try {
      const jobs = await api.get(`/jobs?student_id=${student.id}`);
      // This job's own result is under Result already: the panel lists the student's other measurements.
      const done = jobs.filter((j) => (j.kind === "evaluate" || j.kind === "benchmark") && j.result && j.id !== job.id);
      mount(benchBox, done.length ? h("div.stack", done.map((j) => h("div", h("div.hint", h("a", { href: href("job", [j.id]) }, `${j.kind} #${j.id}`), ` · ${when(j.finished_at)}`), jobResult(j.kind, j.result)))) : h("div.empty", job.student_id && (job.kind === "evaluate" || job.kind === "benchmark") ? "No other evaluation or benchmark of this student yet." : "No evaluation or benchmark yet (queue one from Runs)."));
    } catch (err) {
      mount(benchBox, h("div.error-msg", err.message));
    }
  }

  renderHeader();
  renderResult();
  loadBenchmarks();
  drawCurves();
  connect();
}

function paramsLine(job, datasets) {
  const p = job.params || {};
  const parts = [];
  const budget = p.tokens ? `${compact(p.tokens)} tokens` : p.steps ? `${p.steps} steps` : null;
  const data = dataLabel(job, datasets);
  if (budget || data) parts.push([budget, data ? `on ${data}` : null].filter(Boolean).join(" "));
  for (const [k, label] of [["lr", "lr"], ["temperature", "T"], ["ce_weight", "CE w"], ["batch_size", "batch"], ["seq_len", "seq"], ["teacher_correction_steps", "teacher corr."]]) {
    if (p[k] === undefined || p[k] === null || (k === "teacher_correction_steps" && !p[k])) continue; // no correction: not worth a word
    parts.push(`${label} ${p[k]}`);
  }
  // While it runs the progress bar's line says the message ("step 84/200") beside the % and ETA: once.
  // A finished job's "done" is its status badge again.
  if (job.message && job.status !== "running" && !(job.status === "succeeded" && job.message === "done")) parts.push(job.message);
  if (job.started_at && job.finished_at) parts.push(`took ${duration((new Date(job.finished_at) - new Date(job.started_at)) / 1000)}`);
  return parts.join(" · ");
}

/** The teacher's latest evaluation on the same protocol as a student's (data, split, documents, window
 * and stride: the protocol's id), to show beside it; a figure on another protocol is not comparable
 * (matching four params let one at another stride through). */
async function teacherEvaluation(job) {
  if (job.kind !== "evaluate" || !job.student_id || !job.teacher_id) return null;
  const protocol = job.result?.protocol ?? job.protocol;
  if (!protocol) return null;
  const jobs = await api.get(`/jobs?kind=evaluate&status=succeeded&teacher_id=${job.teacher_id}`).catch(() => []);
  const match = jobs.find((j) => !j.student_id && j.result && sameProtocol(j.result.protocol ?? j.protocol, protocol));
  return match ? match.result : null;
}
