// Plotly helpers: one dark theme for every chart, TensorBoard-style smoothing, readiness wait.

export const SERIES_COLORS = ["#2bb3a3", "#f2b34b", "#8fa8ff", "#ff8a65", "#b39ddb", "#7fd1ae", "#ffd166", "#f48fb1"];

export function plotlyReady() {
  return new Promise((resolve) => {
    if (window.Plotly) return resolve(window.Plotly);
    const timer = setInterval(() => {
      if (window.Plotly) {
        clearInterval(timer);
        resolve(window.Plotly);
      }
    }, 20);
  });
}

export function baseLayout(extra = {}) {
  const axis = { gridcolor: "#232b38", zerolinecolor: "#2a3342", linecolor: "#2a3342", tickfont: { size: 10 }, automargin: true };
  return {
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#121720",
    font: { family: "Inter, Segoe UI, system-ui, sans-serif", size: 11, color: "#c4ccd8" },
    margin: { l: 48, r: 12, t: 10, b: 34 },
    xaxis: { ...axis, ...(extra.xaxis || {}) },
    yaxis: { ...axis, ...(extra.yaxis || {}) },
    // Anchored by its bottom just above the plot: a legend that wraps onto more rows (long model names)
    // grows upwards and Plotly makes room, where one hung from y=1.12 covered the top of the curves.
    legend: { orientation: "h", y: 1.02, yanchor: "bottom", x: 0, font: { size: 10 }, bgcolor: "rgba(0,0,0,0)" },
    // Light text on the dark box: left unset, Plotly picks the font colour against the trace's colour (a
    // teal bar gave dark grey text on this near-black box, audit 16).
    hoverlabel: { bgcolor: "#0a0c10", bordercolor: "#364152", font: { family: "ui-monospace, monospace", size: 11, color: "#d9e0ea" } },
    showlegend: true,
    ...Object.fromEntries(Object.entries(extra).filter(([k]) => k !== "xaxis" && k !== "yaxis")),
  };
}

export const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"] };

/**
 * TensorBoard's debiased exponential moving average: weight in [0, 1), the first points are not pulled
 * towards zero because the accumulated weight is divided out.
 */
export function smooth(values, weight) {
  if (!weight) return values.slice();
  const out = [];
  let last = 0;
  let count = 0;
  for (const v of values) {
    if (!Number.isFinite(v)) {
      out.push(v);
      continue;
    }
    last = last * weight + (1 - weight) * v;
    count += 1;
    const debias = weight === 1 ? 1 : 1 - weight ** count;
    out.push(last / debias);
  }
  return out;
}
