// Runs: students and their jobs; queue distillation (or the no-teacher baseline), evaluation, benchmark.
// URL: #/runs?student=<id>

import { api, authUrl, showError } from "../api.js";
import { keepingFocus, linkRow, progressBar, rowLink, selectRow, statusBadge, statusReason } from "../components/widgets.js";
import { h, mount, toast } from "../dom.js";
import { bytes, compact, pct, when } from "../format.js";
import { go, href, setQuery } from "../router.js";
import { measureMemoryLine, memoryLine, queueFor } from "../components/memline.js";
import { distillCandidates, fitLine } from "../memplan.js";
import { shapeLabel } from "../searchmath.js";
import { distillNeed } from "../jobmemory.js";
import { paramCount } from "../costmodel.js";
import { remember } from "../remember.js";
import { DISTILL_FORM_KEY, distillFieldFor, distillFields, distillParams, fitSeqLen } from "../components/distillform.js";
import { RunsTable } from "../components/runtable.js";
import { MEASURABLE_DISTILLS } from "../serverconfig.js";

/** Live "needs X per device; fits ..." for the distill form of student `s` (spec) from teacher `t`. */
export function distillMemoryLine(form, student, teacher) {
  return memoryLine(form, (v, workers) => {
    if (!student?.spec || !(v.batch_size >= 1) || !(v.seq_len >= 2)) return null;
    if (!v.baseline && !teacher?.spec) return null;
    const settings = { batch_size: v.batch_size, seq_len: v.seq_len, weights_dtype: v.weights_dtype || "float32", gradient_checkpointing: !!v.gradient_checkpointing };
    const queue = queueFor(v.device || "auto", workers);
    const device = queue === "gpu" ? "cuda" : "cpu";
    const gpus = Math.max(1, v.gpus || 1), nodes = Math.max(1, v.nodes || 1);
    const ranks = gpus * nodes;
    const t = v.baseline ? null : teacher.spec;
    // The API's figure (memcheck.distill_need): the sharded step per GPU, or per CPU host for its ranks;
    // with teacher correction the larger of that and the correction's phases.
    const base = { gpus, nodes, baseline: !!v.baseline, teacher_correction_steps: v.teacher_correction_steps || 0 };
    const need = (p) => distillNeed(student.spec, t, { ...base, ...p }, device);
    if (ranks === 1) return fitLine(need, settings, workers, queue, distillCandidates(settings));
    // N ranks: only workers with `gpus` devices (CPU ranks) can hold a node.
    const able = workers.filter((w) => (w.device_count || 1) >= gpus);
    const out = fitLine(need, settings, able, queue, distillCandidates(settings));
    const unit = device === "cuda" ? "GPU" : "CPU rank";
    const head = `${ranks} ranks (${gpus} ${unit}${gpus > 1 ? "s" : ""} x ${nodes} node${nodes > 1 ? "s" : ""})`;
    const per = device === "cuda" ? "per GPU" : "per worker";
    let text = out.text.replace("per device", `${per}, ${head}`);
    if (t) { // what the worker's memory planner weighs: a whole teacher per rank instead of its shard
      const whole = paramCount(t).total * (settings.weights_dtype === "bfloat16" ? 2 : 4);
      const extra = (whole - whole / ranks) * (device === "cuda" ? 1 : gpus);
      text += `; teacher replicated: ${bytes(out.needed + extra)} ${per} (chosen when it fits)`;
    }
    const onQueue = (w) => !queue || (w.queues || []).includes(queue);
    const holders = able.filter(onQueue).length;
    if (workers.some(onQueue) && holders < nodes) { // the API's 409: too few workers with that many devices
      return { text: `${text}; only ${holders} live worker(s) with ${gpus} device(s) for ${nodes} node(s)`, fits: false, needed: out.needed };
    }
    return { ...out, text };
  }, { kind: "distill", params: distillParams });
}

export async function runsView(host, { query }, ctx) {
  const state = { students: [], teachers: [], datasets: [], jobs: [], selected: Number(query.get("student")) || null };
  const list = h("div");
  const detail = h("div.stack");
  const runs = new RunsTable(ctx, () => refresh());
  mount(host,
    h("div.page-head", h("h1", "Runs"), h("span.sub", "Students cut from a plan, their distillation, evaluation and benchmark jobs.")),
    h("div.grid", { style: { gridTemplateColumns: "minmax(300px, 420px) minmax(0, 1fr)" } },
      h("section.panel", h("header", h("h2", "Students")), list),
      detail),
    h("section.panel", { style: { marginTop: "14px" }, dataset: { testid: "runs-panel" } }, h("header", h("h2", "Runs"), h("span.hint", "every job: search, filter, rename, tag, delete, export; tick runs to overlay their curves")), runs.el),
  );

  async function refresh() {
    try {
      [state.students, state.teachers, state.datasets, state.jobs] = await Promise.all([api.get("/students"), api.get("/teachers"), api.get("/datasets"), api.get("/jobs?limit=500")]);
    } catch (err) {
      mount(list, h("div.error-msg", err.message));
      return;
    }
    if (!ctx.alive) return;
    if (!state.selected && state.students.length) state.selected = state.students[0].id;
    renderList();
    renderDetail();
    runs.update({ jobs: state.jobs, students: state.students, teachers: state.teachers, datasets: state.datasets });
  }

  const teacherOf = (s) => state.teachers.find((t) => t.id === s.teacher_id);

  function renderList() {
    if (!state.students.length) {
      mount(list, h("div.empty", "No student yet. Build a plan in the ", h("a", { href: "#/explore" }, "explorer"), " and press ", h("strong", "Create student"), "."));
      return;
    }
    keepingFocus(list, "data-student-id", () => mount(list, h("table", h("thead", h("tr", h("th", "student"), h("th.num", "params"), h("th", "status"))),
      h("tbody", state.students.map((s) => {
        const t = teacherOf(s);
        const select = () => { state.selected = s.id; setQuery({ student: s.id }); renderList(); renderDetail(); };
        return selectRow(s.id === state.selected, { dataset: { studentId: s.id } }, select,
          // Its shape under its name: a bake-off's students are named by a search's ids ("#1 L4-none.H6…").
          h("td", s.name, s.spec ? h("div.muted", { dataset: { testid: "student-shape" } }, shapeLabel(s.spec, t?.spec)) : null, h("div.faint", `from ${t ? t.name : `teacher ${s.teacher_id}`} · plan #${s.plan_id}`)),
          h("td.num", s.spec ? compact(s.spec.params_total) : "–", s.spec && t?.spec ? h("div.faint", pct(s.spec.params_total / t.spec.params_total, 0)) : null),
          h("td", statusBadge(s.status)));
      })))));
  }

  const teacherName = (id) => {
    const t = state.teachers.find((x) => x.id === id);
    return t ? h("span.muted", `${t.name} (teacher)`) : "–";
  };

  function jobRow(j) {
    const student = state.students.find((s) => s.id === j.student_id);
    return linkRow(href("job", [j.id]), { dataset: { jobId: j.id } },
      h("td.mono", rowLink(href("job", [j.id]), `#${j.id}`)), h("td.nowrap", j.kind, j.params?.baseline ? h("span.badge", { style: { marginLeft: "6px" } }, "baseline") : null),
      h("td", student ? student.name : j.student_id ? `student ${j.student_id}` : teacherName(j.teacher_id)),
      h("td", statusBadge(j.status), statusReason(j, { inline: true })),
      h("td", { style: { width: "26%" } }, progressBar(j)), h("td.faint.nowrap", when(j.created_at)));
  }

  let detailKey = null;
  const studentJobs = h("div");
  function renderStudentJobs(s) {
    const jobs = state.jobs.filter((j) => j.student_id === s.id);
    const head = h("thead", h("tr", ["job", "kind", "model", "status", "progress", "created"].map((c) => h("th", c))));
    mount(studentJobs, jobs.length ? h("table", { dataset: { testid: "student-jobs" } }, head, h("tbody", jobs.map(jobRow))) : h("div.empty", "No job yet."));
  }

  function renderDetail() {
    const s = state.students.find((x) => x.id === state.selected);
    // Re-render the forms only when the student or its status changes, so polling keeps typed values.
    // Its distillations too: a new one is a new choice of weights to measure.
    const distills = s ? state.jobs.filter((j) => j.student_id === s.id && j.kind === "distill" && MEASURABLE_DISTILLS.includes(j.status)).map((j) => j.id) : [];
    const key = s ? `${s.id}:${s.status}:${distills.join(",")}` : null;
    if (s && key === detailKey) {
      renderStudentJobs(s);
      return;
    }
    detailKey = key;
    if (!s) {
      mount(detail, h("section.panel", h("div.empty", "Select a student.")));
      return;
    }
    const t = teacherOf(s);
    const err = h("div.error-msg");
    const form = h("form.stack", { dataset: { testid: "distill-form" } }, distillFields(state.datasets), h("div.row", h("span.spacer"), h("button.primary", { type: "submit", disabled: s.status !== "ready", title: s.status === "ready" ? "" : "the student can be distilled once its cut has finished", dataset: { testid: "queue-distill" } }, "Queue distillation")), err);
    fitSeqLen(form, s.spec);
    form.insertBefore(distillMemoryLine(form, s, t), err);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const job = await api.post("/jobs", { kind: "distill", student_id: s.id, params: distillParams(form) });
        remember(DISTILL_FORM_KEY, form); // the next form starts from these settings
        showError(err, null, form);
        toast(`Distillation job #${job.id} queued.`);
        go("job", [job.id]);
      } catch (e) {
        showError(err, e, form, { fieldFor: distillFieldFor });
      }
    });
    const quickErr = h("div.error-msg");
    const weightsChoice = weightsSelect(state.jobs.filter((j) => j.student_id === s.id));
    const quick = (kind) => async () => {
      try {
        const job = await api.post("/jobs", { kind, student_id: s.id, params: weightsParams(weightsChoice.querySelector("select").value) });
        showError(quickErr, null);
        toast(`${kind} job #${job.id} queued.`);
        refresh();
      } catch (e) {
        showError(quickErr, e);
      }
    };
    // The next round of an iterative chain (8B -> 4B -> 2B): the student's weights become a teacher.
    const promote = async () => {
      try {
        const teacher = await api.post(`/students/${s.id}/promote`, {});
        toast(`Teacher "${teacher.name}" registered; inspecting its config…`);
        go("teachers", [], { teacher: teacher.id });
      } catch (e) {
        showError(quickErr, e);
      }
    };
    // A student made by mistake (or a teacher's last one, which the teacher's Delete waits for).
    const removeStudent = async () => {
      if (!confirm(`Delete student #${s.id} "${s.name}" with its weights and finished jobs?`)) return;
      try {
        await api.del(`/students/${s.id}`);
      } catch (e) {
        showError(quickErr, e); // the server's 409 says what still needs it; nothing changes
        return;
      }
      toast(`Student "${s.name}" deleted.`);
      state.selected = null;
      setQuery({ student: null });
      refresh();
    };
    // A pending student's cut job: queued behind other jobs, or running.
    const cut = state.jobs.find((j) => j.kind === "prune" && j.student_id === s.id && ["queued", "running"].includes(j.status));
    const cutting = cut?.status === "queued" ? "The cut is queued behind other jobs…" : "The cut is running…";
    renderStudentJobs(s);
    const spec = s.spec;
    mount(detail,
      h("section.panel", { dataset: { testid: "student-detail" } },
        h("header", h("h2", s.name), statusBadge(s.status),
          h("a.btn", { href: href("compare", [], { students: s.id, teacher: s.teacher_id }) }, "Compare with teacher"),
          s.status === "ready" ? h("a.btn", { href: authUrl(`/students/${s.id}/download`) }, "Download") : null,
          s.status === "ready" ? h("button", { onclick: promote, dataset: { testid: "promote" }, title: "register its newest distilled weights (else the pruned ones) as a teacher: the next round of compression" }, "Use as teacher") : null,
          s.status !== "pending" ? h("button.ghost.small", { onclick: removeStudent, dataset: { testid: "student-delete" }, title: "delete this student, its weights and its finished jobs; refused while a job uses it" }, "Delete") : null),
        s.error ? h("div.error-msg", s.error) : null,
        spec ? h("dl.kv",
          h("dt", "shape"), h("dd", `${spec.num_layers} layers · hidden ${spec.hidden_size} · heads ${spec.num_heads} (${spec.num_kv_heads} KV groups) · MLP ${spec.intermediate_size}${spec.uniform ? "" : " (non-uniform)"}`),
          h("dt", "parameters"), h("dd", `${compact(spec.params_total)}${t?.spec ? ` (${pct(spec.params_total / t.spec.params_total)} of ${t.name})` : ""}`),
          h("dt", "artifact"), h("dd", s.path || "–")) : h("div.empty", s.status === "pending" ? cutting : "No weights."),
        h("div.row", { style: { marginTop: "10px" } },
          weightsChoice,
          h("button", { disabled: s.status !== "ready", onclick: quick("evaluate"), dataset: { testid: "evaluate-student" } }, "Evaluate perplexity"),
          h("button", { disabled: s.status !== "ready", onclick: quick("benchmark"), dataset: { testid: "benchmark-student" } }, "Benchmark speed")),
        measureMemoryLine(s, t),
        quickErr),
      h("section.panel", h("header", h("h2", "Queue distillation"), h("span.hint", "forward KL to the teacher's logits (Minitron); baseline trains on CE without the teacher")), form),
      h("section.panel", h("header", h("h2", "Jobs of this student")), studentJobs),
    );
  }

  const poll = setInterval(() => {
    const busy = state.jobs.some((j) => j.status === "queued" || j.status === "running") || state.students.some((s) => s.status === "pending");
    if (busy) refresh();
  }, 3000);
  ctx.onCleanup(() => clearInterval(poll));
  await refresh();
}

// Which weights of a student an evaluate / benchmark job measures (the API's `weights` / `distill_job_id`,
// backend/schemas.py OnWeights): its newest distillation (the API's default), as cut, or one distillation.

/** The "weights" select over a student's `jobs`: "latest", "pruned", then "distill:<id>" per distillation. */
export function weightsSelect(jobs) {
  const distills = jobs.filter((j) => j.kind === "distill" && MEASURABLE_DISTILLS.includes(j.status)).sort((a, b) => b.id - a.id);
  const select = h("select", { name: "weights", dataset: { testid: "measure-weights" }, title: "which weights of this student the evaluation or benchmark measures" },
    h("option", { value: "latest" }, distills.length ? "newest distillation" : "newest distillation (none yet: as cut)"),
    h("option", { value: "pruned" }, "as cut (pruned, not distilled)"),
    distills.map((j) => h("option", { value: `distill:${j.id}` }, `distillation #${j.id}${j.name ? ` ${j.name}` : ""}${j.status === "succeeded" ? "" : ` (${j.status})`}`)));
  return h("label.ctl", h("span", "weights"), select);
}

/** The job params of a weights choice (weightsSelect's value). */
export function weightsParams(value) {
  if (value?.startsWith("distill:")) return { distill_job_id: Number(value.slice("distill:".length)) };
  return value === "pruned" ? { weights: "pruned" } : {};
}
