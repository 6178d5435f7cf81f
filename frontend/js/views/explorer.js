// Importance explorer + planner for one importance run: heads / neurons (or experts) / hidden-channel
// heatmaps and layer scores on the left, the plan being built on the right. URL: #/explore/<run>?plan=&batch=&seq=...
// Each panel is a component taking the shared explorer state (components/explorerstate.js); this view
// fetches the run, lays the panels out and routes the redraws between them.

import { api } from "../api.js";
import { expertsPanel } from "../components/expertspanel.js";
import { explorerState, openPlan } from "../components/explorerstate.js";
import { explorerToolbar } from "../components/explorertoolbar.js";
import { headsPanel } from "../components/headspanel.js";
import { hiddenPanel } from "../components/hiddenpanel.js";
import { layersPanel } from "../components/layerspanel.js";
import { neuronsPanel } from "../components/neuronspanel.js";
import { Planner } from "../components/planner.js";
import { showStability } from "../components/rankstability.js";
import { bindUndoKeys } from "../components/undokeys.js";
import { linkRow, rowLink, statusBadge } from "../components/widgets.js";
import { h, mount } from "../dom.js";
import { when } from "../format.js";
import { lookAtTeacher } from "../lookingat.js";
import { href } from "../router.js";

export async function explorerView(host, { args, query }, ctx) {
  const runId = Number(args[0]);
  if (!runId) return pickRun(host, ctx);

  const t0 = performance.now();
  mount(host, h("div.empty", "Loading importance run…"));

  let run;
  let teacher;
  try {
    run = await api.get(`/importance-runs/${runId}`);
    teacher = await api.get(`/teachers/${run.teacher_id}`);
  } catch (err) {
    mount(host, h("div.error-msg", err.message));
    return;
  }
  if (run.status !== "succeeded") {
    mount(host, h("section.panel", h("header", h("h2", `Importance run #${run.id}`), statusBadge(run.status)),
      h("div.empty", run.status === "failed" ? `This run failed: ${run.error || "no reason given"}` : "Scores are not ready yet. ", h("a", { href: href("", [], { teacher: run.teacher_id }) }, "Watch its progress →"))));
    return;
  }

  lookAtTeacher(run.teacher_id);
  const { plan, savedRow, draft } = await openPlan(query, run.id);
  const st = explorerState({ query, run, teacher, plan, alive: () => ctx.alive });

  // ---- panels: each owns its map and data; the hidden strip follows the neurons' order control ------
  const heads = headsPanel(st);
  const hidden = hiddenPanel(st);
  const width = st.moe ? expertsPanel(st) : neuronsPanel(st, { onOrder: () => hidden.load() });
  const layers = layersPanel(st);
  const maps = [heads, width, hidden];
  const toolbar = explorerToolbar(st, { onScores: () => loadScores(), onStyle: () => maps.forEach((p) => p.restyle()) });
  /** Every score under the aggregation on screen (a new one reloads them all). */
  const loadScores = () => Promise.all([...maps.map((p) => p.load()), showStability(st, toolbar.stability, layers.stability)]);
  const timing = h("span.hint", { dataset: { testid: "first-paint" } });

  const planner = new Planner({ run, teacher, state: plan, agg: st.agg, alive: st.alive });
  if (savedRow) planner.setSaved(savedRow, draft);

  mount(host,
    pageHead(st, timing),
    h("div.explorer",
      h("div.stack", planner.strip, h("section.panel", toolbar.el), heads.el, width.el, hidden.el, layers.el),
      planner.el,
    ),
  );

  plan.subscribe(() => {
    for (const p of maps) p.draw();
    layers.draw();
  });
  const unbindKeys = bindUndoKeys(plan);
  ctx.onCleanup(() => {
    unbindKeys();
    planner.destroy();
    for (const p of maps) p.destroy();
  });

  await loadScores();
  const paint = performance.now() - t0;
  timing.textContent = `first paint ${Math.round(paint)} ms`;
  window.__prunescopeFirstPaintMs = paint;
  await layers.load();
  await layers.draw();
  // Sorted neuron marks need each layer's ranking: fetch it now, after the first paint.
  if (st.view.order === "sorted" && !st.moe) {
    width.fetchOrder().then(() => {
      window.__prunescopeNeuronOrderMs = performance.now() - t0; // read by bench/dashboard_first_paint.py
      if (ctx.alive) width.draw();
    }).catch(() => {});
  }
}

/** The page title: the run, the teacher's shape, the calibration data and the first-paint time (`timing`). */
function pageHead({ run, teacher, spec, numLayers, moe }, timing) {
  /** A width over the layers: one number, or "min–max" when a pruned teacher's layers differ. */
  const span = (key) => {
    const values = (spec.layers || []).map((s) => s[key]);
    const [lo, hi] = values.length ? [Math.min(...values), Math.max(...values)] : [spec[key], spec[key]];
    return lo === hi ? `${lo}` : `${lo}–${hi}`;
  };
  return h("div.page-head",
    h("h1", `Importance run #${run.id}`),
    h("span.sub", { dataset: { testid: "teacher-shape" } }, `${teacher.name} · ${spec.family} · ${numLayers} layers × ${span("num_heads")} heads (${span("num_kv_heads")} KV groups) · ${moe ? `${spec.num_experts} experts (top-${spec.experts_per_token}) × FFN ${span("intermediate_size")}` : `MLP ${span("intermediate_size")}`} · hidden ${spec.hidden_size}`),
    h("span.hint", `${run.params?.samples ?? "?"} samples × ${run.params?.seq_len ?? "?"} tokens · ${when(run.finished_at || run.created_at)}`),
    timing,
  );
}

/** No run in the URL: list every finished importance run. */
async function pickRun(host, ctx) {
  mount(host, h("div.page-head", h("h1", "Explorer & planner"), h("span.sub", "Pick an importance run to explore and plan a cut.")));
  try {
    const [runs, teachers, datasets] = await Promise.all([api.get("/importance-runs"), api.get("/teachers"), api.get("/datasets").catch(() => [])]);
    if (!ctx.alive) return;
    const name = (id) => teachers.find((t) => t.id === id)?.name || `teacher ${id}`;
    // Which run is which: its calibration data and size, and the scans it ran.
    const calibration = (r) => {
      const data = datasets.find((d) => d.id === r.dataset_id)?.name ?? `dataset ${r.dataset_id}`;
      return `${r.params?.samples ?? "?"} × ${r.params?.seq_len ?? "?"} tokens of ${data}`;
    };
    host.append(h("section.panel", runs.length
      ? h("table", h("thead", h("tr", h("th", "run"), h("th", "teacher"), h("th", "calibration"), h("th", "scans"), h("th", "status"), h("th", "created"))),
          h("tbody", runs.map((r) => linkRow(href("explore", [r.id]), { dataset: { runId: r.id } },
            h("td.mono", rowLink(href("explore", [r.id]), `#${r.id}`, { dataset: { testid: "explore-run" } })), h("td", name(r.teacher_id)),
            h("td", { dataset: { testid: "explore-calibration" } }, calibration(r)), h("td.faint", (r.params?.scans || []).join(", ") || "–"),
            h("td", statusBadge(r.status)), h("td.faint", when(r.created_at))))))
      : h("div.empty", "No importance run yet. ", h("a", { href: "#/" }, "Start one from Teachers & data →"))));
  } catch (err) {
    host.append(h("div.error-msg", err.message));
  }
}
