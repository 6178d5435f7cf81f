// The explorer's hidden-channels strip (views/explorer.js): one global ranking of the residual channels,
// summed over every layer's norms, binned to at most 256 columns; a click or drag marks the channels.

import { h } from "../dom.js";
import { sig } from "../format.js";
import { Heatmap } from "./heatmap.js";

/** The panel for explorer state `st`: {el, load, draw, restyle, destroy}. */
export function hiddenPanel(st) {
  const { plan, view } = st;
  let data = null;
  let bins = null; // {edges, positions: Int32Array (position -> channel)}
  let row = [];
  const host = h("div");
  const bar = h("div");
  const map = new Heatmap({
    rows: 1,
    rowHeight: 26,
    palette: view.palette,
    scale: view.scale,
    testid: "hidden-map",
    markFrac: (r, c) => {
      const set = plan.index().hidden;
      if (!set.size) return 0;
      let n = 0;
      const [a, b] = [bins.edges[c], bins.edges[c + 1]];
      for (let p = a; p < b; p++) if (set.has(bins.positions[p])) n += 1;
      return n / (b - a);
    },
    tooltip: (r, c) => {
      const [a, b] = [bins.edges[c], bins.edges[c + 1]];
      const chans = Array.from(bins.positions.slice(a, Math.min(b, a + 4)));
      const D = data.z.length;
      if (b - a === 1) return `<b>channel ${chans[0]}</b><br>rank ${D - data.rank[chans[0]]} of ${D} (1 = most important)<br>score ${sig(row[c])}`;
      return `<b>${view.order === "sorted" ? `ranks ${a + 1}–${b} of ${D}` : `channels ${a}–${b - 1}`}</b><br>channels ${chans.join(", ")}${b - a > 4 ? "…" : ""}<br>mean ${sig(row[c])}`;
    },
    onClick: (r, c) => toggleBins(c, c),
    onBox: ({ c0, c1 }) => toggleBins(c0, c1),
    boxColumnsOnly: true,
  });
  host.append(map.el);

  function toggleBins(c0, c1) {
    plan.toggleHidden(Array.from(bins.positions.slice(bins.edges[c0], bins.edges[c1 + 1])));
  }

  const el = h("section.panel", { dataset: { testid: "hidden-panel" } },
    h("header", h("h2", "Hidden channels"), h("span.hint", "summed over every layer's norms; one global ranking"), bar),
    host);

  return {
    el,
    async load() {
      data = await st.scores("hidden", host);
      if (!data) return;
      const binned = binChannels(data.z, data.rank, view.order === "sorted");
      bins = { edges: binned.edges, positions: binned.positions };
      row = binned.row;
      map.setData([row]);
      st.paintBar(bar, map);
    },
    draw: () => map.draw(),
    restyle() {
      map.set({ palette: view.palette, scale: view.scale });
      if (data) st.paintBar(bar, map);
    },
    destroy: () => map.destroy(),
  };
}

/** The hidden strip's bins: at most 256 over the D channels (in rank order, most important first, when
 * `sorted`), as `edges` into `positions` (position -> channel), and each bin's mean score (`row`). */
function binChannels(z, rank, sorted) {
  const D = z.length;
  const positions = Int32Array.from(z.keys());
  if (sorted) positions.sort((a, b) => rank[b] - rank[a]);
  const nb = Math.min(D, 256);
  const edges = Array.from({ length: nb + 1 }, (_, i) => Math.round((i * D) / nb));
  const out = [];
  for (let c = 0; c < nb; c++) {
    let s = 0;
    for (let p = edges[c]; p < edges[c + 1]; p++) s += z[positions[p]];
    out.push(s / (edges[c + 1] - edges[c]));
  }
  return { edges, positions, row: out };
}
