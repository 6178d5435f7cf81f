// The explorer's shared state (views/explorer.js): the run and teacher on screen, the plan being edited and
// the view settings from the URL. One object handed to every panel, instead of variables in one closure.

import { api, qs } from "../api.js";
import { colorbar } from "../colormap.js";
import { h, mount } from "../dom.js";
import { draftKey, readDraft } from "../plandraft.js";
import { PlanState, samePlan } from "../planstate.js";

/** The state the explorer's panels share; `view` is mutated by the controls (and mirrored in the URL). */
export function explorerState({ query, run, teacher, plan, alive }) {
  const spec = teacher.spec;
  const view = {
    batch: query.get("batch") || "l2",
    seq: query.get("seq") || "mean",
    // Log by default: activation scores are heavy-tailed (a few outliers would flatten a linear map).
    scale: query.get("scale") || "log",
    palette: query.get("palette") || "viridis",
    order: query.get("order") || "sorted",
    // Grouped-query attention keeps the same number of query heads in every KV group, so a single head
    // clicked off is a plan the server refuses: clicks mark whole groups unless each group has one head.
    headMode: query.get("heads") || (spec.num_heads > (spec.num_kv_heads || spec.num_heads) ? "groups" : "heads"),
    tool: "select",
    layerMetric: query.get("layer") || "block",
    layerScale: query.get("lscale") || "linear", // the layer chart's y axis (one tall bar can flatten the rest)
    expertMetric: query.get("experts") || "routed",
  };
  return {
    run,
    teacher,
    spec,
    plan,
    view,
    alive,
    numLayers: spec.num_layers,
    moe: (spec.num_experts || 0) > 0, // mixture of experts: an experts map replaces the MLP neurons map
    /** The score aggregation on screen (the API's query parameters). */
    agg: () => ({ batch: view.batch, seq: view.seq }),
    /** Draw `map`'s colour bar into `bar` in the palette and scale on screen. */
    paintBar: (bar, map) => mount(bar, colorbar(view.palette, map.range, view.scale)),
    /**
     * A heatmap panel's scores (`heads`, `hidden`, `experts`) under the aggregation on screen; null when the
     * fetch failed (its message is put in `host`) or the page is gone.
     */
    async scores(kind, host) {
      let data;
      try {
        data = await api.get(`/importance-runs/${run.id}/${kind}${qs({ batch: view.batch, seq: view.seq })}`);
      } catch (err) {
        mount(host, h("div.error-msg", err.message));
        return null;
      }
      return alive() ? data : null;
    },
  };
}

/**
 * The plan to edit: the saved plan named in the URL (`plan=`), with its unsaved edits when this browser
 * keeps some (plandraft.js), else this run's local draft. The planner keeps every edit as the draft.
 * Returns the plan state, the saved plan's row (null when none) and the draft opened instead of it (null
 * when none: {plan, version}, the version the edits were made on).
 */
export async function openPlan(query, runId) {
  const plan = new PlanState();
  let savedRow = null;
  let draft = null;
  if (query.get("plan")) {
    try {
      savedRow = await api.get(`/plans/${query.get("plan")}`);
      draft = readDraft(draftKey({ planId: savedRow.id }));
      if (draft && samePlan(draft.plan, savedRow.plan)) draft = null;
      plan.reset(draft ? draft.plan : savedRow.plan);
    } catch (err) {
      console.warn(err);
    }
  } else {
    const kept = readDraft(draftKey({ runId }));
    if (kept) plan.reset(kept.plan);
  }
  return { plan, savedRow, draft };
}

/** The cells of a box selection {r0, r1, c0, c1} as [row, column] pairs. */
export function boxCells({ r0, r1, c0, c1 }) {
  const cells = [];
  for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) cells.push([r, c]);
  return cells;
}
