// The explorer's experts panel for a mixture-of-experts teacher (views/explorer.js): layers × experts under
// one of three scores; a click or box marks experts for removal, a row label the layer.

import { h, segmented } from "../dom.js";
import { sig } from "../format.js";
import { setQuery } from "../router.js";
import { boxCells } from "./explorerstate.js";
import { Heatmap } from "./heatmap.js";

const HELP = {
  routed: "share of tokens routed to this expert (a layer's shares sum to top-k)",
  contribution: "|routing weight × expert output| per token (0 where not routed)",
  prob: "router softmax probability per token",
};

/** The panel for explorer state `st`: {el, load, draw, restyle, destroy}. */
export function expertsPanel(st) {
  const { spec, plan, view } = st;
  let data = null;
  const host = h("div");
  const bar = h("div");
  const map = new Heatmap({
    rows: st.numLayers,
    rowHeight: st.numLayers > 24 ? 12 : 18,
    palette: view.palette,
    scale: view.scale,
    testid: "experts-map",
    rowLabels: (r) => `L${r}`,
    rowMarked: (r) => plan.index().drop.has(r),
    markFrac: (r, c) => (plan.index().experts.get(r)?.has(c) ? 1 : 0),
    tooltip: (r, c) => {
      const m = view.expertMetric;
      const rank = data.rank[m][r][c];
      const marked = plan.index().drop.has(r) ? "layer dropped" : plan.index().experts.get(r)?.has(c) ? "marked" : "";
      return `<b>layer ${r} · expert ${c}</b><br>${HELP[m]}: ${sig(data.metrics[m][r][c])}<br>rank ${spec.num_experts - rank} of ${spec.num_experts} in layer (1 = most important)${marked ? `<br><span class="marked">● ${marked}</span>` : ""}`;
    },
    onClick: (r, c) => plan.toggleExperts([[r, c]]),
    onBox: (box) => plan.toggleExperts(boxCells(box)),
    onRowClick: (r) => plan.toggleLayers([r]),
  });
  host.append(map.el);

  function show() {
    if (!data) return;
    map.setData(data.metrics[view.expertMetric]);
    st.paintBar(bar, map);
  }

  const el = h("section.panel", { dataset: { testid: "experts-panel" } },
    h("header", h("h2", "Experts"), h("span.hint", `layers × ${spec.num_experts} experts (top-${spec.experts_per_token} per token); click or drag to mark experts for removal`),
      h("span.ctl", h("span", "score"), segmented([["routed", "routed share"], ["contribution", "contribution"], ["prob", "router prob."]], view.expertMetric, (v) => { view.expertMetric = v; setQuery({ experts: v }); show(); }, { dataset: { testid: "expert-metric" } })),
      bar),
    host);

  return {
    el,
    async load() {
      data = await st.scores("experts", host);
      if (data) show();
    },
    draw: () => map.draw(),
    restyle() {
      map.set({ palette: view.palette, scale: view.scale });
      if (data) st.paintBar(bar, map);
    },
    destroy: () => map.destroy(),
  };
}
