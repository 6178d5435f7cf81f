// The explorer's layer chart (views/explorer.js): one bar per layer (Block Importance or drop loss) or per
// block of k layers (the block-loss scan), Gromov's angular distance as a line beside the block bars,
// dropped layers in magenta. A click anywhere in a column drops / keeps its layer (or its whole block).

import { h, mount } from "../dom.js";
import { sig } from "../format.js";
import { baseLayout, PLOT_CONFIG, plotlyReady } from "../plots.js";

const KEEP = "#2bb3a3";
const MARKED = "#ff4fa3";
const ANGULAR_COLOR = "#f2b34b";
const ANGULAR_HOVER = "%{customdata}<br>angular distance %{y:.4g}<br>arccos(cos(block input, block output)) / π per token<br>lower = the block changes the representation less = better to drop<extra>Gromov</extra>";
const angularName = (k) => `angular distance, k=${k} (Gromov)`;

/**
 * What the chart shows for `metric` ("block" | "bi" | "drop") with the layers in `drop` dropped: the bars
 * ({x, y, label, text, colors, hover}), the block size `blockK` (null: one bar per layer) and the angular
 * line (null: none). Null when the run has no depth scores at all.
 */
export function layerSeries(layerData, metric, drop) {
  // Gromov et al.'s angular distance of each block: a line beside the block-loss bars (its own axis),
  // or the bars themselves for a run that has the angular scan but no block-loss scan.
  const blockLoss = layerData.block_loss || {};
  const blockAngular = layerData.block_angular || {};
  const blockKeys = Object.keys(blockLoss).length ? Object.keys(blockLoss) : Object.keys(blockAngular);
  const perLayer = layerData.block_importance || layerData.drop_loss;
  if (blockKeys.length && (metric === "block" || !perLayer)) {
    const blockK = Number(blockKeys[0]);
    let angular = blockAngular[String(blockK)] || null;
    let y = blockLoss[String(blockK)];
    let label = `loss increase when dropping layers i..i+${blockK - 1}`;
    let hover = "%{customdata}<br>%{y:.4g}<extra></extra>";
    if (!y) {
      [y, angular, label, hover] = [angular, null, angularName(blockK), ANGULAR_HOVER];
    }
    const x = y.map((_, i) => i);
    const text = x.map((i) => `layers ${i}–${i + blockK - 1}`);
    const colors = x.map((i) => (Array.from({ length: blockK }, (_, j) => i + j).every((l) => drop.has(l)) ? MARKED : KEEP));
    return { x, y, label, text, colors, hover, blockK, angular };
  }
  const key = metric === "drop" ? "drop_loss" : "block_importance";
  const y = layerData[key] || perLayer;
  if (!y) return null;
  const x = y.map((_, i) => i);
  const label = key === "drop_loss" ? "loss increase when this layer alone is dropped" : "Block Importance = 1 − cos(input, output)";
  const text = x.map((i) => `layer ${i}`);
  const colors = x.map((i) => (drop.has(i) ? MARKED : KEEP));
  return { x, y, label, text, colors, hover: "%{customdata}<br>%{y:.4g}<extra></extra>", blockK: null, angular: null };
}

/**
 * Draws the chart of `layerData` into `plot` and its caption into `caption`. `scale`: the y axis
 * ("linear" | "log"); `onToggle(layers)`: a column was clicked (its layer, or every layer of its block,
 * below `numLayers`); `alive()`: false once the view is gone.
 */
export async function drawLayerChart({ plot, caption, layerData, metric, scale, drop, numLayers, alive, onToggle }) {
  if (!layerData) return;
  const Plotly = await plotlyReady();
  if (!alive()) return;
  const series = layerSeries(layerData, metric, drop);
  if (!series) {
    mount(plot, h("div.empty", "This run has no depth scores (started with scans = []). Width planning still works."));
    return;
  }
  const { x, y, label, text, colors, hover, blockK, angular } = series;
  // The caption names only what is drawn: the Gromov line exists only when the run had the angular scan.
  const logY = scale === "log";
  mount(caption,
    `click anywhere in a column to drop / keep its layer${blockK ? " (a block-scan column toggles its whole block)" : ""}`,
    angular ? "; the line is the block's angular distance (Gromov), lower = better to drop" : "",
    logY && y.some((v) => !(v > 0)) ? "; log scale: scores ≤ 0 are not drawn" : "");
  // Values on the bars (one tall bar would otherwise flatten the rest), dropped layers named in magenta.
  const labelled = x.length <= 24;
  const trace = {
    type: "bar", x, y, customdata: text, marker: { color: colors }, name: label, showlegend: false,
    hovertemplate: hover,
    texttemplate: labelled ? "%{y:.3g}" : "", textposition: labelled ? "outside" : "none", cliponaxis: false,
    textfont: { size: 9, color: colors.map((c) => (c === MARKED ? MARKED : "#8a96a8")) },
  };
  const tickText = x.map((i) => (colors[i] === MARKED ? `<span style="color:${MARKED}">${i} ✕</span>` : String(i)));
  const traces = [trace];
  if (angular) {
    traces.push({
      type: "scatter", mode: "lines+markers", x, y: angular, yaxis: "y2", customdata: text, name: angularName(blockK),
      line: { color: ANGULAR_COLOR, width: 2 }, marker: { color: ANGULAR_COLOR, size: 6 }, hovertemplate: ANGULAR_HOVER,
    });
  }
  const layout = baseLayout({
    height: 200,
    // A click anywhere in a column hits its bar (hovermode x): short bars are not 3-px targets.
    hovermode: "x",
    dragmode: false,
    yaxis: { type: logY ? "log" : "linear", fixedrange: true },
    showlegend: !!angular,
    legend: { orientation: "h", x: 1, xanchor: "right", y: 1.0, yanchor: "bottom", font: { size: 10 }, bgcolor: "rgba(0,0,0,0)" },
    yaxis2: { overlaying: "y", side: "right", rangemode: "tozero", showgrid: false, zeroline: false, automargin: true, tickfont: { size: 10, color: ANGULAR_COLOR } },
    margin: { l: 52, r: angular ? 40 : 12, t: 26, b: 32 },
    title: { text: label + (layerData.base_loss ? `   ·   base loss ${sig(layerData.base_loss)}` : ""), font: { size: 11, color: "#8a96a8" }, x: 0.01, y: 0.97 },
    // Set, not autoranged (the same [-0.5, n - 0.5] Plotly picks for these bars): a click's column is
    // computed from it.
    xaxis: { fixedrange: true, range: [-0.5, x.length - 0.5], title: { text: blockK ? "first layer of block" : "layer", font: { size: 10 } }, tickvals: x.filter((i) => x.length <= 16 || i % 2 === 0 || colors[i] === MARKED), ticktext: tickText.filter((_, i) => x.length <= 16 || i % 2 === 0 || colors[i] === MARKED) },
    bargap: 0.15,
  });
  await Plotly.react(plot, traces, layout, PLOT_CONFIG);
  if (!plot._bound) {
    plot._bound = true;
    // The whole column is the target, not only its bar (a short bar is a few pixels): the click's x in
    // the plot area names the column. The plot area is Plotly's drag rectangle (drawn over the axes'
    // box, margins as automargin grew them); the x range is the one set above, one unit per column.
    plot.addEventListener("click", (ev) => {
      const area = plot.querySelector(".nsewdrag")?.getBoundingClientRect();
      const n = plot.data?.[0]?.x.length;
      if (!area?.width || !n) return;
      const fx = (ev.clientX - area.left) / area.width;
      const fy = (ev.clientY - area.top) / area.height;
      if (fx < 0 || fx > 1 || fy < 0 || fy > 1) return; // axes, legend, title
      const i = Math.min(n - 1, Math.floor(fx * n));
      const k = plot.dataset.blockK ? Number(plot.dataset.blockK) : 1;
      onToggle(Array.from({ length: k }, (_, j) => i + j).filter((l) => l < numLayers));
    });
  }
  plot.dataset.blockK = blockK || "";
}
