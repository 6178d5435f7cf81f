// Training curves shared by the job page and the bake-off view: the per-job series store fed by the
// metrics snapshot and the live metric events, the x-axis choices, the faint-raw + smoothed trace pair,
// the x-axis / smoothing controls and the debounced redraw.

import { h, segmented } from "../dom.js";
import { SERIES_COLORS, smooth } from "../plots.js";
import { setQuery } from "../router.js";

export const X_FIELDS = { step: ["step", "step"], tokens: ["tokens", "tokens"], time: ["t", "wall time (s)"] };

/** Series store: name -> Map(step -> point), so replayed / refetched points never duplicate. */
export class SeriesStore {
  constructor() {
    this.series = new Map();
  }

  add(name, point) {
    if (!Number.isFinite(point.value)) return;
    if (!this.series.has(name)) this.series.set(name, new Map());
    this.series.get(name).set(point.step, point);
  }

  addMetricEvent(ev) {
    for (const [name, value] of Object.entries(ev.values || {})) this.add(name, { step: ev.step, tokens: ev.tokens, t: ev.t, value });
  }

  /** Every point of a `GET /jobs/{id}/metrics` answer. */
  addSnapshot(snap) {
    for (const [name, pts] of Object.entries(snap?.series || {})) for (const p of pts) this.add(name, p);
  }

  /** Points of one series by step; a missing tokens / t (validation points) is taken from any
   * other series at the same step, so every x axis can place it. */
  points(name) {
    const m = this.series.get(name);
    if (!m) return [];
    const pts = Array.from(m.values()).sort((a, b) => a.step - b.step);
    return pts.map((p) => (p.tokens == null || p.t == null ? { ...this._axisAt(p.step), ...stripNull(p) } : p));
  }

  _axisAt(step) {
    for (const m of this.series.values()) {
      const q = m.get(step);
      if (q && q.tokens != null && q.t != null) return { tokens: q.tokens, t: q.t };
    }
    return {};
  }

  count(name) {
    return this.series.get(name)?.size || 0;
  }
}

function stripNull(p) {
  return Object.fromEntries(Object.entries(p).filter(([, v]) => v !== null && v !== undefined));
}

/** One curve as plot traces: a faint raw line (when smoothing; `rawName`: its legend name, if any)
 * under the smoothed line. */
export function smoothedTraces(pts, { x = "step", weight = 0, label, color, dash, rawOpacity = 0.25, rawName } = {}) {
  const xs = pts.map((p) => p[X_FIELDS[x][0]]);
  const ys = pts.map((p) => p.value);
  const traces = [];
  if (weight > 0) traces.push({ x: xs, y: ys, ...(rawName ? { name: rawName } : {}), mode: "lines", line: { color, width: 1 }, opacity: rawOpacity, showlegend: false, hoverinfo: "skip" });
  traces.push({ x: xs, y: smooth(ys, weight), name: label, mode: pts.length < 3 ? "lines+markers" : "lines", line: { color, width: 2, ...(dash ? { dash } : {}) }, hovertemplate: `${label} %{y:.4g}<extra>%{x}</extra>` });
  return traces;
}

/** Plot traces for the given series names with smoothing: faint raw line + solid smoothed line. */
export function curveTraces(store, names, { x = "step", weight = 0, prefix = "", colorOffset = 0, dash } = {}) {
  return names.flatMap((name, i) => {
    const pts = store.points(name);
    if (!pts.length) return [];
    const label = `${prefix}${name}`;
    const color = SERIES_COLORS[(i + colorOffset) % SERIES_COLORS.length];
    return smoothedTraces(pts, { x, weight, label, color, dash, rawName: `${label} (raw)` });
  });
}

/** Whether a curve is drawn smoothed: not validation points (sparse: smoothing would blur the few real
 * measurements), nor the learning rate (a set schedule, not noise: smoothed, its peak moved steps late). */
export function smoothable(name) {
  return !name.startsWith("val_") && name !== "lr";
}

/** x-axis settings for a step axis: steps are whole numbers, but over a short run (under 10 steps)
 * Plotly's automatic ticks fall on halves ("1.5", "2.5"), so tick every step there. {} otherwise. */
export function stepTicks(traces) {
  const xs = traces.flatMap((t) => t.x || []).filter(Number.isFinite);
  if (!xs.length) return {};
  return Math.max(...xs) - Math.min(...xs) < 10 ? { tick0: 0, dtick: 1 } : {};
}

/** The "x axis" segmented control over `choices` (keys of X_FIELDS with labels); writes ?x=. */
export function xAxisControl(view, choices, onChange, attrs = {}) {
  return h("span.ctl", h("span", "x axis"), segmented(choices, view.x, (v) => { view.x = v; setQuery({ x: v }); onChange(); }, attrs));
}

/** The smoothing slider with its value; writes ?smooth=. */
export function smoothingControl(view, onChange, attrs = {}) {
  const label = h("span.num", view.smooth.toFixed(2));
  const slider = h("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: view.smooth, ...attrs, oninput: (ev) => { view.smooth = Number(ev.target.value); label.textContent = view.smooth.toFixed(2); setQuery({ smooth: view.smooth }); onChange(); } });
  return h("span.ctl", h("span", "smoothing"), slider, label);
}

/** `draw` at most once per `delay` ms however often `schedule` is called; `cancel` on leaving. */
export function debounced(draw, delay) {
  let timer = null;
  return {
    schedule() {
      if (timer) return;
      timer = setTimeout(() => {
        timer = null;
        draw();
      }, delay);
    },
    cancel() {
      clearTimeout(timer);
    },
  };
}
