// Number formatting shared by every view (one definition of "1.2B params", "3.4 GFLOP"), and `parseCount`
// reading a typed count back.

export function compact(n, digits = 3) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const abs = Math.abs(n);
  const units = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) {
    if (abs >= size) return `${(n / size).toPrecision(digits)}${unit}`;
  }
  return Number.isInteger(n) ? String(n) : n.toPrecision(digits);
}

/** A count as typed into a form, `compact` read back: "5.87M" -> 5870000, "1.2e6", "300k"; "70%" -> 70% of
 * `total` (a budget as a share of the teacher); NaN when it is neither. */
export function parseCount(text, total = NaN) {
  const share = String(text).trim().match(/^([\d.]+)\s*%$/);
  if (share) return Math.round((Number(share[1]) / 100) * total);
  const m = String(text).trim().match(/^([\d.]+(?:e[+-]?\d+)?)\s*([kKmMbBgG]?)$/);
  if (!m) return NaN;
  const scale = { "": 1, k: 1e3, m: 1e6, b: 1e9, g: 1e9 }[m[2].toLowerCase()];
  return Math.round(Number(m[1]) * scale);
}

/** The one way the dashboard writes a memory figure, the mirror of worker/engine/memplan/units.py's
 * `format_bytes` (so a form's memory line reads as the API's 409 and the worker's logs): binary units,
 * the largest in which it is at least 1, one decimal: "384 B", "1.5 KiB", "150.3 MiB", "17.5 GiB".
 * tests/ui/test_format.py holds the two alike. */
export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${Math.round(n)} B` : `${oneDecimal(n)} ${units[i]}`;
}

/** x.toFixed(1), but an exact tie (1.25, 0.75: a quarter) rounds half to even, as Python's "{:.1f}" does
 * (toFixed rounds it up), so `bytes` writes what memplan.format_bytes writes. */
function oneDecimal(x) {
  const quarters = x * 4; // exact: a power of two
  if (!Number.isInteger(quarters) || Math.abs(quarters % 2) !== 1) return x.toFixed(1);
  const tenths = Math.floor(x * 10); // x * 10 = k + 0.5 exactly
  return ((tenths % 2 === 0 ? tenths : tenths + 1) / 10).toFixed(1);
}

/** Python's format(x, ".3g") (`digits` significant digits, exponent form below 1e-4 or from
 * 10^digits, no trailing zeros): how the API's messages write token counts, for lines that repeat them. */
export function pyG(x, digits = 3) {
  if (x === 0) return "0";
  const [mantissa, exp] = x.toExponential(digits - 1).split("e"); // rounded first: 99950 -> 1.00e+5
  const e = Number(exp);
  const trim = (t) => (t.includes(".") ? t.replace(/\.?0+$/, "") : t);
  if (e < -4 || e >= digits) return `${trim(mantissa)}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  return trim(x.toFixed(Math.max(0, digits - 1 - e)));
}

// SI prefixes (G, not the "B" of parameter counts): 31.5 MFLOP, 16.1 GFLOP.
export function flops(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const prefixes = [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  const [size, prefix] = prefixes.find(([size]) => Math.abs(n) >= size) || [1, ""];
  return `${(n / size).toPrecision(3)} ${prefix}FLOP`;
}

export function pct(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return `${(100 * x).toFixed(digits)}%`;
}

export function int(n) {
  return n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US");
}

export function sig(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  const abs = Math.abs(x);
  if (abs >= 1e5 || abs < 1e-3) return x.toExponential(digits - 1);
  return Number(x.toPrecision(digits)).toString();
}

/** Decimals for one table column of numbers (losses): at least `min`, and enough (up to `max`) that
 * numbers that differ do not print alike, so "4.3500" stands above "4.3495", not "4.35". */
export function columnDecimals(values, { min = 3, max = 6 } = {}) {
  const nums = [...new Set(values.filter((v) => Number.isFinite(v)))];
  for (let d = min; d < max; d++) {
    if (new Set(nums.map((v) => v.toFixed(d))).size === nums.length) return d;
  }
  return max;
}

/** `x` to `decimals` decimals ("–" when missing): one precision down a column. */
export function fixed(x, decimals) {
  return Number.isFinite(x) ? x.toFixed(decimals) : "–";
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** "21:03" today, "27 Nov 21:03" otherwise. */
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const time = d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === new Date().toDateString()) return time;
  return `${d.toLocaleDateString("en-GB", { day: "numeric", month: "short" })} ${time}`;
}

/** A throughput: "8.39M tok/s". */
export function rate(n, unit = "tok/s") {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return `${compact(n)} ${unit}`;
}

/** Seconds shown in milliseconds, 3 significant digits: "0.412 ms", "12.3 ms", "1234 ms". */
export function ms(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const v = seconds * 1000;
  return `${Math.abs(v) >= 1000 ? Math.round(v) : Number(v.toPrecision(3))} ms`;
}

/** A ratio such as a speedup: "1.87×". */
export function times(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  return `${x.toFixed(2)}×`;
}
