// The explorer's attention-heads panel (views/explorer.js): layers × query heads, dark rules between KV
// groups; a click or box marks heads, or whole KV groups in "groups" mode; a row label marks the layer.

import { h, segmented } from "../dom.js";
import { sig } from "../format.js";
import { setQuery } from "../router.js";
import { boxCells } from "./explorerstate.js";
import { Heatmap } from "./heatmap.js";

/** The panel for explorer state `st`: {el, load, draw, restyle, destroy}. */
export function headsPanel(st) {
  const { spec, plan, view } = st;
  const perGroup = spec.num_heads / spec.num_kv_heads;
  // A pruned (non-uniform) teacher: each layer has its own heads, groups and MLP width. The heatmaps are
  // padded to the widest layer; padding cells (null scores) are drawn dark and cannot be marked.
  const groupSizeOf = (r) => (spec.layers?.[r] ? spec.layers[r].num_heads / spec.layers[r].num_kv_heads : perGroup);
  const groupOf = (r, c) => Math.floor(c / groupSizeOf(r));
  const headsIn = (r) => data?.widths?.[r] ?? spec.num_heads;

  let data = null;
  const host = h("div");
  const bar = h("div");
  const map = new Heatmap({
    rows: st.numLayers,
    rowHeight: st.numLayers > 24 ? 12 : 18,
    groupSize: spec.uniform === false ? groupSizeOf : perGroup,
    palette: view.palette,
    scale: view.scale,
    testid: "heads-map",
    rowLabels: (r) => `L${r}`,
    rowMarked: (r) => plan.index().drop.has(r),
    markFrac: (r, c) => {
      const idx = plan.index();
      return idx.heads.get(r)?.has(c) || idx.groups.get(r)?.has(groupOf(r, c)) ? 1 : 0;
    },
    tooltip: (r, c) => {
      if (c >= headsIn(r)) return `<b>layer ${r}</b> has ${headsIn(r)} heads (no head ${c}: a narrower layer of a pruned model)`;
      const v = data.z[r][c];
      const rank = data.rank[r][c];
      const idx = plan.index();
      const marked = idx.drop.has(r) ? "layer dropped" : idx.groups.get(r)?.has(groupOf(r, c)) ? "KV group removed" : idx.heads.get(r)?.has(c) ? "marked" : "";
      return `<b>layer ${r} · head ${c}</b> · KV group ${groupOf(r, c)}<br>score ${sig(v)}<br>rank ${headsIn(r) - rank} of ${headsIn(r)} in layer (1 = most important)${marked ? `<br><span class="marked">● ${marked}</span>` : ""}`;
    },
    onClick: (r, c) => toggleCells([[r, c]]),
    onBox: (box) => toggleCells(boxCells(box)),
    onRowClick: (r) => plan.toggleLayers([r]),
  });
  host.append(map.el);

  function toggleCells(all) {
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
      plan.toggleGroups(groups);
    } else {
      plan.toggleHeads(cells);
    }
  }

  const el = h("section.panel", { dataset: { testid: "heads-panel" } },
    h("header", h("h2", "Attention heads"), h("span.hint", "layers × query heads; dark rules separate KV groups"),
      h("span.ctl", h("span", "click marks"), segmented([["heads", "heads"], ["groups", "KV groups"]], view.headMode, (v) => { view.headMode = v; setQuery({ heads: v }); }, { dataset: { testid: "head-mode" } })),
      bar),
    host);

  return {
    el,
    async load() {
      data = await st.scores("heads", host);
      if (!data) return;
      map.setData(data.z);
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
