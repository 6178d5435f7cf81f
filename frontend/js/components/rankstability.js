// The explorer's rank-stability badges (views/explorer.js): split-half Spearman ρ of each score, the width
// scores' under the aggregation on screen, the depth scores' beside the layer chart.

import { stabilityBadge } from "./widgets.js";
import { api, qs } from "../api.js";
import { h, mount } from "../dom.js";

/** Fetch split-half rank agreement under the aggregation on screen (explorer state `st`) and show the width
 * badges in `widthEl`, the depth badges in `depthEl`; nothing when the fetch fails. */
export async function showStability(st, widthEl, depthEl) {
  const { view } = st;
  const agg = st.agg();
  // Empty badges hold the row's final size while the numbers load: badges arriving above the maps wrapped
  // the toolbar onto a second line and moved the maps under the mouse.
  mount(widthEl, ...widthStability({}, { moe: st.moe, batch: view.batch, seq: view.seq }));
  let s;
  try {
    s = await api.get(`/importance-runs/${st.run.id}/stability${qs(agg)}`);
  } catch {
    return;
  }
  if (!st.alive() || agg.batch !== view.batch || agg.seq !== view.seq) return; // a newer choice is loading
  mount(widthEl, ...widthStability(s, { moe: st.moe, batch: view.batch, seq: view.seq }));
  mount(depthEl, ...depthStability(s));
}

/** The badges of the width scores (heads, neurons or experts, hidden) with their help, for aggregation `batch` / `seq`. */
export function widthStability(s, { moe, batch, seq }) {
  const aggName = `batch ${batch.toUpperCase()}, seq ${seq.toUpperCase()}`;
  const width = moe
    ? [badge("experts", s.experts_routed), badge("contribution", s.experts_contribution), badge("expert FFN", s.expert_neurons)]
    : [badge("neurons", s.neurons)];
  const help = `Rank stability: the calibration samples are split in two halves, each half's scores are ranked, and ρ is the Spearman correlation of the two rankings (1 = both halves order the units the same; near 0 = the order is noise: use more samples). Width scores (heads, neurons, hidden) are measured under the aggregation chosen on the left (now ${aggName}), so ρ follows it.`;
  return [h("span.hint.help", { title: help, dataset: { testid: "stability-help", agg: `${batch}/${seq}` } }, "rank stability (?)"), badge("heads", s.heads), ...width, badge("hidden", s.hidden)];
}

/** A width badge as wide as its longest text ("<axis> ρ=0.00 moderate"), loading or not, so that its row
 * wraps the same way before and after the numbers arrive. */
function badge(axis, rho) {
  const el = stabilityBadge(axis, rho);
  el.style.minWidth = `${axis.length + 15}ch`; // a "0" is wider than most letters: the text fits
  return el;
}

/** The badges of the depth scores (block_importance, drop_loss, block_loss_k2 …), which have their own split-half agreement. */
export function depthStability(s) {
  const depth = Object.keys(s).filter((k) => !["heads", "neurons", "hidden"].includes(k) && !k.startsWith("expert"));
  const depthHelp = "Split-half agreement of the depth scores. BI and angular are per-token cosines between a block's input and output, aggregated over the batch and the sequence like the width scores: their ρ follows the aggregation chosen on the left. drop and block k are loss increases averaged over every token: the aggregation does not apply to them, so their ρ does not move.";
  return [
    depth.length ? h("span.hint.help", { title: depthHelp, dataset: { testid: "depth-stability-help" } }, "(?)") : null,
    depth.map((k) => stabilityBadge(k.replace("block_importance", "BI").replace("drop_loss", "drop").replace("block_loss_k", "block k=").replace("block_angular_k", "angular k="), s[k])),
  ];
}
