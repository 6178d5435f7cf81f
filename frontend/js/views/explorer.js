// Importance explorer + planner for one importance run: heads / neurons / hidden-channel heatmaps and
// layer scores on the left, the plan being built on the right. URL: #/explore/<run>?plan=&batch=&seq=...

import { api, qs } from "../api.js";
import { colorbar } from "../colormap.js";
import { Heatmap } from "../components/heatmap.js";
import { drawLayerChart } from "../components/layerchart.js";
import { Planner } from "../components/planner.js";
import { depthStability, widthStability } from "../components/rankstability.js";
import { statusBadge } from "../components/widgets.js";
import { h, mount, segmented } from "../dom.js";
import { sig, when } from "../format.js";
import { PlanState } from "../planstate.js";
import { href, setQuery } from "../router.js";

export async function explorerView(host, { args, query }, ctx) {
  const runId = Number(args[0]);
  if (!runId) return pickRun(host, ctx);

  const view = {
    batch: query.get("batch") || "l2",
    seq: query.get("seq") || "mean",
    // Log by default: activation scores are heavy-tailed (a few outliers would flatten a linear map).
    scale: query.get("scale") || "log",
    palette: query.get("palette") || "viridis",
    order: query.get("order") || "sorted",
    headMode: query.get("heads") || "heads",
    tool: "select",
    layerMetric: query.get("layer") || "block",
    layerScale: query.get("lscale") || "linear", // the layer chart's y axis (one tall bar can flatten the rest)
    expertMetric: query.get("experts") || "routed",
  };
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
  const spec = teacher.spec;
  const L = spec.num_layers;
  const perGroup = spec.num_heads / spec.num_kv_heads;
  // A pruned (non-uniform) teacher: each layer has its own heads, groups and MLP width. The heatmaps are
  // padded to the widest layer; padding cells (null scores) are drawn dark and cannot be marked.
  const groupSizeOf = (r) => (spec.layers?.[r] ? spec.layers[r].num_heads / spec.layers[r].num_kv_heads : perGroup);
  const groupOf = (r, c) => Math.floor(c / groupSizeOf(r));
  const headsIn = (r) => headsData?.widths?.[r] ?? spec.num_heads;
  /** A width over the layers: one number, or "min–max" when a pruned teacher's layers differ. */
  const span = (key) => {
    const values = (spec.layers || []).map((s) => s[key]);
    const [lo, hi] = values.length ? [Math.min(...values), Math.max(...values)] : [spec[key], spec[key]];
    return lo === hi ? `${lo}` : `${lo}–${hi}`;
  };
  const moe = (spec.num_experts || 0) > 0; // mixture of experts: an experts map replaces the MLP neurons map
  const draftKey = `prunescope.draft.run${run.id}`;

  // ---- plan state: saved plan from the URL, else the local draft ----------------------------
  const state = new PlanState();
  let savedRow = null;
  if (query.get("plan")) {
    try {
      savedRow = await api.get(`/plans/${query.get("plan")}`);
      state.reset(savedRow.plan);
    } catch (err) {
      console.warn(err);
    }
  } else {
    try {
      const draft = JSON.parse(localStorage.getItem(draftKey) || "null");
      if (draft) state.reset(draft);
    } catch {
      /* a corrupt draft is simply ignored */
    }
  }
  state.subscribe((plan) => localStorage.setItem(draftKey, JSON.stringify(plan)));

  // ---- layout -------------------------------------------------------------------------------
  const stability = h("div.row.tight");
  const headsHost = h("div");
  const headsBar = h("div");
  const neuronsHost = h("div");
  const neuronsBar = h("div");
  const neuronsAxis = h("div.hm-axis");
  const expertsHost = h("div");
  const expertsBar = h("div");
  const hiddenHost = h("div");
  const hiddenBar = h("div");
  const layersPlot = h("div.plot.columns-clickable", { dataset: { testid: "layers-plot" } });
  const zoomInfo = h("span.hint");
  const layerStability = h("span.row.tight");
  const layersCaption = h("div.hint", { dataset: { testid: "layers-caption" } });
  const timing = h("span.hint", { dataset: { testid: "first-paint" } });

  const aggControls = h("div.row",
    h("span.ctl", h("span", "batch"), segmented([["l2", "L2"], ["mean", "mean"], ["var", "var"]], view.batch, (v) => { view.batch = v; setQuery({ batch: v }); reloadScores(); }, { dataset: { testid: "agg-batch" } })),
    h("span.ctl", h("span", "seq"), segmented([["mean", "mean"], ["l2", "L2"]], view.seq, (v) => { view.seq = v; setQuery({ seq: v }); reloadScores(); }, { dataset: { testid: "agg-seq" } })),
    h("span.ctl", h("span", "scale"), segmented([["linear", "lin"], ["log", "log"]], view.scale, (v) => { view.scale = v; setQuery({ scale: v }); restyle(); }, { dataset: { testid: "scale" } })),
    h("span.ctl", h("span", "palette"), segmented([["viridis", "viridis"], ["cividis", "cividis"]], view.palette, (v) => { view.palette = v; setQuery({ palette: v }); restyle(); })),
    h("span.spacer"),
    stability,
  );

  const neuronControls = h("div.row.tight",
    h("span.ctl", h("span", "order"), segmented([["sorted", "sorted"], ["natural", "natural"]], view.order, (v) => { view.order = v; setQuery({ order: v }); neuronZoom = null; loadNeurons(); loadHidden(); }, { dataset: { testid: "neuron-order" } })),
    h("span.ctl", h("span", "drag"), segmented([["select", "marks"], ["zoom", "zooms"]], view.tool, (v) => { view.tool = v; neurons.set({ boxColumnsOnly: v === "zoom" }); }, { dataset: { testid: "neuron-tool" } })),
    h("button.small", { onclick: () => { neuronZoom = null; loadNeurons(); }, dataset: { testid: "zoom-reset" } }, "Reset zoom"),
    zoomInfo,
  );

  const planner = new Planner({ run, teacher, state, agg: () => ({ batch: view.batch, seq: view.seq }), alive: () => ctx.alive });
  if (savedRow) planner.setSaved(savedRow);

  mount(host,
    h("div.page-head",
      h("h1", `Importance run #${run.id}`),
      h("span.sub", { dataset: { testid: "teacher-shape" } }, `${teacher.name} · ${spec.family} · ${L} layers × ${span("num_heads")} heads (${span("num_kv_heads")} KV groups) · ${moe ? `${spec.num_experts} experts (top-${spec.experts_per_token}) × FFN ${span("intermediate_size")}` : `MLP ${span("intermediate_size")}`} · hidden ${spec.hidden_size}`),
      h("span.hint", `${run.params?.samples ?? "?"} samples × ${run.params?.seq_len ?? "?"} tokens · ${when(run.finished_at || run.created_at)}`),
      timing,
    ),
    h("div.explorer",
      h("div.stack",
        h("section.panel", aggControls),
        h("section.panel", { dataset: { testid: "heads-panel" } },
          h("header", h("h2", "Attention heads"), h("span.hint", "layers × query heads; dark rules separate KV groups"),
            h("span.ctl", h("span", "click marks"), segmented([["heads", "heads"], ["groups", "KV groups"]], view.headMode, (v) => { view.headMode = v; setQuery({ heads: v }); }, { dataset: { testid: "head-mode" } })),
            headsBar),
          headsHost),
        moe
          ? h("section.panel", { dataset: { testid: "experts-panel" } },
              h("header", h("h2", "Experts"), h("span.hint", `layers × ${spec.num_experts} experts (top-${spec.experts_per_token} per token); click or drag to mark experts for removal`),
                h("span.ctl", h("span", "score"), segmented([["routed", "routed share"], ["contribution", "contribution"], ["prob", "router prob."]], view.expertMetric, (v) => { view.expertMetric = v; setQuery({ experts: v }); drawExperts(); }, { dataset: { testid: "expert-metric" } })),
                expertsBar),
              expertsHost)
          : h("section.panel", { dataset: { testid: "neurons-panel" } },
              h("header", h("h2", "MLP neurons"), neuronControls, neuronsBar),
              neuronsHost, neuronsAxis),
        h("section.panel", { dataset: { testid: "hidden-panel" } },
          h("header", h("h2", "Hidden channels"), h("span.hint", "summed over every layer's norms; one global ranking"), hiddenBar),
          hiddenHost),
        h("section.panel",
          h("header", h("h2", "Layers"),
            h("span.ctl", h("span", "score"), segmented([["block", "block scan"], ["bi", "Block Importance"], ["drop", "drop loss"]], view.layerMetric, (v) => { view.layerMetric = v; setQuery({ layer: v }); drawLayers(); }, { dataset: { testid: "layer-metric" } })),
            h("span.ctl", h("span", "y"), segmented([["linear", "lin"], ["log", "log"]], view.layerScale, (v) => { view.layerScale = v; setQuery({ lscale: v === "linear" ? "" : v }); drawLayers(); }, { dataset: { testid: "layer-scale" } })),
            layerStability),
          layersCaption,
          layersPlot),
      ),
      planner.el,
    ),
  );

  // ---- heads heatmap ------------------------------------------------------------------------
  let headsData = null;
  const heads = new Heatmap({
    rowHeight: L > 24 ? 12 : 18,
    groupSize: spec.uniform === false ? groupSizeOf : perGroup,
    palette: view.palette,
    scale: view.scale,
    testid: "heads-map",
    rowLabels: (r) => `L${r}`,
    rowMarked: (r) => state.index().drop.has(r),
    markFrac: (r, c) => {
      const idx = state.index();
      return idx.heads.get(r)?.has(c) || idx.groups.get(r)?.has(groupOf(r, c)) ? 1 : 0;
    },
    tooltip: (r, c) => {
      if (c >= headsIn(r)) return `<b>layer ${r}</b> has ${headsIn(r)} heads (no head ${c}: a narrower layer of a pruned model)`;
      const v = headsData.z[r][c];
      const rank = headsData.rank[r][c];
      const idx = state.index();
      const marked = idx.drop.has(r) ? "layer dropped" : idx.groups.get(r)?.has(groupOf(r, c)) ? "KV group removed" : idx.heads.get(r)?.has(c) ? "marked" : "";
      return `<b>layer ${r} · head ${c}</b> · KV group ${groupOf(r, c)}<br>score ${sig(v)}<br>rank ${headsIn(r) - rank} of ${headsIn(r)} in layer (1 = most important)${marked ? `<br><span class="marked">● ${marked}</span>` : ""}`;
    },
    onClick: (r, c) => toggleHeadCells([[r, c]]),
    onBox: ({ r0, r1, c0, c1 }) => {
      const cells = [];
      for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) cells.push([r, c]);
      toggleHeadCells(cells);
    },
    onRowClick: (r) => state.toggleLayers([r]),
  });
  headsHost.append(heads.el);

  function toggleHeadCells(all) {
    const cells = all.filter(([r, c]) => c < headsIn(r)); // padding of narrower layers: nothing to mark
    if (!cells.length) return;
    if (view.headMode === "groups") {
      const seen = new Set();
      const groups = [];
      for (const [r, c] of cells) {
        const key = `${r}:${groupOf(r, c)}`;
        if (!seen.has(key)) {
          seen.add(key);
          groups.push([r, groupOf(r, c)]);
        }
      }
      state.toggleGroups(groups);
    } else {
      state.toggleHeads(cells);
    }
  }

  // ---- neurons heatmap ----------------------------------------------------------------------
  let neuronData = null;
  let neuronDomain = null;
  let neuronZoom = null; // [start, end) positions, null = whole width
  let neuronMarks = null; // Float32Array rows x bins, recomputed per plan / view change
  let neuronOrder = null; // {key, order: Map(layer -> Uint16Array|Uint32Array of neuron indices, most important first)}
  const neurons = new Heatmap({
    rowHeight: L > 24 ? 10 : 16,
    palette: view.palette,
    scale: view.scale,
    testid: "neurons-map",
    rowLabels: (r) => `L${neuronData.layers[r]}`,
    rowMarked: (r) => state.index().drop.has(neuronData.layers[r]),
    markFrac: (r, c) => (neuronMarks ? neuronMarks[r * neuronData.bins + c] : 0),
    tooltip: (r, c) => {
      const d = neuronData;
      const a = d.bin_edges[c];
      const b = d.bin_edges[c + 1];
      const sorted = d.order === "sorted";
      const frac = neuronMarks ? neuronMarks[r * d.bins + c] : 0;
      const marked = frac ? `<br><span class="marked">● ${Math.round(frac * 100)}% marked</span>` : "";
      const width = d.widths?.[r] ?? d.width; // this layer's neurons (a pruned teacher's layers differ)
      if (a >= width) return `<b>layer ${d.layers[r]}</b> has ${width} neurons (padding: a narrower layer of a pruned model)`;
      if (b - a === 1) {
        // One neuron: name it (sorted order needs the ranking, fetched after the first paint).
        const order = sorted && neuronOrder && neuronOrder.order ? neuronOrder.order.get(d.layers[r]) : null;
        const who = sorted ? (order ? `neuron ${order[a]}` : "") : `neuron ${a}`;
        const rank = sorted ? `<br>rank ${a + 1} of ${width} in layer (1 = most important)` : "";
        return `<b>layer ${d.layers[r]}${who ? ` · ${who}` : ""}</b>${rank}<br>score ${sig(d.z[r][c])}${marked}`;
      }
      const what = sorted ? `ranks ${a + 1}–${Math.min(b, width)} of ${width} (1 = most important)` : `neurons ${a}–${Math.min(b, width) - 1}`;
      return `<b>layer ${d.layers[r]}</b> · ${what}<br>mean ${sig(d.z[r][c])} · max ${sig(d.zmax[r][c])}<br>${b - a} neurons in this bin${marked}`;
    },
    onClick: (r, c) => toggleNeuronBins(r, r, c, c),
    onBox: ({ r0, r1, c0, c1 }) => {
      if (view.tool === "zoom") {
        neuronZoom = [neuronData.bin_edges[c0], neuronData.bin_edges[c1 + 1]];
        loadNeurons();
      } else {
        toggleNeuronBins(r0, r1, c0, c1);
      }
    },
    onRowClick: (r) => state.toggleLayers([neuronData.layers[r]]),
  });
  neuronsHost.append(neurons.el);

  /** Neuron indices behind bins c0..c1 of rows r0..r1 (sorted order needs each layer's ranking). */
  async function toggleNeuronBins(r0, r1, c0, c1) {
    const d = neuronData;
    if (d.order === "sorted") await ensureOrder();
    const perLayer = new Map();
    for (let r = r0; r <= r1; r++) {
      const layer = d.layers[r];
      const end = Math.min(d.bin_edges[c1 + 1], d.widths?.[r] ?? d.width); // padding (sorted last) is no neuron
      const list = [];
      for (let p = d.bin_edges[c0]; p < end; p++) list.push(d.order === "sorted" ? neuronOrder.order.get(layer)[p] : p);
      if (list.length) perLayer.set(layer, list);
    }
    state.toggleNeurons(perLayer);
  }

  /**
   * Each layer's neuron ranking (most important first), from the server: the sorted view bins positions
   * in this order, so marking a bin needs it. Never re-ranked here from the 4-digit payload values: near-
   * ties would order differently from `fill_plan`. Fetched once per aggregation.
   */
  async function ensureOrder() {
    const key = `${view.batch}:${view.seq}`;
    if (neuronOrder && neuronOrder.key === key) return neuronOrder;
    if (neuronOrder && neuronOrder.key === key + ":loading") return neuronOrder.promise;
    const promise = (async () => {
      const res = await api.get(`/importance-runs/${run.id}/neuron-order${qs({ batch: view.batch, seq: view.seq })}`);
      const order = new Map();
      res.order.forEach((packed, layer) => order.set(layer, decodeIndices(packed, res.dtype)));
      neuronOrder = { key, order };
      return neuronOrder;
    })();
    neuronOrder = { key: key + ":loading", promise };
    return promise;
  }

  function computeNeuronMarks() {
    const d = neuronData;
    if (!d) return;
    const idx = state.index();
    const marks = new Float32Array(d.layers.length * d.bins);
    const sortedReady = d.order !== "sorted" || (neuronOrder && neuronOrder.key === `${view.batch}:${view.seq}`);
    d.layers.forEach((layer, r) => {
      const set = idx.neurons.get(layer);
      if (!set || !set.size || !sortedReady) return;
      const order = d.order === "sorted" ? neuronOrder.order.get(layer) : null;
      for (let c = 0; c < d.bins; c++) {
        const a = d.bin_edges[c];
        const b = d.bin_edges[c + 1];
        let n = 0;
        for (let p = a; p < b; p++) if (set.has(order ? order[p] : p)) n += 1;
        marks[r * d.bins + c] = n / (b - a);
      }
    });
    neuronMarks = marks;
    // The sorted map shows marks once the ranking is here; fetch it in the background when needed.
    if (!sortedReady && idx.neurons.size) ensureOrder().then(() => { if (ctx.alive) { computeNeuronMarks(); neurons.draw(); } });
  }

  async function loadNeurons() {
    const width = neuronsHost.clientWidth || 800;
    const bins = Math.max(16, Math.min(256, Math.floor(width / 3)));
    const params = { batch: view.batch, seq: view.seq, order: view.order, bins };
    if (neuronZoom) Object.assign(params, { start: neuronZoom[0], end: neuronZoom[1] });
    try {
      neuronData = await api.get(`/importance-runs/${run.id}/neurons${qs(params)}`);
    } catch (err) {
      mount(neuronsHost, h("div.error-msg", err.message));
      return;
    }
    if (!ctx.alive) return;
    if (!neuronZoom) neuronDomain = domainOf(neuronData.z);
    computeNeuronMarks();
    neurons.setData(neuronData.z, { domain: neuronDomain });
    const d = neuronData;
    mount(neuronsAxis, h("span", d.order === "sorted" ? `rank ${d.start + 1}${d.start ? "" : " (most important)"}` : `neuron ${d.start}`), h("span", d.bins === d.end - d.start ? `${d.bins} neurons, one per column` : `${d.bins} bins of ≈${((d.end - d.start) / d.bins).toFixed(1)} neurons`), h("span", d.order === "sorted" ? `rank ${d.end}${d.end === d.width ? " (least important)" : ""}` : `neuron ${d.end - 1}`));
    zoomInfo.textContent = neuronZoom ? `zoomed to ${neuronZoom[0]}–${neuronZoom[1] - 1} of ${d.width}` : (d.widths && Math.min(...d.widths) < d.width ? `${Math.min(...d.widths)}–${d.width} per layer` : `all ${d.width} per layer`);
    mount(neuronsBar, colorbar(view.palette, neurons.range, view.scale));
  }

  // ---- experts heatmap (mixture of experts) ---------------------------------------------------
  let expertsData = null;
  const EXPERT_HELP = {
    routed: "share of tokens routed to this expert (a layer's shares sum to top-k)",
    contribution: "|routing weight × expert output| per token (0 where not routed)",
    prob: "router softmax probability per token",
  };
  const experts = new Heatmap({
    rowHeight: L > 24 ? 12 : 18,
    palette: view.palette,
    scale: view.scale,
    testid: "experts-map",
    rowLabels: (r) => `L${r}`,
    rowMarked: (r) => state.index().drop.has(r),
    markFrac: (r, c) => (state.index().experts.get(r)?.has(c) ? 1 : 0),
    tooltip: (r, c) => {
      const m = view.expertMetric;
      const rank = expertsData.rank[m][r][c];
      const marked = state.index().drop.has(r) ? "layer dropped" : state.index().experts.get(r)?.has(c) ? "marked" : "";
      return `<b>layer ${r} · expert ${c}</b><br>${EXPERT_HELP[m]}: ${sig(expertsData.metrics[m][r][c])}<br>rank ${spec.num_experts - rank} of ${spec.num_experts} in layer (1 = most important)${marked ? `<br><span class="marked">● ${marked}</span>` : ""}`;
    },
    onClick: (r, c) => state.toggleExperts([[r, c]]),
    onBox: ({ r0, r1, c0, c1 }) => {
      const cells = [];
      for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) cells.push([r, c]);
      state.toggleExperts(cells);
    },
    onRowClick: (r) => state.toggleLayers([r]),
  });
  if (moe) expertsHost.append(experts.el);

  function drawExperts() {
    if (!expertsData) return;
    experts.setData(expertsData.metrics[view.expertMetric]);
    mount(expertsBar, colorbar(view.palette, experts.range, view.scale));
  }

  async function loadExperts() {
    if (!moe) return;
    try {
      expertsData = await api.get(`/importance-runs/${run.id}/experts${qs({ batch: view.batch, seq: view.seq })}`);
    } catch (err) {
      mount(expertsHost, h("div.error-msg", err.message));
      return;
    }
    if (ctx.alive) drawExperts();
  }

  // ---- hidden channels strip ----------------------------------------------------------------
  let hiddenData = null;
  let hiddenBins = null; // {edges, positions: Int32Array (position -> channel)}
  const hidden = new Heatmap({
    rowHeight: 26,
    palette: view.palette,
    scale: view.scale,
    testid: "hidden-map",
    markFrac: (r, c) => {
      const set = state.index().hidden;
      if (!set.size) return 0;
      let n = 0;
      const [a, b] = [hiddenBins.edges[c], hiddenBins.edges[c + 1]];
      for (let p = a; p < b; p++) if (set.has(hiddenBins.positions[p])) n += 1;
      return n / (b - a);
    },
    tooltip: (r, c) => {
      const [a, b] = [hiddenBins.edges[c], hiddenBins.edges[c + 1]];
      const chans = Array.from(hiddenBins.positions.slice(a, Math.min(b, a + 4)));
      const D = hiddenData.z.length;
      if (b - a === 1) return `<b>channel ${chans[0]}</b><br>rank ${D - hiddenData.rank[chans[0]]} of ${D} (1 = most important)<br>score ${sig(hiddenRow[c])}`;
      return `<b>${view.order === "sorted" ? `ranks ${a + 1}–${b} of ${D}` : `channels ${a}–${b - 1}`}</b><br>channels ${chans.join(", ")}${b - a > 4 ? "…" : ""}<br>mean ${sig(hiddenRow[c])}`;
    },
    onClick: (r, c) => toggleHiddenBins(c, c),
    onBox: ({ c0, c1 }) => toggleHiddenBins(c0, c1),
    boxColumnsOnly: true,
  });
  hiddenHost.append(hidden.el);
  let hiddenRow = [];

  function toggleHiddenBins(c0, c1) {
    const list = Array.from(hiddenBins.positions.slice(hiddenBins.edges[c0], hiddenBins.edges[c1 + 1]));
    state.toggleHidden(list);
  }

  async function loadHidden() {
    try {
      hiddenData = await api.get(`/importance-runs/${run.id}/hidden${qs({ batch: view.batch, seq: view.seq })}`);
    } catch (err) {
      mount(hiddenHost, h("div.error-msg", err.message));
      return;
    }
    if (!ctx.alive) return;
    const { edges, positions, row } = binChannels(hiddenData.z, hiddenData.rank, view.order === "sorted");
    hiddenBins = { edges, positions };
    hiddenRow = row;
    hidden.setData([hiddenRow]);
    mount(hiddenBar, colorbar(view.palette, hidden.range, view.scale));
  }

  // ---- layers chart ---------------------------------------------------------------------------
  let layerData = null;
  function drawLayers() {
    return drawLayerChart({
      plot: layersPlot,
      caption: layersCaption,
      layerData,
      metric: view.layerMetric,
      scale: view.layerScale,
      drop: state.index().drop,
      numLayers: L,
      alive: () => ctx.alive,
      onToggle: (layers) => state.toggleLayers(layers),
    });
  }

  // ---- loading & redraws ---------------------------------------------------------------------
  async function loadHeads() {
    try {
      headsData = await api.get(`/importance-runs/${run.id}/heads${qs({ batch: view.batch, seq: view.seq })}`);
    } catch (err) {
      mount(headsHost, h("div.error-msg", err.message));
      return;
    }
    if (!ctx.alive) return;
    heads.setData(headsData.z);
    mount(headsBar, colorbar(view.palette, heads.range, view.scale));
  }

  async function reloadScores() {
    neuronOrder = null;
    await Promise.all([loadHeads(), moe ? loadExperts() : loadNeurons(), loadHidden(), loadStability()]);
  }

  /** Split-half rank agreement under the aggregation on screen (the width rankings depend on it). */
  async function loadStability() {
    const agg = { batch: view.batch, seq: view.seq };
    let s;
    try {
      s = await api.get(`/importance-runs/${run.id}/stability${qs(agg)}`);
    } catch {
      return;
    }
    if (!ctx.alive || agg.batch !== view.batch || agg.seq !== view.seq) return; // a newer choice is loading
    mount(stability, ...widthStability(s, { moe, batch: view.batch, seq: view.seq }));
    mount(layerStability, ...depthStability(s));
  }

  function restyle() {
    for (const map of [heads, neurons, hidden, experts]) map.set({ palette: view.palette, scale: view.scale });
    if (expertsData) mount(expertsBar, colorbar(view.palette, experts.range, view.scale));
    if (headsData) mount(headsBar, colorbar(view.palette, heads.range, view.scale));
    if (neuronData) mount(neuronsBar, colorbar(view.palette, neurons.range, view.scale));
    if (hiddenData) mount(hiddenBar, colorbar(view.palette, hidden.range, view.scale));
  }

  state.subscribe(() => {
    computeNeuronMarks();
    heads.draw();
    neurons.draw();
    hidden.draw();
    experts.draw();
    drawLayers();
  });

  const onKey = (ev) => {
    if (ev.target.closest && ev.target.closest("input, textarea, select")) return;
    const mod = ev.ctrlKey || ev.metaKey;
    if (!mod) return;
    const key = ev.key.toLowerCase();
    if (key === "z" && !ev.shiftKey) {
      ev.preventDefault();
      state.undo();
    } else if ((key === "z" && ev.shiftKey) || key === "y") {
      ev.preventDefault();
      state.redo();
    }
  };
  window.addEventListener("keydown", onKey);
  ctx.onCleanup(() => {
    window.removeEventListener("keydown", onKey);
    planner.destroy();
    for (const map of [heads, neurons, hidden, experts]) map.destroy();
  });

  await Promise.all([
    loadHeads(),
    moe ? loadExperts() : loadNeurons(),
    loadHidden(),
    loadStability(),
  ]);
  const paint = performance.now() - t0;
  timing.textContent = `first paint ${Math.round(paint)} ms`;
  window.__prunescopeFirstPaintMs = paint;
  try {
    layerData = await api.get(`/importance-runs/${run.id}/layers`);
  } catch (err) {
    mount(layersPlot, h("div.error-msg", err.message));
  }
  await drawLayers();
  // Sorted neuron marks need each layer's ranking: fetch it now, after the first paint.
  if (view.order === "sorted" && !moe) {
    ensureOrder().then(() => {
      window.__prunescopeNeuronOrderMs = performance.now() - t0; // read by bench/dashboard_first_paint.py
      if (ctx.alive) { computeNeuronMarks(); neurons.draw(); }
    }).catch(() => {});
  }
}

/** The finite [min, max] of a heatmap's rows (null: none). */
function domainOf(rows) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const row of rows) for (const v of row) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return Number.isFinite(lo) ? [lo, hi] : null;
}

/** The hidden strip's bins: at most 256 over the D channels (in rank order, most important first, when
 * `sorted`), as `edges` into `positions` (position -> channel), and each bin's mean score (`row`). */
function binChannels(z, rank, sorted) {
  const D = z.length;
  const positions = Int32Array.from(z.keys());
  if (sorted) positions.sort((a, b) => rank[b] - rank[a]);
  const nb = Math.min(D, 256);
  const edges = Array.from({ length: nb + 1 }, (_, i) => Math.round((i * D) / nb));
  const row = [];
  for (let c = 0; c < nb; c++) {
    let s = 0;
    for (let p = edges[c]; p < edges[c + 1]; p++) s += z[positions[p]];
    row.push(s / (edges[c + 1] - edges[c]));
  }
  return { edges, positions, row };
}

/** No run in the URL: list every finished importance run. */
async function pickRun(host, ctx) {
  mount(host, h("div.page-head", h("h1", "Explorer & planner"), h("span.sub", "Pick an importance run to explore and plan a cut.")));
  try {
    const [runs, teachers] = await Promise.all([api.get("/importance-runs"), api.get("/teachers")]);
    if (!ctx.alive) return;
    const name = (id) => teachers.find((t) => t.id === id)?.name || `teacher ${id}`;
    host.append(h("section.panel", runs.length
      ? h("table", h("thead", h("tr", h("th", "run"), h("th", "teacher"), h("th", "status"), h("th", "created"))),
          h("tbody", runs.map((r) => h("tr.clickable", { onclick: () => { location.hash = href("explore", [r.id]); } },
            h("td.mono", `#${r.id}`), h("td", name(r.teacher_id)), h("td", statusBadge(r.status)), h("td.faint", when(r.created_at))))))
      : h("div.empty", "No importance run yet. ", h("a", { href: "#/" }, "Start one from Teachers & data →"))));
  } catch (err) {
    host.append(h("div.error-msg", err.message));
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** One layer of `/neuron-order`: base64 of little-endian uint16 / uint32 indices -> a typed array. */
export function decodeIndices(b64, dtype) {
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  const wide = dtype === "uint32";
  if (LITTLE_ENDIAN) return wide ? new Uint32Array(bytes.buffer) : new Uint16Array(bytes.buffer);
  const view = new DataView(bytes.buffer); // a big-endian host: swap each index
  const out = wide ? new Uint32Array(bytes.length / 4) : new Uint16Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = wide ? view.getUint32(4 * i, true) : view.getUint16(2 * i, true);
  return out;
}
