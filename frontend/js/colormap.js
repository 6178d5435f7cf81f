// Colour-blind-safe sequential palettes (viridis, cividis: perceptually uniform, readable in greyscale)
// and linear/log value normalisation shared by every heatmap and colour bar.

const STOPS = {
  viridis: ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"],
  cividis: ["#00224e", "#123570", "#3b496c", "#575d6d", "#707173", "#8a8678", "#a59c74", "#c3b369", "#e1cc55", "#fee838"],
};

const lutCache = new Map();

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** 256-entry RGB lookup table, interpolated between the palette's stops. */
export function lut(name = "viridis") {
  if (lutCache.has(name)) return lutCache.get(name);
  const stops = (STOPS[name] || STOPS.viridis).map(hexToRgb);
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (stops.length - 1);
    const k = Math.min(stops.length - 2, Math.floor(x));
    const f = x - k;
    for (let c = 0; c < 3; c++) table[i * 3 + c] = stops[k][c] * (1 - f) + stops[k + 1][c] * f;
  }
  lutCache.set(name, table);
  return table;
}

/**
 * A normaliser value -> [0, 1] for the given values; `log` uses log10 with the smallest positive value
 * as floor (importance scores are >= 0; zeros map to the bottom of the scale).
 */
export function normaliser(values, scale = "linear", domain = null) {
  let lo = Infinity;
  let hi = -Infinity;
  let minPos = Infinity;
  if (domain) {
    [lo, hi] = domain;
    minPos = lo > 0 ? lo : Infinity;
  }
  if (!domain || (scale === "log" && !(minPos < Infinity))) {
    for (const v of values) {
      if (v === null || v === undefined || Number.isNaN(v)) continue;
      if (!domain) {
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      if (v > 0 && v < minPos) minPos = v;
    }
  }
  if (!Number.isFinite(lo)) [lo, hi] = [0, 1];
  if (scale === "log") {
    const a = Math.log10(Number.isFinite(minPos) ? minPos : 1e-12);
    const b = Math.log10(Math.max(hi, Number.isFinite(minPos) ? minPos : 1e-12));
    const span = b - a || 1;
    const norm = (v) => (v > 0 ? Math.min(1, Math.max(0, (Math.log10(v) - a) / span)) : 0);
    norm.range = [10 ** a, 10 ** b];
    return norm;
  }
  const span = hi - lo || 1;
  const norm = (v) => Math.min(1, Math.max(0, (v - lo) / span));
  norm.range = [lo, hi];
  return norm;
}

/** Colour bar canvas for a palette: [min label][gradient][max label]. */
export function colorbar(name, range, scale, width = 140) {
  const wrap = document.createElement("div");
  wrap.className = "colorbar";
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = 10;
  const ctx = canvas.getContext("2d");
  const table = lut(name);
  for (let x = 0; x < width; x++) {
    const i = Math.round((x / (width - 1)) * 255);
    ctx.fillStyle = `rgb(${table[i * 3]},${table[i * 3 + 1]},${table[i * 3 + 2]})`;
    ctx.fillRect(x, 0, 1, 10);
  }
  const fmt = (v) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(1) : v.toPrecision(3));
  const lo = document.createElement("span");
  lo.textContent = fmt(range[0]);
  const hi = document.createElement("span");
  hi.textContent = `${fmt(range[1])}${scale === "log" ? " (log)" : ""}`;
  wrap.append(lo, canvas, hi);
  return wrap;
}
