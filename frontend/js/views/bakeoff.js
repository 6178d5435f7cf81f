// A bake-off (a server-side "bakeoff" workflow): K candidates cut, distilled with the same settings
// and token budget, side by side. Live overlaid curves (one colour per candidate, from the teacher's
// event stream), each branch's steps linking to its child jobs, and the ranking before and after
// distillation with rank flips marked, filled in as each evaluation ends (the server's `ranking`); the
// winner can go on to a full distillation. A depth-vs-width study's two students are compared with their
// sizes beside their losses, not crowned on loss alone.
// URL: #/bakeoff/<workflow id>?x=step|tokens&smooth=0.6

import { api, showError } from "../api.js";
import { linkRow, progressBar, rowLink, statusBadge, statusReason } from "../components/widgets.js";
import { h, mount } from "../dom.js";
import { columnDecimals, compact, fixed, flops, parseCount, pct, when } from "../format.js";
import { baseLayout, PLOT_CONFIG, plotlyReady, SERIES_COLORS } from "../plots.js";
import { go, href } from "../router.js";
import { subscribe } from "../sse.js";
import { isStudy, retriable, stepLabel } from "../components/workflowsteps.js";
import { shapeLabel } from "../searchmath.js";
import { STUDY_SIZE_GAP } from "../studymath.js"; // candidates further apart in non-embedding share: not one size
import { debounced, SeriesStore, smoothable, smoothedTraces, smoothingControl, stepTicks, X_FIELDS, xAxisControl } from "../components/curves.js";

const CURVES = [
  ["loss", "training loss (optimised)"],
  ["val_loss", "validation loss"],
];

export async function bakeoffView(host, { args, query }, ctx) {
  const id = Number(args[0]);
  if (!id) return bakeoffList(host, ctx);
  const view = { x: query.get("x") || "step", smooth: Number(query.get("smooth") ?? 0.6) };
  let wf;
  try {
    wf = await api.get(`/workflows/${id}`);
  } catch (err) {
    mount(host, h("div.error-msg", err.message));
    return;
  }
  const teacher = await api.get(`/teachers/${wf.teacher_id}`).catch(() => null);
  if (!ctx.alive) return;
  const specs = new Map(); // plan id -> its spec (GET /plans/{id} stats.spec): each candidate's shape
  const fillWarnings = new Map(); // plan id -> the warnings of the fill that made it (messages on targets.*)
  const stores = new Map(); // distill job id -> SeriesStore
  const loaded = new Set(); // distill job ids whose metrics snapshot was read

  const head = h("div");
  const progress = h("section.panel", { dataset: { testid: "bakeoff-progress" } });
  const charts = CURVES.map(([name, label]) => ({ name, label, plot: h("div.plot", { dataset: { testid: `bakeoff-plot-${name}` } }) }));
  const ranking = h("div", { dataset: { testid: "bakeoff-ranking" } });
  const branches = h("div", { dataset: { testid: "bakeoff-branches" } });
  const actionErr = h("div.error-msg");
  const redraw = debounced(() => drawCurves(), 250);
  const schedule = redraw.schedule;

  mount(host,
    head,
    progress,
    h("section.panel", { style: { marginTop: "14px" } },
      h("header", h("h2", "Distillation, side by side"),
        xAxisControl(view, [["step", "step"], ["tokens", "tokens"]], schedule),
        smoothingControl(view, schedule)),
      h("div.grid.two", charts.map((c) => h("div", h("h3", c.label), c.plot, c.name === "val_loss" ? valProtocol(wf) : null)))),
    h("div.grid.two", { style: { marginTop: "14px" } },
      h("section.panel", h("header", h("h2", "Ranking before → after distillation"), h("span.hint", "lower loss ranks first; a flip is a candidate whose rank changed; filled in as each evaluation ends")), ranking),
      h("section.panel", h("header", h("h2", "Candidates and their jobs")), branches)),
  );

  const candidates = () => wf.branches.filter((b) => b.role !== "teacher");
  const colorOf = (b) => SERIES_COLORS[candidates().indexOf(b) % SERIES_COLORS.length];
  const stepOf = (b, name) => b.steps.find((s) => s.name === name);
  const branchNamed = (name) => wf.branches.find((b) => b.name === name);
  /** What a candidate is ("4 layers · h 24 · ffn 48 · 6 heads", from its plan): its name when the server
   * named it by its shape (shape_label, the same function), else the shape (an older bake-off's
   * "#1 L4-none.H6-whole_groups.F48.D24", or the user's name); its name until the plan is read. */
  const labelOf = (b) => {
    const shape = b && shapeLabel(specs.get(b.plan_id), teacher?.spec);
    return shape && !b.name.startsWith(shape) ? shape : b?.name;
  };
  /** The shape first; under it the search candidate's id (or the name, when the shape is not the name). */
  const candidateName = (b, name, best = false) => {
    const label = labelOf(b) || name;
    const ref = b?.candidate_id || (label !== name ? name : null);
    return [h(`span${best ? ".best" : ""}`, { dataset: { testid: "candidate-label" } }, label), ref ? h("div.faint.mono", { dataset: { testid: "candidate-id" } }, ref) : null];
  };
  /** The legend's name of a candidate: its shape, with its name when another has the same shape. */
  const legendName = (b) => {
    const label = labelOf(b);
    return candidates().filter((o) => labelOf(o) === label).length > 1 ? `${label} (${b.name})` : label;
  };

  async function loadSpecs() {
    const missing = [...new Set(candidates().map((b) => b.plan_id).filter((pid) => pid && !specs.has(pid)))];
    await Promise.all(missing.map(async (pid) => {
      const plan = await api.get(`/plans/${pid}`).catch(() => null);
      if (plan?.stats?.spec) specs.set(pid, plan.stats.spec);
      // A plan the server filled from targets keeps its fill's warnings (degenerate or slow widths).
      if (plan) fillWarnings.set(pid, (plan.messages || []).filter((m) => m.level === "warning" && m.field.startsWith("targets.")));
    }));
  }

  function renderHead() {
    const active = wf.status === "running" || wf.status === "queued";
    mount(head,
      h("div.page-head",
        h("h1", `Bake-off #${wf.id}`),
        statusBadge(wf.status),
        h("span.sub", wf.name, teacher ? ` · ${teacher.name}` : ""),
        h("span.hint", `${candidates().length} candidates · ${distillText(wf.params?.distill)} · created ${when(wf.created_at)}`),
        h("span.spacer"),
        // One group, right-aligned: on a narrow window the buttons wrap together, not Retry alone on a line.
        // Each only while it applies: a finished bake-off offered both, greyed.
        h("span.row.tight", { style: { marginLeft: "auto" } },
          active ? h("button.danger", { onclick: () => act("cancel"), dataset: { testid: "cancel" } }, "Cancel all") : null,
          retriable(wf) ? h("button", { onclick: () => act("retry"), dataset: { testid: "retry" }, title: "run the failed steps again (a distillation resumes from its checkpoint)" }, "Retry") : null),
      ));
    // The server's message ("#1 L4-none…: distill · #2 …") is the candidates table's steps again, by id;
    // a cancelled or failed bake-off's is the last progress line from before it stopped: its reason says why.
    const stale = wf.status === "running" || wf.status === "cancelled" || wf.status === "failed";
    mount(progress, progressBar({ ...wf, message: null }, { big: true }), wf.message && !stale ? h("div.hint", { dataset: { testid: "bakeoff-message" } }, wf.message) : null, statusReason(wf, { testid: "bakeoff-error" }),
      // The server's warnings on accepted settings (a run all within its LR warm-up): its ranking reads so.
      (wf.warnings || []).map((w) => h("div.note", { dataset: { testid: "bakeoff-warning" } }, w)),
      actionErr);
  }

  async function act(what) {
    try {
      await api.post(`/workflows/${wf.id}/${what}`);
      await refresh();
    } catch (e) {
      showError(actionErr, e);
    }
  }

  function renderBranches() {
    mount(branches, h("table",
      h("thead", h("tr", h("th", "candidate"), h("th", "status"), h("th", "steps (click for the job)"))),
      h("tbody", wf.branches.map((b) => h("tr", { dataset: { branch: b.name } },
        h("td", b.role === "teacher" ? h("span", b.name) : [h("span", { style: { color: colorOf(b) } }, "● "), candidateName(b, b.name)], b.student_id ? h("div.faint", h("a", { href: href("runs", [], { student: b.student_id }) }, `student #${b.student_id}`)) : null,
          (fillWarnings.get(b.plan_id) || []).map((m) => h("div.field-warning", { dataset: { testid: "fill-warning" }, title: m.field }, m.text))),
        h("td", statusBadge(b.status), b.error ? h("div.field-error", b.error) : null),
        h("td", h("div.row.tight", b.steps.map((s) => {
          // The study panel's words ("perplexity as cut"), not the step's id ("evaluate_pruned").
          const label = stepLabel(s.name, b.role === "teacher");
          const text = `${label}${s.status === "running" && s.progress ? ` ${Math.round(s.progress * 100)}%` : ""}`;
          const cls = { succeeded: "ok", running: "run", failed: "err", cancelled: "stopped" }[s.status] || "";
          return s.job_id ? h(`a.badge${cls ? `.${cls}` : ""}`, { href: href("job", [s.job_id]), title: `${s.kind} job #${s.job_id} · ${s.status}${s.tries > 1 ? ` · try ${s.tries}` : ""}`, dataset: { step: s.name } }, text) : h("span.badge", { title: s.status, dataset: { step: s.name } }, text);
        }))))))));
  }

  /** A candidate's size as a share of the teacher's non-embedding parameters (null when not known yet). */
  function nonEmbShare(x, b) {
    const n = x.params_non_embedding ?? specs.get(b?.plan_id)?.params_non_embedding;
    const of = teacher?.spec?.params_non_embedding;
    return Number.isFinite(n) && of ? n / of : null;
  }

  /** An empty cell of a row still running: what it waits for. */
  function pendingCell(b, step) {
    const s = b && stepOf(b, step);
    const state = s?.status === "running" || s?.status === "queued" ? "measuring…" : s?.status === "failed" || s?.status === "cancelled" ? s.status : "pending";
    return h("span.faint", { dataset: { pending: step } , title: `${stepLabel(step)}: ${s?.status || "not started"}` }, state);
  }

  function renderRanking() {
    // The server's ranking as it stands: partial (no winner) while candidates run, the result once done.
    const r = wf.ranking ?? wf.result;
    if (!r?.ranking?.length) {
      mount(ranking, h("div.empty", wf.status === "succeeded" ? "No ranking recorded." : "Fills in as each candidate's evaluation as cut finishes."));
      return;
    }
    const metric = r.metric || "loss";
    const rows = r.ranking; // ordered by rank after distillation (then as cut); ranks and flips as the server computed them
    const partial = !!r.partial;
    // One precision for both loss columns (as cut and after are read against each other), enough to tell them apart.
    // At most 4 decimals: closer losses are within any evaluation's noise, and 6 pushed the ranking past
    // its panel at 1440 px (the ranks beside them still order them).
    const decimals = columnDecimals(rows.flatMap((x) => [x.before?.[metric], x.after?.[metric]]), { max: 4 });
    // "Before" is the bake-off's own evaluation of each student as cut, not the search's ranking (scored on
    // the search's short held-out sample, so the two orders can differ): a bake-off started from a search
    // keeps each candidate's search rank (params.candidates[].search_rank) and shows it beside.
    const searchId = wf.params?.search_job_id;
    const searchRank = (x) => wf.params?.candidates?.find((c) => c.name === x.name)?.search_rank;
    const hasSearch = rows.some((x) => Number.isFinite(searchRank(x)));
    const searchDiffers = hasSearch && rows.some((a) => rows.some((b) => searchRank(a) < searchRank(b) && a.rank_before > b.rank_before));
    const flipText = r.flips?.length
      ? [`${r.flips.length} pair${r.flips.length > 1 ? "s" : ""} swapped order between as cut and after distillation: `, r.flips.map(([a, b]) => `${labelOf(branchNamed(a)) || a} overtook ${labelOf(branchNamed(b)) || b}`).join("; "), "."]
      : partial ? ["No flips so far."] : ["No flips: distillation kept the as-cut order."];
    const searchText = !hasSearch ? null
      : searchDiffers ? ` The search ranked them in another order (search rank): it scored them on its own held-out sample, the as-cut ${metric} comes from this bake-off's evaluation.`
      : " The search ranked them in the same order.";
    const partialText = partial ? ` Partial: ${rows.filter((x) => x.after?.[metric] == null).length} of ${rows.length} candidates still to finish; the ranks are among the numbers in so far.` : "";
    // The candidate cell wraps (a shape label is long) and the table scrolls inside its panel rather than
    // hiding the loss after distillation and the move past the panel's edge.
    mount(ranking,
      h("div.table-scroll", h("table", { dataset: { partial: String(partial) } },
        h("thead", h("tr", h("th.num", "after"), h("th", "candidate"), h("th.num", { title: "parameters; under them, the share of the teacher's non-embedding parameters" }, "params"), h("th.num", `${metric} as cut`), h("th.num", "rank as cut"),
          hasSearch ? h("th.num", { title: `the candidate's rank in search #${searchId ?? "?"} (lower held-out loss first)` }, searchId ? h("a", { href: href("search", [searchId]) }, "search rank") : "search rank") : null,
          h("th.num", `${metric} after`), h("th", "move"), h("th", ""))),
        h("tbody", rows.map((x) => {
          const b = branchNamed(x.name);
          const moved = x.rank_before - x.rank_after;
          const done = x.rank_before != null && x.rank_after != null;
          return h(`tr${x.name === r.winner ? ".selected" : ""}`, { dataset: { candidate: x.name, flipped: String(!!x.flipped) } },
            h("td.num", x.rank_after ?? "–"),
            h("td.wrap", b ? h("span", { style: { color: colorOf(b) } }, "● ") : null, candidateName(b, x.name, x.name === r.winner && !isStudy(wf))), // the winner's star after its shape, not its id
            // One cell: a separate non-embedding column pushed the ranking past its panel at 1440 px.
            h("td.num", x.params_total != null ? compact(x.params_total) : "–",
              h("div.hint", { dataset: { testid: "non-emb-share" } }, `${pct(nonEmbShare(x, b), 1)} non-emb.`)),
            h("td.num", { dataset: { testid: "loss-before" } }, x.before?.[metric] != null ? fixed(x.before[metric], decimals) : pendingCell(b, "evaluate_pruned")),
            h("td.num", x.rank_before ?? "–"),
            hasSearch ? h("td.num", { dataset: { testid: "search-rank" } }, Number.isFinite(searchRank(x)) ? `#${searchRank(x)}` : "–") : null,
            h("td.num", { dataset: { testid: "loss-after" } }, x.after?.[metric] != null ? fixed(x.after[metric], decimals) : pendingCell(b, "evaluate")),
            h("td", !done ? h("span.faint", "") : x.flipped ? h("span.badge.warn", { dataset: { testid: "flip" } }, moved > 0 ? `▲ ${moved} flip` : `▼ ${-moved} flip`) : h("span.faint", "=")),
            h("td.nowrap", x.distill_job_id ? h("a", { href: href("job", [x.distill_job_id]) }, "curves →") : null));
        })))),
      h("div.hint", { style: { marginTop: "6px" }, dataset: { testid: "flips-note", searchOrder: !hasSearch ? "none" : searchDiffers ? "differs" : "same" } }, flipText, searchText, partialText),
      sizeNote(rows, metric, decimals),
      r.winner ? promoteRow(r, metric, decimals) : null,
    );
  }

  /** The candidates' sizes when they differ by more than STUDY_SIZE_GAP of non-embedding parameters: a
   * lower loss then comes partly from a bigger model (audit finding 2). Null when they are one size. */
  function sizeNote(rows, metric, decimals) {
    const sized = rows.map((x) => ({ x, share: nonEmbShare(x, branchNamed(x.name)) })).filter((o) => o.share !== null);
    if (sized.length < 2) return null;
    const shares = sized.map((o) => o.share);
    const spread = Math.max(...shares) - Math.min(...shares);
    if (spread <= STUDY_SIZE_GAP) return null;
    const about = ({ x, share }) => `${labelOf(branchNamed(x.name)) || x.name}: ${pct(share, 1)} non-emb.${x.flops_per_token ? `, ${flops(x.flops_per_token)}/token` : ""}${x.after?.[metric] != null ? `, ${metric} ${fixed(x.after[metric], decimals)}` : ""}`;
    return h("div.field-warning", { style: { marginTop: "6px" }, dataset: { testid: "size-note" } },
      `Not one size: the candidates' non-embedding parameters differ by ${(100 * spread).toFixed(1)} percentage points (${sized.map(about).join(" · ")}), so a lower ${metric} is partly a larger model.`);
  }

  function promoteRow(r, metric, decimals) {
    const box = h("div.error-msg");
    const winner = labelOf(branchNamed(r.winner)) || r.winner;
    // A study compares two students of (at best nearly) one size: it reports which has the lower loss, each
    // with its size, rather than a winner; a bake-off's candidates share one budget, so it names one.
    const verdict = isStudy(wf)
      ? h("span", { dataset: { testid: "winner" } }, "Lower ", metric, ": ", h("b", winner), " (",
        r.ranking.filter((x) => x.after?.[metric] != null).map((x) => `${labelOf(branchNamed(x.name)) || x.name}: ${metric} ${fixed(x.after[metric], decimals)} at ${pct(nonEmbShare(x, branchNamed(x.name)), 1)} non-emb.`).join(", "), ")")
      : h("span", { dataset: { testid: "winner" } }, "Winner: ", h("b", winner), winner !== r.winner ? h("span.faint.mono", ` ${r.winner}`) : null);
    const d = wf.params?.distill || {};
    const tokens = h("input", { name: "tokens", type: "text", size: 7, value: compact((d.tokens || 0) * 10) === "0" ? "" : compact((d.tokens || 0) * 10), placeholder: "default", title: "tokens of the full distillation (e.g. 5M); empty: the server's default steps" });
    return h("div.stack", { style: { marginTop: "10px", gap: "4px" } },
      h("div.row",
        verdict,
        h("span.spacer"),
        h("span.ctl", h("span", "tokens"), tokens),
        h("button.primary", { dataset: { testid: "promote-winner" }, onclick: () => promote(r, tokens.value, box), title: `a full distillation of ${isStudy(wf) ? "the student of lower loss" : "the winner"}, starting from the weights its bake-off distillation saved, with the bake-off's settings` }, isStudy(wf) ? `Promote ${winner} → full distillation` : "Promote winner → full distillation")),
      box);
  }

  async function promote(r, tokensText, box) {
    const { tokens: _t, steps: _s, ...settings } = wf.params?.distill || {};
    const tokens = tokensText.trim() ? parseCount(tokensText) : null;
    if (tokensText.trim() && !(tokens >= 1)) return showError(box, { fields: { tokens: "a count such as 5M" } });
    try {
      const job = await api.post("/jobs", {
        kind: "distill",
        student_id: r.winner_student_id,
        params: { ...settings, ...(tokens ? { tokens } : {}), init_distill_job_id: r.winner_distill_job_id },
      });
      go("job", [job.id]);
    } catch (e) {
      showError(box, e);
    }
  }

  // ---- curves ------------------------------------------------------------------------------
  async function drawCurves() {
    const Plotly = await plotlyReady();
    if (!ctx.alive) return;
    for (const c of charts) {
      const traces = [];
      for (const b of candidates()) {
        const jid = stepOf(b, "distill")?.job_id;
        const store = jid && stores.get(jid);
        const pts = store ? store.points(c.name) : [];
        if (!pts.length) continue;
        const weight = smoothable(c.name) ? view.smooth : 0;
        traces.push(...smoothedTraces(pts, { x: view.x, weight, label: legendName(b), color: colorOf(b), rawOpacity: 0.22 }));
      }
      const layout = baseLayout({ height: 280, width: c.plot.clientWidth || undefined, xaxis: { title: { text: X_FIELDS[view.x][1], font: { size: 10 } }, ...(view.x === "step" ? stepTicks(traces) : {}) }, margin: { l: 52, r: 10, t: 28, b: 36 } });
      if (!traces.length) {
        layout.annotations = [{ text: "waiting for the first distillation step…", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: { color: "#5d6878" } }];
        layout.xaxis.visible = false;
        layout.yaxis.visible = false;
      }
      Plotly.react(c.plot, traces, layout, PLOT_CONFIG);
      c.plot.dataset.traces = String(traces.filter((t) => t.name).length);
    }
  }

  async function loadMetrics() {
    for (const b of candidates()) {
      const jid = stepOf(b, "distill")?.job_id;
      if (!jid || loaded.has(jid)) continue;
      loaded.add(jid);
      if (!stores.has(jid)) stores.set(jid, new SeriesStore());
      try {
        stores.get(jid).addSnapshot(await api.get(`/jobs/${jid}/metrics`));
      } catch (e) {
        console.warn(e);
      }
    }
    schedule();
  }

  async function refresh() {
    try {
      wf = await api.get(`/workflows/${wf.id}`);
    } catch (e) {
      showError(actionErr, e);
      return;
    }
    await loadSpecs();
    if (!ctx.alive) return;
    renderHead();
    renderBranches();
    renderRanking();
    loadMetrics();
  }

  // ---- live: one teacher stream carries every child's metric and status events ----------------
  let pending = null;
  const close = subscribe(`/teachers/${wf.teacher_id}/events`, {
    metric: (ev) => {
      const store = stores.get(ev.job_id);
      if (!store) return; // a job of another workflow, or a distillation not attached yet (refresh will)
      store.addMetricEvent(ev);
      schedule();
    },
    status: (job) => {
      if (job.id !== wf.id && !wf.branches.some((b) => b.steps.some((s) => s.job_id === job.id)) && job.parent_id !== wf.id) return;
      clearTimeout(pending);
      pending = setTimeout(refresh, 200);
    },
  });
  const poll = setInterval(() => {
    if (wf.status === "running" || wf.status === "queued") refresh();
  }, 5000);
  window.addEventListener("resize", schedule);
  ctx.onCleanup(() => {
    close();
    clearInterval(poll);
    clearTimeout(pending);
    redraw.cancel();
    window.removeEventListener("resize", schedule);
  });
  await loadSpecs();
  if (!ctx.alive) return;
  renderHead();
  renderBranches();
  renderRanking();
  await loadMetrics();
}

/** What the validation curves are measured on: each distillation's packed validation blocks (another protocol
 * than the ranking's losses, which are the teacher's evaluation protocol), as the compare page says. */
function valProtocol(wf) {
  const seq = wf.params?.distill?.seq_len;
  return h("div.hint", { style: { marginTop: "4px" }, dataset: { testid: "curves-protocol" }, title: "Each distillation validates on packed blocks of its sequence length from its validation split (its job page names them); the ranking's losses are on the teacher's evaluation protocol." },
    `packed validation blocks${seq ? ` of ${seq} tokens` : ""} from each distillation's validation split — another protocol than the ranking's ${wf.params?.metric || "loss"} `, h("span.protocol-mismatch", "≠"));
}

function distillText(d) {
  if (!d) return "";
  const parts = [d.tokens ? `${compact(d.tokens)} tokens each` : d.steps ? `${d.steps} steps each` : null, d.batch_size ? `batch ${d.batch_size}` : null, d.seq_len ? `seq ${d.seq_len}` : null];
  return parts.filter(Boolean).join(" · ");
}

async function bakeoffList(host, ctx) {
  let list, teachers;
  try {
    [list, teachers] = await Promise.all([api.get("/workflows"), api.get("/teachers")]);
  } catch (err) {
    mount(host, h("div.error-msg", err.message));
    return;
  }
  // Each winner by its shape (its plan's spec), as the bake-off's page names it; its name under it.
  const winners = await Promise.all(list.map(async (w) => {
    const b = w.result?.winner && w.branches?.find((x) => x.name === w.result.winner);
    const plan = b?.plan_id ? await api.get(`/plans/${b.plan_id}`).catch(() => null) : null;
    const label = shapeLabel(plan?.stats?.spec, teachers.find((t) => t.id === w.teacher_id)?.spec);
    const winner = w.result?.winner;
    // The server names a search's candidates by their shape: then their search id goes under it.
    const shown = label && !winner?.startsWith(label) ? label : winner;
    const ref = b?.candidate_id || (shown !== winner ? winner : null);
    return winner ? [h("span", { dataset: { testid: "winner-label" } }, shown), ref ? h("div.faint.mono", ref) : null] : "–";
  }));
  if (!ctx.alive) return;
  mount(host,
    h("div.page-head", h("h1", "Bake-offs"), h("span.sub", "start one from a search: pick candidates on its Pareto front")),
    h("section.panel", list.length
      ? h("table", { dataset: { testid: "bakeoff-list" } },
          h("thead", h("tr", h("th", "bake-off"), h("th", "name"), h("th", "status"), h("th", { style: { width: "30%" } }, "progress"), h("th", "winner"))),
          h("tbody", list.map((w, i) => linkRow(href("bakeoff", [w.id]), {},
            h("td.mono", rowLink(href("bakeoff", [w.id]), `#${w.id}`), h("div.faint", when(w.created_at))),
            h("td", w.name),
            h("td", statusBadge(w.status)),
            h("td", progressBar({ ...w, message: null })), // its per-branch message is its page's table
            h("td", winners[i])))))
      : h("div.empty", "No bake-off yet. ", h("a", { href: href("search") }, "Run a search →"))));
}
