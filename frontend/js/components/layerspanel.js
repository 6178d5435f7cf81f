// The explorer's layers panel (views/explorer.js): the layer chart (components/layerchart.js) with its
// score and y-axis controls and the depth scores' rank-stability badges (`stability`, filled by the view).

import { api } from "../api.js";
import { h, mount, segmented } from "../dom.js";
import { setQuery } from "../router.js";
import { drawLayerChart } from "./layerchart.js";

/** The panel for explorer state `st`: {el, stability, load, draw}. */
export function layersPanel(st) {
  const { plan, view } = st;
  let data = null;
  const plot = h("div.plot.columns-clickable", { dataset: { testid: "layers-plot" } });
  const caption = h("div.hint", { dataset: { testid: "layers-caption" } });
  const stability = h("span.row.tight");

  function draw() {
    return drawLayerChart({
      plot,
      caption,
      layerData: data,
      metric: view.layerMetric,
      scale: view.layerScale,
      drop: plan.index().drop,
      numLayers: st.numLayers,
      alive: st.alive,
      onToggle: (layers) => plan.toggleLayers(layers),
    });
  }

  const el = h("section.panel",
    h("header", h("h2", "Layers"),
      h("span.ctl", h("span", "score"), segmented([["block", "block scan"], ["bi", "Block Importance"], ["drop", "drop loss"]], view.layerMetric, (v) => { view.layerMetric = v; setQuery({ layer: v }); draw(); }, { dataset: { testid: "layer-metric" } })),
      h("span.ctl", h("span", "y"), segmented([["linear", "lin"], ["log", "log"]], view.layerScale, (v) => { view.layerScale = v; setQuery({ lscale: v === "linear" ? "" : v }); draw(); }, { dataset: { testid: "layer-scale" } })),
      stability),
    caption,
    plot);

  return {
    el,
    stability,
    /** Fetch the depth scores (the error is shown in the plot); then `draw` shows them. */
    async load() {
      try {
        data = await api.get(`/importance-runs/${st.run.id}/layers`);
      } catch (err) {
        mount(plot, h("div.error-msg", err.message));
      }
    },
    draw,
  };
}
