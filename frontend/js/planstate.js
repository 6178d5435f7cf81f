// The plan being edited, with undo/redo. Plans are treated as immutable values: an edit builds a new
// plan sharing untouched per-layer lists, so the history is cheap even with thousands of neurons marked.

export function emptyPlan() {
  return { drop_layers: [], remove_heads: {}, remove_kv_groups: {}, remove_neurons: {}, remove_hidden: [], remove_experts: {}, remove_expert_neurons: {}, targets: null };
}

/** Normalise a plan from the API or storage (string keys, sorted unique lists, no empty entries). */
export function normalisePlan(plan) {
  const base = emptyPlan();
  if (!plan) return base;
  const dict = (d) => {
    const out = {};
    for (const [k, v] of Object.entries(d || {})) if (v && v.length) out[String(k)] = sortedUnique(v);
    return out;
  };
  return {
    drop_layers: sortedUnique(plan.drop_layers || []),
    remove_heads: dict(plan.remove_heads),
    remove_kv_groups: dict(plan.remove_kv_groups),
    remove_neurons: dict(plan.remove_neurons),
    remove_hidden: sortedUnique(plan.remove_hidden || []),
    // Mixture of experts: experts per layer; each expert's FFN channels (layer -> expert -> list).
    remove_experts: dict(plan.remove_experts),
    remove_expert_neurons: Object.fromEntries(
      Object.entries(plan.remove_expert_neurons || {}).map(([l, perExpert]) => [String(l), dict(perExpert)]).filter(([, d]) => Object.keys(d).length),
    ),
    targets: plan.targets || null,
  };
}

function sortedUnique(list) {
  return Array.from(new Set(list.map(Number))).sort((a, b) => a - b);
}

/** Toggle a set of indices in a list: if all are present remove them, else add the missing ones. */
function toggleAll(list, indices) {
  const set = new Set(list);
  const allIn = indices.every((i) => set.has(i));
  for (const i of indices) allIn ? set.delete(i) : set.add(i);
  return Array.from(set).sort((a, b) => a - b);
}

function withLayerList(dict, layer, list) {
  const out = { ...dict };
  if (list.length) out[String(layer)] = list;
  else delete out[String(layer)];
  return out;
}

export class PlanState {
  constructor(plan = emptyPlan(), limit = 200) {
    this.plan = normalisePlan(plan);
    this.past = [];
    this.future = [];
    this.limit = limit;
    this.listeners = new Set();
    this._index = null;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  _commit(next, label) {
    this.past.push(this.plan);
    if (this.past.length > this.limit) this.past.shift();
    this.future = [];
    this.plan = next;
    this._index = null;
    this._emit(label);
  }

  _emit(label) {
    for (const fn of this.listeners) fn(this.plan, label);
  }

  canUndo() {
    return this.past.length > 0;
  }

  canRedo() {
    return this.future.length > 0;
  }

  undo() {
    if (!this.past.length) return false;
    this.future.push(this.plan);
    this.plan = this.past.pop();
    this._index = null;
    this._emit("undo");
    return true;
  }

  redo() {
    if (!this.future.length) return false;
    this.past.push(this.plan);
    this.plan = this.future.pop();
    this._index = null;
    this._emit("redo");
    return true;
  }

  /** Replace the whole plan (fill-to-target, load); undoable. */
  replace(plan, label = "replace") {
    this._commit(normalisePlan(plan), label);
  }

  /** Reset without history (e.g. opening a saved plan). */
  reset(plan) {
    this.plan = normalisePlan(plan);
    this.past = [];
    this.future = [];
    this._index = null;
    this._emit("reset");
  }

  toggleLayers(layers) {
    if (!layers.length) return;
    this._commit({ ...this.plan, drop_layers: toggleAll(this.plan.drop_layers, layers) }, "layers");
  }

  /** cells: [[layer, head], ...]; toggled together (all marked -> unmark, else mark). */
  toggleHeads(cells) {
    if (!cells.length) return;
    const idx = this.index();
    const allIn = cells.every(([l, hd]) => idx.heads.get(l)?.has(hd));
    let heads = { ...this.plan.remove_heads };
    const byLayer = groupByLayer(cells);
    for (const [l, list] of byLayer) {
      const set = new Set(heads[String(l)] || []);
      for (const hd of list) allIn ? set.delete(hd) : set.add(hd);
      heads = withLayerList(heads, l, Array.from(set).sort((a, b) => a - b));
    }
    this._commit({ ...this.plan, remove_heads: heads }, "heads");
  }

  /** Toggle whole KV groups (with their query heads) per layer: cells [[layer, group], ...]. */
  toggleGroups(cells) {
    if (!cells.length) return;
    const idx = this.index();
    const allIn = cells.every(([l, g]) => idx.groups.get(l)?.has(g));
    let groups = { ...this.plan.remove_kv_groups };
    for (const [l, list] of groupByLayer(cells)) {
      const set = new Set(groups[String(l)] || []);
      for (const g of list) allIn ? set.delete(g) : set.add(g);
      groups = withLayerList(groups, l, Array.from(set).sort((a, b) => a - b));
    }
    this._commit({ ...this.plan, remove_kv_groups: groups }, "groups");
  }

  /** perLayer: Map(layer -> neuron indices) toggled together. */
  toggleNeurons(perLayer) {
    const entries = Array.from(perLayer.entries()).filter(([, list]) => list.length);
    if (!entries.length) return;
    const idx = this.index();
    const allIn = entries.every(([l, list]) => {
      const set = idx.neurons.get(l);
      return set && list.every((n) => set.has(n));
    });
    let neurons = { ...this.plan.remove_neurons };
    for (const [l, list] of entries) {
      const set = new Set(neurons[String(l)] || []);
      for (const n of list) allIn ? set.delete(n) : set.add(n);
      neurons = withLayerList(neurons, l, Array.from(set).sort((a, b) => a - b));
    }
    this._commit({ ...this.plan, remove_neurons: neurons }, "neurons");
  }

  /** Toggle experts of MoE layers: cells [[layer, expert], ...] (all marked -> unmark, else mark). */
  toggleExperts(cells) {
    if (!cells.length) return;
    const idx = this.index();
    const allIn = cells.every(([l, e]) => idx.experts.get(l)?.has(e));
    let experts = { ...this.plan.remove_experts };
    for (const [l, list] of groupByLayer(cells)) {
      const set = new Set(experts[String(l)] || []);
      for (const e of list) allIn ? set.delete(e) : set.add(e);
      experts = withLayerList(experts, l, Array.from(set).sort((a, b) => a - b));
    }
    this._commit({ ...this.plan, remove_experts: experts }, "experts");
  }

  toggleHidden(channels) {
    if (!channels.length) return;
    this._commit({ ...this.plan, remove_hidden: toggleAll(this.plan.remove_hidden, channels) }, "hidden");
  }

  clear() {
    this._commit(emptyPlan(), "clear");
  }

  /** Set-based view of the current plan for fast "is this cell marked?" checks while drawing. */
  index() {
    if (this._index) return this._index;
    const toMap = (d) => new Map(Object.entries(d).map(([k, v]) => [Number(k), new Set(v)]));
    this._index = {
      drop: new Set(this.plan.drop_layers),
      heads: toMap(this.plan.remove_heads),
      groups: toMap(this.plan.remove_kv_groups),
      neurons: toMap(this.plan.remove_neurons),
      hidden: new Set(this.plan.remove_hidden),
      experts: toMap(this.plan.remove_experts || {}),
    };
    return this._index;
  }
}

function groupByLayer(cells) {
  const out = new Map();
  for (const [l, i] of cells) {
    if (!out.has(l)) out.set(l, []);
    out.get(l).push(i);
  }
  return out;
}

/** Whether two plans mark the same units and targets (normalised first: key order and duplicates aside). */
export function samePlan(a, b) {
  return JSON.stringify(normalisePlan(a)) === JSON.stringify(normalisePlan(b));
}
