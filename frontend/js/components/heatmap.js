// Canvas heatmap with click-to-mark, drag box-select, hover tooltips and visible KV-group boundaries.
// Canvas rather than plotly: a 32 x 256-bin map repaints in a few ms with per-cell mark overlays, and
// box selection on a heatmap is not something plotly offers.

import { lut, normaliser } from "../colormap.js";

const MARK = "#ff4fa3";
let tooltipEl = null;

function tooltip() {
  if (!tooltipEl) {
    tooltipEl = document.createElement("div");
    tooltipEl.className = "tooltip hidden";
    document.body.append(tooltipEl);
  }
  return tooltipEl;
}

export function showTooltip(html, ev) {
  const el = tooltip();
  el.innerHTML = html;
  el.classList.remove("hidden");
  const pad = 14;
  const { innerWidth: w, innerHeight: hgt } = window;
  const rect = el.getBoundingClientRect();
  let x = ev.clientX + pad;
  let y = ev.clientY + pad;
  if (x + rect.width > w - 4) x = ev.clientX - rect.width - pad;
  if (y + rect.height > hgt - 4) y = ev.clientY - rect.height - pad;
  el.style.left = `${x}px`;
  el.style.top = `${y}px`;
}

export function hideTooltip() {
  if (tooltipEl) tooltipEl.classList.add("hidden");
}

let hatchCache = null;
function hatch(ctx) {
  if (!hatchCache) {
    const tile = document.createElement("canvas");
    tile.width = 6;
    tile.height = 6;
    const t = tile.getContext("2d");
    t.strokeStyle = MARK;
    t.lineWidth = 1.6;
    t.beginPath();
    t.moveTo(-1, 7);
    t.lineTo(7, -1);
    t.moveTo(-1, 1);
    t.lineTo(1, -1);
    t.moveTo(5, 7);
    t.lineTo(7, 5);
    t.stroke();
    hatchCache = tile;
  }
  return ctx.createPattern(hatchCache, "repeat");
}

export class Heatmap {
  /**
   * opts: rows (known before the data: reserves the height), cols, rowHeight, groupSize (columns per KV group, or a function of the row; draws separators), rowLabels (fn r -> text
   * or null), palette, scale, domain, markFrac(r, c) -> 0..1, rowMarked(r) -> bool, tooltip(r, c) -> html,
   * onClick(r, c, ev), onBox({r0, r1, c0, c1}, ev), onRowClick(r, ev), onRowHover(r), boxColumnsOnly.
   */
  constructor(opts) {
    this.o = { rowHeight: 14, palette: "viridis", scale: "linear", ...opts };
    this.z = null;
    this.el = document.createElement("div");
    this.el.className = this.o.rowLabels ? "hm-wrap" : "";
    this.labels = document.createElement("div");
    this.labels.className = "hm-rowlabels";
    this.area = document.createElement("div");
    this.area.className = "hm";
    this.canvas = document.createElement("canvas");
    this.box = document.createElement("div");
    this.box.className = "box hidden";
    this.area.append(this.canvas, this.box);
    if (this.o.rowLabels) this.el.append(this.labels);
    this.el.append(this.area);
    if (this.o.testid) this.canvas.dataset.testid = this.o.testid;
    // Hold the map's height until its data arrives: panels below must not jump under the mouse.
    if (this.o.rows) this.canvas.style.height = `${this.o.rows * this.o.rowHeight}px`;
    this._bindMouse();
    this._resize = new ResizeObserver(() => this.draw());
    this._resize.observe(this.area);
  }

  destroy() {
    this._resize.disconnect();
    window.removeEventListener("mousemove", this._onWindowMove);
    window.removeEventListener("mouseup", this._onWindowUp);
    hideTooltip();
  }

  /** z: array of rows (arrays); domain: optional [lo, hi] fixed across zoom levels. */
  setData(z, { domain = null } = {}) {
    this.z = z;
    this.o.rows = z.length;
    this.o.cols = z.length ? z[0].length : 0;
    this.o.domain = domain;
    this._image = null;
    this.draw();
  }

  set(options) {
    Object.assign(this.o, options);
    if ("palette" in options || "scale" in options || "domain" in options) this._image = null;
    this.draw();
  }

  /** Value -> colour image at data resolution, cached until data/palette/scale change. */
  _baseImage() {
    if (this._image) return this._image;
    const { rows, cols } = this.o;
    const flat = this.z.flat();
    this.norm = normaliser(flat, this.o.scale, this.o.domain);
    const table = lut(this.o.palette);
    const off = document.createElement("canvas");
    off.width = Math.max(1, cols);
    off.height = Math.max(1, rows);
    const ctx = off.getContext("2d");
    const img = ctx.createImageData(off.width, off.height);
    for (let r = 0; r < rows; r++) {
      const row = this.z[r];
      for (let c = 0; c < cols; c++) {
        const v = row[c];
        const p = (r * cols + c) * 4;
        if (v === null || v === undefined || Number.isNaN(v)) {
          img.data[p] = img.data[p + 1] = img.data[p + 2] = 40;
        } else {
          const i = Math.round(this.norm(v) * 255) * 3;
          img.data[p] = table[i];
          img.data[p + 1] = table[i + 1];
          img.data[p + 2] = table[i + 2];
        }
        img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    this._image = off;
    return off;
  }

  get range() {
    this._baseImage();
    return this.norm.range;
  }

  draw() {
    if (!this.z || !this.o.rows) return;
    const { rows, cols, rowHeight } = this.o;
    const width = Math.max(60, this.area.clientWidth || 600);
    const height = rows * rowHeight;
    const dpr = window.devicePixelRatio || 1;
    const canvas = this.canvas;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, width, height);
    ctx.drawImage(this._baseImage(), 0, 0, width, height);
    const cw = width / cols;

    // Row separators keep rows readable at a glance.
    if (rowHeight >= 8) {
      ctx.fillStyle = "rgba(14,17,22,0.55)";
      for (let r = 1; r < rows; r++) ctx.fillRect(0, r * rowHeight - 0.5, width, 1);
    }
    // KV-group boundaries: heads sharing one K/V projection sit between two dark rules.
    // groupSize may be a function of the row: a pruned teacher's layers can group their heads differently.
    const perRow = typeof this.o.groupSize === "function";
    ctx.fillStyle = "#0e1116";
    for (let r = 0; r < (perRow ? rows : 1); r++) {
      const size = perRow ? this.o.groupSize(r) : this.o.groupSize;
      const [y, h] = perRow ? [r * rowHeight, rowHeight] : [0, height];
      if (size && size < cols) for (let c = size; c < cols; c += size) ctx.fillRect(c * cw - 1.5, y, 3, h);
    }
    // Marked cells: darken, then a magenta hatch whose opacity says how much of the cell is marked.
    const pattern = hatch(ctx);
    for (let r = 0; r < rows; r++) {
      const y = r * rowHeight;
      if (this.o.rowMarked && this.o.rowMarked(r)) {
        ctx.fillStyle = "rgba(14,17,22,0.72)";
        ctx.fillRect(0, y, width, rowHeight);
        ctx.fillStyle = pattern;
        ctx.globalAlpha = 0.9;
        ctx.fillRect(0, y, width, rowHeight);
        ctx.globalAlpha = 1;
        ctx.fillStyle = MARK;
        ctx.fillRect(0, y, 3, rowHeight);
        continue;
      }
      if (!this.o.markFrac) continue;
      for (let c = 0; c < cols; c++) {
        const f = this.o.markFrac(r, c);
        if (!f) continue;
        const x = c * cw;
        ctx.fillStyle = `rgba(14,17,22,${0.25 + 0.5 * f})`;
        ctx.fillRect(x, y, cw, rowHeight);
        ctx.fillStyle = pattern;
        ctx.globalAlpha = 0.35 + 0.65 * f;
        ctx.fillRect(x, y, cw, rowHeight);
        ctx.globalAlpha = 1;
        if (f >= 1 && cw >= 6) {
          ctx.strokeStyle = MARK;
          ctx.lineWidth = 1;
          ctx.strokeRect(x + 0.5, y + 0.5, cw - 1, rowHeight - 1);
        }
      }
    }
    if (this._hover) {
      const [r, c] = this._hover;
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 1.5;
      ctx.strokeRect(c * cw + 0.75, r * rowHeight + 0.75, Math.max(2, cw - 1.5), rowHeight - 1.5);
    }
    this._drawLabels(height);
  }

  _drawLabels(height) {
    if (!this.o.rowLabels) return;
    const { rows, rowHeight } = this.o;
    this.labels.style.height = `${height}px`;
    const every = rowHeight >= 10 ? 1 : Math.ceil(10 / rowHeight);
    // Rebuild the label DOM only when rows or dropped rows changed (not on every hover repaint).
    let signature = `${rows}:${rowHeight}:`;
    for (let r = 0; r < rows; r++) signature += this.o.rowMarked && this.o.rowMarked(r) ? "1" : "0";
    if (signature === this._labelSignature) return;
    this._labelSignature = signature;
    const spans = [];
    for (let r = 0; r < rows; r++) {
      const text = this.o.rowLabels(r);
      if (text === null || (r % every !== 0 && !(this.o.rowMarked && this.o.rowMarked(r)))) continue;
      const span = document.createElement("span");
      span.textContent = text;
      span.style.top = `${r * rowHeight + rowHeight / 2}px`;
      if (this.o.rowMarked && this.o.rowMarked(r)) span.className = "dropped";
      if (this.o.onRowClick) {
        span.title = "click to drop / keep this layer";
        span.dataset.row = String(r);
        span.addEventListener("click", (ev) => this.o.onRowClick(r, ev));
      }
      spans.push(span);
    }
    this.labels.replaceChildren(...spans);
  }

  cellAt(ev) {
    const rect = this.canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left;
    const y = ev.clientY - rect.top;
    const c = Math.min(this.o.cols - 1, Math.max(0, Math.floor((x / rect.width) * this.o.cols)));
    const r = Math.min(this.o.rows - 1, Math.max(0, Math.floor(y / this.o.rowHeight)));
    return [r, c, x, y];
  }

  _bindMouse() {
    const canvas = this.canvas;
    let start = null;
    canvas.addEventListener("mousedown", (ev) => {
      if (ev.button !== 0 || !this.z) return;
      ev.preventDefault();
      start = this.cellAt(ev);
    });
    // Drags may leave the canvas: follow them on the window (removed again in destroy()).
    this._onWindowMove = (ev) => {
      if (!start) return;
      const [, , x, y] = this.cellAt(ev);
      const [, , x0, y0] = start;
      if (Math.abs(x - x0) + Math.abs(y - y0) < 4) return;
      const rect = this.canvas.getBoundingClientRect();
      const cx = Math.min(Math.max(x, 0), rect.width);
      const cy = this.o.boxColumnsOnly ? rect.height : Math.min(Math.max(y, 0), rect.height);
      const top = this.o.boxColumnsOnly ? 0 : Math.min(cy, y0);
      Object.assign(this.box.style, {
        left: `${Math.min(cx, x0)}px`,
        top: `${top}px`,
        width: `${Math.abs(cx - x0)}px`,
        height: `${this.o.boxColumnsOnly ? rect.height : Math.abs(cy - y0)}px`,
      });
      this.box.classList.remove("hidden");
    };
    this._onWindowUp = (ev) => {
      if (!start) return;
      const [r1, c1, x, y] = this.cellAt(ev);
      const [r0, c0, x0, y0] = start;
      start = null;
      this.box.classList.add("hidden");
      const moved = Math.abs(x - x0) + Math.abs(y - y0) >= 4;
      if (!moved) {
        if (this.o.onClick) this.o.onClick(r0, c0, ev);
      } else if (this.o.onBox) {
        this.o.onBox(
          { r0: Math.min(r0, r1), r1: Math.max(r0, r1), c0: Math.min(c0, c1), c1: Math.max(c0, c1) },
          ev,
        );
      }
    };
    window.addEventListener("mousemove", this._onWindowMove);
    window.addEventListener("mouseup", this._onWindowUp);
    canvas.addEventListener("mousemove", (ev) => {
      if (!this.z) return;
      const [r, c] = this.cellAt(ev);
      if (!this._hover || this._hover[0] !== r || this._hover[1] !== c) {
        this._hover = [r, c];
        this.draw();
        if (this.o.onRowHover) this.o.onRowHover(r);
      }
      if (this.o.tooltip) showTooltip(this.o.tooltip(r, c), ev);
    });
    canvas.addEventListener("mouseleave", () => {
      this._hover = null;
      hideTooltip();
      this.draw();
    });
  }
}
