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

/**
 * Tick settings for a log y axis over `values` (audit 23: a short validation series or the learning rate
 * got a label at every digit, "1e-4 9e-5 8e-5 …", stacked on each other). Under one decade: two to
 * six round values (1, 2 or 5 × 10^k apart) as explicit ticks; under three decades: 1, 2 and 5 of each
 * decade; beyond that (or without positive values) Plotly's decades, {}.
 */
export function logTicks(values) {
  const pos = values.filter((v) => Number.isFinite(v) && v > 0);
  if (!pos.length) return {};
  const lo = Math.min(...pos);
  const hi = Math.max(...pos);
  if (hi / lo >= 1000) return {};
  if (hi / lo >= 10) return { dtick: "D2" };
  if (hi === lo) return { tickmode: "array", tickvals: [lo] };
  const raw = (hi - lo) / 5;
  const unit = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * unit).find((s) => s >= raw);
  const tickvals = [];
  for (let k = Math.ceil(lo / step); k * step <= hi * (1 + 1e-12); k += 1) tickvals.push(Number((k * step).toPrecision(12)));
  return { tickmode: "array", tickvals };
}

/** A log y axis for these plot traces, with logTicks over their values. */
export function logAxis(traces) {
  return { type: "log", ...logTicks(traces.flatMap((t) => t.y || [])) };
}
