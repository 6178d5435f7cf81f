// The explorer's MLP-neurons panel (views/explorer.js): layers × neuron bins, in rank order ("sorted") or
// natural order; a click or box marks the neurons behind the bins, or zooms into a column range.

import { api, qs } from "../api.js";
import { h, mount, segmented } from "../dom.js";
import { sig } from "../format.js";
import { setQuery } from "../router.js";
import { Heatmap } from "./heatmap.js";

/** The panel for explorer state `st`: {el, load, draw, restyle, fetchOrder, destroy}; `onOrder` runs after
 * the order control changes (the hidden strip follows the same order). */
export function neuronsPanel(st, { onOrder }) {
  const { plan, view } = st;
  let data = null;
  let domain = null;
  let zoom = null; // [start, end) positions, null = whole width
  let marks = null; // Float32Array rows x bins, recomputed per plan / view change
  let ranking = null; // {key, order: Map(layer -> Uint16Array|Uint32Array of neuron indices, most important first)}
  const host = h("div");
  const bar = h("div");
  const axis = h("div.hm-axis");
  const zoomInfo = h("span.hint");

  const map = new Heatmap({
    rows: st.numLayers,
    rowHeight: st.numLayers > 24 ? 10 : 16,
    palette: view.palette,
    scale: view.scale,
    testid: "neurons-map",
    rowLabels: (r) => `L${data.layers[r]}`,
    rowMarked: (r) => plan.index().drop.has(data.layers[r]),
    markFrac: (r, c) => (marks ? marks[r * data.bins + c] : 0),
    tooltip: (r, c) => tooltip(data, r, c, { marks, ranking }),
    onClick: (r, c) => toggleBins(r, r, c, c),
    onBox: ({ r0, r1, c0, c1 }) => {
      if (view.tool === "zoom") {
        zoom = [data.bin_edges[c0], data.bin_edges[c1 + 1]];
        fetchMap();
      } else {
        toggleBins(r0, r1, c0, c1);
      }
    },
    onRowClick: (r) => plan.toggleLayers([data.layers[r]]),
  });
  host.append(map.el);

  /** Neuron indices behind bins c0..c1 of rows r0..r1 (sorted order needs each layer's ranking). */
  async function toggleBins(r0, r1, c0, c1) {
    const d = data;
    if (d.order === "sorted") await fetchOrder();
    const perLayer = new Map();
    for (let r = r0; r <= r1; r++) {
      const layer = d.layers[r];
      const end = Math.min(d.bin_edges[c1 + 1], d.widths?.[r] ?? d.width); // padding (sorted last) is no neuron
      const list = [];
      for (let p = d.bin_edges[c0]; p < end; p++) list.push(d.order === "sorted" ? ranking.order.get(layer)[p] : p);
      if (list.length) perLayer.set(layer, list);
    }
    plan.toggleNeurons(perLayer);
  }

  /**
   * Each layer's neuron ranking (most important first), from the server: the sorted view bins positions
   * in this order, so marking a bin needs it. Never re-ranked here from the 4-digit payload values: near-
   * ties would order differently from `fill_plan`. Fetched once per aggregation.
   */
  async function fetchOrder() {
    const key = `${view.batch}:${view.seq}`;
    if (ranking && ranking.key === key) return ranking;
    if (ranking && ranking.key === key + ":loading") return ranking.promise;
    const promise = (async () => {
      const res = await api.get(`/importance-runs/${st.run.id}/neuron-order${qs(st.agg())}`);
      const order = new Map();
      res.order.forEach((packed, layer) => order.set(layer, decodeIndices(packed, res.dtype)));
      ranking = { key, order };
      return ranking;
    })();
    ranking = { key: key + ":loading", promise };
    return promise;
  }

  function computeMarks() {
    const d = data;
    if (!d) return;
    const idx = plan.index();
    const out = new Float32Array(d.layers.length * d.bins);
    const sortedReady = d.order !== "sorted" || (ranking && ranking.key === `${view.batch}:${view.seq}`);
    d.layers.forEach((layer, r) => {
      const set = idx.neurons.get(layer);
      if (!set || !set.size || !sortedReady) return;
      const order = d.order === "sorted" ? ranking.order.get(layer) : null;
      for (let c = 0; c < d.bins; c++) {
        const a = d.bin_edges[c];
        const b = d.bin_edges[c + 1];
        let n = 0;
        for (let p = a; p < b; p++) if (set.has(order ? order[p] : p)) n += 1;
        out[r * d.bins + c] = n / (b - a);
      }
    });
    marks = out;
    // The sorted map shows marks once the ranking is here; fetch it in the background when needed.
    if (!sortedReady && idx.neurons.size) fetchOrder().then(() => { if (st.alive()) draw(); });
  }

  function draw() {
    computeMarks();
    map.draw();
  }

  async function fetchMap() {
    const width = host.clientWidth || 800;
    const bins = Math.max(16, Math.min(256, Math.floor(width / 3)));
    const params = { ...st.agg(), order: view.order, bins };
    if (zoom) Object.assign(params, { start: zoom[0], end: zoom[1] });
    try {
      data = await api.get(`/importance-runs/${st.run.id}/neurons${qs(params)}`);
    } catch (err) {
      mount(host, h("div.error-msg", err.message));
      return;
    }
    if (!st.alive()) return;
    if (!zoom) domain = domainOf(data.z);
    computeMarks();
    map.setData(data.z, { domain });
    const d = data;
    mount(axis, h("span", d.order === "sorted" ? `rank ${d.start + 1}${d.start ? "" : " (most important)"}` : `neuron ${d.start}`), h("span", d.bins === d.end - d.start ? `${d.bins} neurons, one per column` : `${d.bins} bins of ≈${((d.end - d.start) / d.bins).toFixed(1)} neurons`), h("span", d.order === "sorted" ? `rank ${d.end}${d.end === d.width ? " (least important)" : ""}` : `neuron ${d.end - 1}`));
    zoomInfo.textContent = zoom ? `zoomed to ${zoom[0]}–${zoom[1] - 1} of ${d.width}` : (d.widths && Math.min(...d.widths) < d.width ? `${Math.min(...d.widths)}–${d.width} per layer` : `all ${d.width} per layer`);
    st.paintBar(bar, map);
  }

  const controls = h("div.row.tight",
    h("span.ctl", h("span", "order"), segmented([["sorted", "sorted"], ["natural", "natural"]], view.order, (v) => { view.order = v; setQuery({ order: v }); zoom = null; fetchMap(); onOrder(); }, { dataset: { testid: "neuron-order" } })),
    h("span.ctl", h("span", "drag"), segmented([["select", "marks"], ["zoom", "zooms"]], view.tool, (v) => { view.tool = v; map.set({ boxColumnsOnly: v === "zoom" }); }, { dataset: { testid: "neuron-tool" } })),
    h("button.small", { onclick: () => { zoom = null; fetchMap(); }, dataset: { testid: "zoom-reset" } }, "Reset zoom"),
    zoomInfo,
  );
  const el = h("section.panel", { dataset: { testid: "neurons-panel" } },
    h("header", h("h2", "MLP neurons"), controls, bar),
    host, axis);

  return {
    el,
    /** (Re)load under the aggregation on screen: a new aggregation ranks the neurons anew. */
    load() {
      ranking = null;
      return fetchMap();
    },
    draw,
    restyle() {
      map.set({ palette: view.palette, scale: view.scale });
      if (data) st.paintBar(bar, map);
    },
    /** Fetch each layer's ranking now (sorted marks need it; `draw` then shows them). */
    fetchOrder,
    destroy: () => map.destroy(),
  };
}

function tooltip(d, r, c, { marks, ranking }) {
  const a = d.bin_edges[c];
  const b = d.bin_edges[c + 1];
  const sorted = d.order === "sorted";
  const frac = marks ? marks[r * d.bins + c] : 0;
  const marked = frac ? `<br><span class="marked">● ${Math.round(frac * 100)}% marked</span>` : "";
  const width = d.widths?.[r] ?? d.width; // this layer's neurons (a pruned teacher's layers differ)
  if (a >= width) return `<b>layer ${d.layers[r]}</b> has ${width} neurons (padding: a narrower layer of a pruned model)`;
  if (b - a === 1) {
    // One neuron: name it (sorted order needs the ranking, fetched after the first paint).
    const order = sorted && ranking && ranking.order ? ranking.order.get(d.layers[r]) : null;
    const who = sorted ? (order ? `neuron ${order[a]}` : "") : `neuron ${a}`;
    const rank = sorted ? `<br>rank ${a + 1} of ${width} in layer (1 = most important)` : "";
    return `<b>layer ${d.layers[r]}${who ? ` · ${who}` : ""}</b>${rank}<br>score ${sig(d.z[r][c])}${marked}`;
  }
  const what = sorted ? `ranks ${a + 1}–${Math.min(b, width)} of ${width} (1 = most important)` : `neurons ${a}–${Math.min(b, width) - 1}`;
  return `<b>layer ${d.layers[r]}</b> · ${what}<br>mean ${sig(d.z[r][c])} · max ${sig(d.zmax[r][c])}<br>${b - a} neurons in this bin${marked}`;
}

/** The finite [min, max] of a heatmap's rows (null: none). */
function domainOf(rows) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const row of rows) for (const v of row) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  return Number.isFinite(lo) ? [lo, hi] : null;
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
