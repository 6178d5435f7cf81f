// The explorer's toolbar (views/explorer.js): how the scores are aggregated over the batch and the sequence
// (a change reloads them) and how they are coloured (a change restyles the maps), with the width scores'
// rank-stability badges (`stability`, filled by the view).

import { h, segmented } from "../dom.js";
import { setQuery } from "../router.js";

/** The toolbar for explorer state `st`: {el, stability}; `onScores` after an aggregation change, `onStyle` after a colour change. */
export function explorerToolbar(st, { onScores, onStyle }) {
  const { view } = st;
  const stability = h("div.row.tight");
  const el = h("div.row",
    h("span.ctl", h("span", "batch"), segmented([["l2", "L2"], ["mean", "mean"], ["var", "var"]], view.batch, (v) => { view.batch = v; setQuery({ batch: v }); onScores(); }, { dataset: { testid: "agg-batch" } })),
    h("span.ctl", h("span", "seq"), segmented([["mean", "mean"], ["l2", "L2"]], view.seq, (v) => { view.seq = v; setQuery({ seq: v }); onScores(); }, { dataset: { testid: "agg-seq" } })),
    h("span.ctl", h("span", "scale"), segmented([["linear", "lin"], ["log", "log"]], view.scale, (v) => { view.scale = v; setQuery({ scale: v }); onStyle(); }, { dataset: { testid: "scale" } })),
    h("span.ctl", h("span", "palette"), segmented([["viridis", "viridis"], ["cividis", "cividis"]], view.palette, (v) => { view.palette = v; setQuery({ palette: v }); onStyle(); })),
    h("span.spacer"),
    stability,
  );
  return { el, stability };
}
