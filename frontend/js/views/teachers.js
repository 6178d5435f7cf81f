// Teachers & data: register (and delete) teachers and datasets, read a teacher's architecture, start
// importance runs and watch their progress (teacher SSE stream; a slow poll as a safety net).

import { api, showError } from "../api.js";
import { memoryLine, queueFor } from "../components/memline.js";
import { field, gangWaitField, gangWaitFollowsNodes, gangWaitParam, keepingFocus, progressBar, readForm, selectRow, statusBadge, statusReason } from "../components/widgets.js";
import { h, mount, toast } from "../dom.js";
import { bytes, compact, flops, int, when } from "../format.js";
import { bestLayout, halvedBatches, importanceLayout, importanceNeed, spillDiskLimit, spillLimitBytes } from "../jobmemory.js";
import { fitLine, usableBytes } from "../memplan.js";
import { go, href, setQuery } from "../router.js";
import { workersPanel } from "../components/workers.js";
import { subscribe } from "../sse.js";
import { serverConfig } from "../serverconfig.js";
import { fitPositions, flopsPerToken } from "../costmodel.js";
import { lookAtTeacher } from "../lookingat.js";
import { protocolEditor, protocolNote } from "../components/protocol.js";
import { dataLabel } from "../components/runtable.js";

export async function teachersView(host, { query }, ctx) {
  const state = { teachers: [], datasets: [], runs: [], config: {}, selected: Number(query.get("teacher")) || null };

  const teacherList = h("div", { dataset: { testid: "teacher-list" } });
  const datasetList = h("div", { dataset: { testid: "dataset-list" } });
  // A refused delete (409: a teacher's students or unfinished jobs, what still names a dataset) shows here.
  const teacherListErr = h("div.error-msg", { dataset: { testid: "teacher-delete-error" } });
  const datasetListErr = h("div.error-msg", { dataset: { testid: "dataset-delete-error" } });
  const detail = h("div.stack");
  const workersLine = h("span.sub", { dataset: { testid: "workers" } });

  // ---- register forms ------------------------------------------------------------------
  const teacherErr = h("div.error-msg");
  const teacherForm = h(
    "form.stack",
    { dataset: { testid: "teacher-form" } },
    h("div.form-grid",
      // Empty, with examples as placeholders (audit 24): a prefilled form registered "demo-teacher" again.
      field({ name: "name", label: "Name", placeholder: "e.g. my-teacher" }),
      field({ name: "source", label: "Source", placeholder: "demo | /abs/path | org/model", title: "\"demo\" (the shipped demo teacher), a local model directory, or a Hugging Face hub id" }),
    ),
    h("div.row", field({ name: "trust_remote_code", label: "trust remote code", type: "checkbox" }), h("span.spacer"), h("button.primary", { type: "submit" }, "Register teacher")),
    teacherErr,
  );
  // One click must not register a second copy of a teacher: the same source is offered as the existing one.
  const duplicateBox = h("div.note", { dataset: { testid: "teacher-duplicate" } });
  teacherForm.insertBefore(duplicateBox, teacherErr);
  let allowCopy = null; // the source the user chose to register again anyway
  const sameSource = (a, b) => String(a).trim().replace(/\/+$/, "") === String(b).trim().replace(/\/+$/, "");
  teacherForm.addEventListener("input", () => mount(duplicateBox));
  teacherForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = readForm(teacherForm);
    const existing = state.teachers.find((t) => sameSource(t.source, body.source || ""));
    if (existing && allowCopy !== body.source) {
      showError(teacherErr, null, teacherForm);
      mount(duplicateBox,
        `${body.source} is already registered as teacher #${existing.id} "${existing.name}" (${existing.status}). `,
        h("button.small.primary", { type: "button", dataset: { testid: "open-existing-teacher" }, onclick: () => { mount(duplicateBox); state.selected = existing.id; setQuery({ teacher: existing.id }); refresh(); } }, `Use "${existing.name}"`),
        " ",
        h("button.small", { type: "button", dataset: { testid: "register-copy" }, title: "another row for the same weights (e.g. to keep its runs apart)", onclick: () => { allowCopy = body.source; teacherForm.requestSubmit(); } }, "Register a second copy"));
      return;
    }
    mount(duplicateBox);
    try {
      const teacher = await api.post("/teachers", body);
      showError(teacherErr, null, teacherForm);
      toast(`Teacher "${teacher.name}" registered; inspecting its config…`);
      state.selected = teacher.id;
      await refresh();
    } catch (err) {
      showError(teacherErr, err, teacherForm);
    }
  });

  const datasetErr = h("div.error-msg");
  const datasetForm = h(
    "form.stack",
    { dataset: { testid: "dataset-form" } },
    h("div.form-grid",
      field({ name: "name", label: "Name", placeholder: "my-corpus" }),
      field({ name: "source", label: "Source", placeholder: "demo | /abs/file.jsonl | dir", title: ".txt, .jsonl (field text), .parquet (column text) or a directory of them" }),
    ),
    h("div.row", h("span.spacer"), h("button", { type: "submit" }, "Register dataset")),
    datasetErr,
  );
  datasetForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api.post("/datasets", readForm(datasetForm));
      showError(datasetErr, null, datasetForm);
      await refresh();
    } catch (err) {
      showError(datasetErr, err, datasetForm);
    }
  });

  mount(
    host,
    h("div.page-head", h("h1", "Teachers & data"), h("span.sub", "Register a teacher model and a calibration corpus, then score every head, neuron, channel and layer."), workersLine),
    h("div.grid", { style: { gridTemplateColumns: "minmax(320px, 420px) minmax(0, 1fr)" } },
      h("div.stack",
        h("section.panel", h("header", h("h2", "Register a teacher")), teacherForm),
        h("section.panel", h("header", h("h2", "Teachers")), teacherList, teacherListErr),
        h("section.panel", h("header", h("h2", "Datasets")), datasetList, datasetListErr, h("h3.section-title", "Register a dataset"), datasetForm),
        workersPanel(ctx),
      ),
      detail,
    ),
  );

  // ---- data ----------------------------------------------------------------------------
  // The server's settings are fixed for the page's life: asked once (without them the form only lacks
  // the server's spill limit).
  const configAsked = serverConfig().catch(() => ({}));
  async function refresh() {
    renderWorkers();
    try {
      const [teachers, datasets, config] = await Promise.all([api.get("/teachers"), api.get("/datasets"), configAsked]);
      state.teachers = teachers;
      state.datasets = datasets;
      state.config = config;
      if (!state.selected && teachers.length) state.selected = teachers[0].id;
      state.runs = state.selected ? await api.get(`/importance-runs?teacher_id=${state.selected}`) : [];
    } catch (err) {
      mount(teacherList, h("div.error-msg", err.message));
      return;
    }
    if (!ctx.alive) return;
    renderTeachers();
    renderDatasets();
    renderDetail();
    connect();
  }

  /** "workers: 1 cpu, 2 cuda" from the worker registry; best effort (the page works without it). */
  async function renderWorkers() {
    let workers;
    try {
      workers = await api.get("/workers");
    } catch {
      workersLine.textContent = "";
      return;
    }
    if (!ctx.alive) return;
    const counts = {};
    for (const w of workers) {
      const type = w.device.startsWith("cuda") ? "cuda" : "cpu";
      counts[type] = (counts[type] || 0) + 1;
    }
    workersLine.textContent = workers.length
      ? `workers: ${Object.entries(counts).map(([type, n]) => `${n} ${type}`).join(", ")}`
      : "workers: none running (jobs wait in their queue)";
    workersLine.title = workers.map((w) => `${w.hostname} (pid ${w.pid}): ${w.device}, queues ${w.queues.join(", ")}`).join("\n");
  }

  function renderTeachers() {
    if (!state.teachers.length) {
      mount(teacherList, h("div.empty", "No teacher yet. ", h("strong", "Register \"demo\""), " to start with the shipped demo teacher."));
      return;
    }
    keepingFocus(teacherList, "data-teacher-id", () => mount(teacherList, h("table",
      h("thead", h("tr", h("th", "name"), h("th", "family"), h("th.num", "params"), h("th", "status"), h("th"))),
      h("tbody", state.teachers.map((t) => selectRow(t.id === state.selected, { dataset: { teacherId: t.id } }, () => {
        state.selected = t.id;
        setQuery({ teacher: t.id });
        refresh();
      }, h("td", t.name, h("div.faint.mono.path", { title: t.source }, t.source)), h("td", t.spec ? t.spec.family : "–"), h("td.num", t.spec ? compact(t.spec.params_total) : "–"), h("td", statusBadge(t.status)),
      h("td", deleteButton("teachers", t, teacherListErr, "delete this teacher with its importance runs, plans and finished jobs (its model files stay)"))))),
    )));
  }

  function renderDatasets() {
    mount(datasetList, state.datasets.length
      ? h("table", h("tbody", state.datasets.map((d) => h("tr", { dataset: { datasetId: d.id } }, h("td", d.name), h("td.mono.faint.path", { title: d.source }, d.source),
        h("td", deleteButton("datasets", d, datasetListErr, "delete this registration (the data files stay); refused while a run, protocol or job uses it"))))))
      : h("div.empty", "No dataset registered."));
  }

  function deleteButton(kind, row, errBox, title) {
    const onclick = (ev) => {
      ev.stopPropagation(); // not a click on the teacher's row (which selects it)
      remove(kind, row, errBox);
    };
    return h("button.ghost.small", { type: "button", title, dataset: { testid: `${kind === "teachers" ? "teacher" : "dataset"}-delete` }, onclick }, "Delete");
  }

  /** Delete a teacher or dataset registered by mistake, after a confirm; the server's 409 says what
   * still uses it (students, unfinished jobs, runs or jobs measured on a dataset) and nothing changes. */
  async function remove(kind, row, errBox) {
    const teacher = kind === "teachers";
    const what = teacher
      ? `teacher #${row.id} "${row.name}" with its importance runs, plans and finished jobs`
      : `dataset #${row.id} "${row.name}"`;
    if (!confirm(`Delete ${what}? Its files (${row.source}) are not touched.`)) return;
    try {
      await api.del(`/${kind}/${row.id}`);
    } catch (err) {
      showError(teacherListErr, null);
      showError(datasetListErr, null);
      showError(errBox, err);
      return;
    }
    showError(errBox, null);
    if (teacher && state.selected === row.id) {
      state.selected = null;
      setQuery({ teacher: null });
    }
    toast(`${teacher ? "Teacher" : "Dataset"} "${row.name}" deleted.`);
    await refresh();
  }

  function renderDetail() {
    const teacher = state.teachers.find((t) => t.id === state.selected);
    if (!teacher) {
      mount(detail, h("section.panel", h("div.empty", "Select or register a teacher to see its architecture and start an importance run.")));
      return;
    }
    lookAtTeacher(teacher.id);
    mount(detail, archPanel(teacher), importancePanel(teacher));
  }

  function archPanel(t) {
    const head = h("header", h("h2", t.name), statusBadge(t.status));
    if (t.status === "failed") return h("section.panel", head, lineage(t), h("div.error-msg", t.error || "Inspection failed"));
    if (!t.spec) return h("section.panel", head, lineage(t), h("div.empty", "Reading the model config…"));
    const s = t.spec;
    const rows = [
      ["family / type", `${s.family} / ${s.model_type}`],
      ["layers", s.num_layers],
      ["hidden", s.hidden_size],
      ["heads (query / KV groups)", `${s.num_heads} / ${s.num_kv_heads}  ·  head_dim ${s.head_dim}`],
      ["MLP", `${s.intermediate_size}${s.mlp_gated ? " (gated)" : ""}`],
      ["vocab", `${int(s.vocab_size)}${s.tie_word_embeddings ? " (tied)" : ""}`],
      ["parameters", `${int(s.params_total)}  (${compact(s.params_non_embedding)} non-embedding)`],
      // At 2048 tokens of context, or all the teacher's positions when it has fewer (audit 24).
      [`FLOPs / token @${fitPositions(s, 2048)}`, flops(fitPositions(s, 2048) === 2048 ? s.flops_per_token : flopsPerToken(s, fitPositions(s, 2048)))],
      ["KV cache / token", bytes(s.kv_cache_bytes_per_token)],
      ["dtype", s.dtype],
      ["layout", s.uniform ? "uniform" : "non-uniform (pruned)"],
    ];
    return h("section.panel", { dataset: { testid: "arch-summary" } }, head,
      h("dl.kv", rows.map(([k, v]) => [h("dt", k), h("dd", String(v))])),
      h("div.hint", { style: { marginTop: "8px" } }, "source ", h("code", t.source)),
      lineage(t),
      protocolLine(t));
  }

  /** The protocol every perplexity of this teacher and its students is measured on by default, and a
   * button that evaluates the teacher on it (a student's evaluation also queues it when missing). */
  function protocolLine(t) {
    if (!t.eval_protocol) return null;
    const err = h("span.error-msg");
    const evaluate = async () => {
      try {
        const job = await api.post("/jobs", { kind: "evaluate", teacher_id: t.id, params: {} });
        go("job", [job.id]);
      } catch (e) {
        showError(err, e);
      }
    };
    const edit = protocolEditor(t, { onSaved: refresh });
    return [h("div.row", { style: { marginTop: "6px", gap: "8px" } },
      h("span.hint", "evaluation protocol"), protocolNote(t.eval_protocol, { testid: "teacher-protocol", prefix: "" }),
      h("button.small", { onclick: evaluate, dataset: { testid: "evaluate-teacher" }, title: "queue this teacher's perplexity on its protocol" }, "Evaluate"), edit.button, err), edit.form];
  }

  /** "from student #5 (distill job #9)": a teacher promoted from a student of an earlier round. */
  function lineage(t) {
    if (!t.parent_student_id) return null;
    const weights = t.parent_distill_job_id ? h("a", { href: href("job", [t.parent_distill_job_id]) }, `distill job #${t.parent_distill_job_id}`) : "pruned weights";
    return h("div.hint", { dataset: { testid: "lineage" } }, "from ", h("a", { href: href("runs", [], { student: t.parent_student_id }) }, `student #${t.parent_student_id}`), " (", weights, ")");
  }

  // The importance form outlives the view's refreshes (a 4 s poll while anything runs, every status
  // change): what the user typed, the memory line and a field's error stay while the runs below update.
  let keptForm = null;
  function importancePanel(t) {
    const form = importanceForm(t);
    const runs = runsTable();
    return h("section.panel", h("header", h("h2", "Importance runs"), h("span.hint", "one forward pass scores heads, neurons and channels; depth scans add passes")), form, h("div", { style: { marginTop: "12px" } }, runs), runsErr);
  }

  function importanceForm(t) {
    const key = `${t.id}:${t.status}:${!!t.spec}:${state.datasets.map((d) => d.id)}`;
    if (keptForm?.key === key) return keptForm.form;
    const err = h("div.error-msg", { dataset: { testid: "importance-error" } });
    // The API's PRUNESCOPE_SPILL_LIMIT_GB applies when the field is left blank (memcheck.spill_limit).
    const serverSpill = state.config.spill_limit_gb ?? null;
    const ready = t.status === "ready";
    const form = h("form.stack", { dataset: { testid: "importance-form" } },
      h("div.form-grid",
        field({ name: "dataset_id", label: "Calibration data", options: state.datasets.map((d) => [d.id, d.name]), value: state.datasets[0]?.id }),
        field({ name: "samples", label: "Samples", type: "number", value: 64, min: 1 }),
        field({ name: "seq_len", label: "Seq len", type: "number", value: fitPositions(t.spec, 128), min: 8 }),
        field({ name: "batch_size", label: "Batch", type: "number", value: 8, min: 1 }),
        field({ name: "block_size", label: "Block k", type: "number", value: 2, min: 1, title: "contiguous block length for the block-drop and angular-distance scans" }),
        field({ name: "seed", label: "Seed", type: "number", value: 0 }),
        field({ name: "gpus", label: "GPUs", type: "number", value: 1, min: 1, title: "data-parallel ranks on one worker: each scores every N-th batch and the sums are all-reduced (same scores); the teacher is loaded whole on each" }),
        field({ name: "nodes", label: "Nodes", type: "number", value: 1, min: 1, title: "workers (machines) meeting at one rendezvous, each running the GPUs above (same scores); the run waits until all have joined" }),
        gangWaitField(),
        field({ name: "offload", label: "Teacher", options: [["auto", "auto"], ["always", "streamed layer by layer"], ["never", "whole in memory"]], value: "auto",
          title: "auto: stream one decoder layer at a time when the teacher does not fit the worker's device (same scores either way)" }),
        field({ name: "spill_limit_gb", label: "Spill limit (GB)", type: "number", min: 0, step: "any", placeholder: serverSpill ? `${serverSpill} (server)` : "disk free",
          title: "streamed: at most this many GB of activations on the worker's spill disk; scans that need more run in several passes over the checkpoint (default: PRUNESCOPE_SPILL_LIMIT_GB, else the disk's free space less 2 GiB)" }),
      ),
      h("div.row",
        h("span.muted", "Depth scans:"),
        field({ name: "scan_bi", label: "Block Importance", type: "checkbox", value: true }),
        field({ name: "scan_drop", label: "Drop loss", type: "checkbox", value: true }),
        field({ name: "scan_block", label: "Block scan", type: "checkbox", value: true }),
        Object.assign(field({ name: "scan_angular", label: "Angular distance (Gromov)", type: "checkbox", value: false }), {
          title: "arccos(cos(input, output)) / π across each block of k layers (Gromov et al.): lower = better block to drop; read in the same pass, no extra forwards",
        }),
        h("span.spacer"),
        h("button.primary", { type: "submit", disabled: !ready }, "Start importance run"),
      ),
      ready ? null : h("div.hint", "The teacher must be ready first."),
      err,
    );
    gangWaitFollowsNodes(form);
    // The estimate of the run as submitted: its scans, block size, samples (a streamed pass keeps every
    // sample's activations per store) and layout (backend/memcheck.check_importance, mirrored).
    form.insertBefore(memoryLine(form, (v, workers) => {
      if (!t.spec || !(v.batch_size >= 1) || !(v.seq_len >= 2) || !(v.samples >= 1)) return null;
      const queue = queueFor("auto", workers);
      // gpus > 1: data-parallel ranks, each with the whole teacher (a streamed pass runs in one process);
      // on a CPU worker they share its memory (backend/memcheck.check_importance, mirrored).
      // nodes > 1: that many workers, each running `gpus` ranks, must hold it (the API's 409 otherwise).
      const ranks = Math.max(1, v.gpus || 1), nodes = Math.max(1, v.nodes || 1);
      const p = { seq_len: v.seq_len, samples: v.samples, block_size: v.block_size || 2, offload: ranks * nodes > 1 ? "never" : v.offload || "auto", scans: ["bi", "drop", "block", "angular"].filter((s) => v[`scan_${s}`]) };
      const device = queue === "gpu" ? "cuda" : "cpu";
      const copies = ranks > 1 && device === "cpu" ? ranks : 1;
      const need = (b) => copies * importanceNeed(t.spec, { ...p, batch_size: b.batch_size }, device);
      const able = workers.filter((w) => (w.device_count || 1) >= ranks);
      const line = fitLine(need, { batch_size: v.batch_size }, able, queue, halvedBatches(v.batch_size));
      if (ranks > 1) line.text = line.text.replace("per device", copies > 1 ? `for ${ranks} ranks on one host (a whole teacher each)` : `per GPU, ${ranks} data-parallel ranks (a whole teacher each)`);
      if (nodes > 1) {
        line.text = line.text.replace(/^needs (\S+ \S+) (.*?)(;|$)/, `needs $1 $2 on each of ${nodes} workers (${ranks * nodes} ranks)$3`);
        const onQueue = (w) => !queue || (w.queues || []).includes(queue);
        const holders = able.filter(onQueue).filter((w) => !w.memory || usableBytes(w.memory) >= line.needed).length;
        if (workers.some(onQueue) && holders < nodes) {
          line.text += `; only ${holders} live worker(s) with ${ranks} device(s) can hold a node, ${nodes} needed`;
          line.fits = false;
        }
      }
      // The layout on the workers that report memory, each with its pinned RAM and spill disk (the API's
      // memcheck.best_layout): the spill limit typed here, else the disk tier the worker reports.
      const sized = workers.filter((w) => w.memory && (w.queues || []).includes(queue) && ranks * nodes === 1);
      const typed = v.spill_limit_gb !== undefined && v.spill_limit_gb !== null;
      const limit = spillLimitBytes(typed ? v.spill_limit_gb : serverSpill);
      const on = bestLayout(t.spec, { ...p, batch_size: v.batch_size }, device, sized, limit);
      const layout = on ? on.layout : importanceLayout(t.spec, { ...p, batch_size: v.batch_size }, device, null, limit);
      const disk = limit !== null ? limit : on && spillDiskLimit(on.worker);
      const holds = limit === null ? `the spill disk of ${on?.worker.hostname} holds` : typed ? "the spill limit holds" : "the server's spill limit holds";
      // Streamed: the device holds one layer; every sample's activations wait in RAM / on disk instead.
      if (layout.streamed) line.text += ` · streamed layer by layer${p.offload === "auto" ? " (the whole teacher does not fit)" : ""}: ${bytes(layout.spill)} of activation stores (${v.samples} samples) in pinned RAM / on disk`;
      // A spill limit too small for every store at once: the loss scans run in several passes over the
      // checkpoint (each reads the layers again); too small for one pass: the API refuses the run (409).
      if (layout.streamed && layout.passes > 1) line.text += ` · ${layout.passes} passes over the checkpoint (${holds} ${bytes(disk)})`;
      if (layout.streamed && layout.passes === null && sized.length) {
        const fix = limit === null ? "free space on it" : typed ? "raise it" : "raise PRUNESCOPE_SPILL_LIMIT_GB or set a spill limit here";
        line.text += ` · the activation stores (${bytes(layout.store_bytes)} each) do not fit even one pass: ${holds} ${bytes(disk)}; ${fix}`;
        line.fits = false;
      }
      return line;
    }, { kind: "importance" }), err);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const v = readForm(form);
      const body = {
        teacher_id: t.id,
        dataset_id: Number(v.dataset_id),
        samples: v.samples,
        seq_len: v.seq_len,
        batch_size: v.batch_size,
        block_size: v.block_size,
        seed: v.seed,
        gpus: v.gpus || 1,
        nodes: v.nodes || 1,
        ...gangWaitParam(v),
        offload: v.offload || "auto",
        ...(v.spill_limit_gb !== undefined ? { spill_limit_gb: v.spill_limit_gb } : {}),
        scans: ["bi", "drop", "block", "angular"].filter((s) => v[`scan_${s}`]),
      };
      try {
        await api.post("/importance-runs", body);
        showError(err, null, form);
        await refresh();
      } catch (e) {
        showError(err, e, form);
      }
    });
    keptForm = { key, form };
    return form;
  }

  // The Runs table's job rows send here to delete a run ("delete that [run] instead"): its own button.
  const runsErr = h("div.error-msg", { dataset: { testid: "run-delete-error" } });
  async function removeRun(r) {
    if (!confirm(`Delete importance run #${r.id} and its scores?`)) return;
    try {
      await api.del(`/importance-runs/${r.id}`);
    } catch (err) {
      showError(runsErr, err); // the server's 409 says what still uses it; nothing changes
      return;
    }
    showError(runsErr, null);
    toast(`Importance run #${r.id} deleted.`);
    await refresh();
  }

  function runsTable() {
    return state.runs.length
      ? h("table", { dataset: { testid: "importance-runs" } },
          h("thead", h("tr", h("th", "run"), h("th", "data"), h("th", "status"), h("th", { style: { width: "32%" } }, "progress"), h("th", ""))),
          h("tbody", state.runs.map((r) => h("tr", { dataset: { runId: r.id } },
            h("td.mono", `#${r.id}`, h("div.faint", when(r.created_at))),
            // The calibration data by name (the runs table's words), then how much of it and the scans.
            h("td", { dataset: { testid: "run-data" } }, dataLabel({ kind: "importance", params: { dataset_id: r.dataset_id } }, state.datasets) ?? "–",
              h("div.mono.faint", `${r.params?.samples ?? "?"}×${r.params?.seq_len ?? "?"} · ${(r.params?.scans || []).join(",") || "width only"}`)),
            h("td", statusBadge(r.status), statusReason(r, { inline: true })),
            h("td", { dataset: { progressFor: r.job_id } }, progressBar(r)),
            h("td.row-actions",
              r.status === "succeeded" ? [h("a.btn", { href: href("explore", [r.id]) }, "Open explorer →"), h("a.btn", { href: href("search", [], { run: r.id }), dataset: { testid: "search-run" }, title: "every architecture within a budget, ranked by held-out loss" }, "Search →")] : null,
              ["succeeded", "failed", "cancelled"].includes(r.status) ? h("button.ghost.small", { type: "button", dataset: { testid: "run-delete" }, title: "delete this run and its scores; refused while a plan was filled from it or a job reads it", onclick: () => removeRun(r) }, "Delete") : null),
          ))))
      : h("div.empty", "No importance run yet for this teacher.");
  }

  // ---- live updates ----------------------------------------------------------------------
  let closeStream = null;
  let streamTeacher = null;
  function connect() {
    if (streamTeacher === state.selected) return;
    if (closeStream) closeStream();
    streamTeacher = state.selected;
    if (!state.selected) return;
    closeStream = subscribe(`/teachers/${state.selected}/events`, {
      status: (job) => onJob(job),
    });
  }
  let pending = null;
  function onJob(job) {
    // Progress in place; a state change (finished / started) refreshes the lists.
    const run = state.runs.find((r) => r.job_id === job.id);
    if (run && run.status === job.status) {
      Object.assign(run, { progress: job.progress, eta_s: job.eta_s, message: job.message });
      const cell = host.querySelector(`[data-progress-for="${job.id}"]`);
      if (cell) mount(cell, progressBar(run));
      return;
    }
    clearTimeout(pending);
    pending = setTimeout(refresh, 150);
  }
  const poll = setInterval(() => {
    const busy = state.runs.some((r) => r.status === "queued" || r.status === "running") || state.teachers.some((t) => t.status === "pending");
    if (busy) refresh();
  }, 4000);
  ctx.onCleanup(() => {
    clearInterval(poll);
    clearTimeout(pending);
    if (closeStream) closeStream();
  });

  await refresh();
}
