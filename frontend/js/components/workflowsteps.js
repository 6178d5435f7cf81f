// A workflow's steps as the study panel (views/compare.js) and the bake-off page (views/bakeoff.js) both
// name them, and which actions a workflow offers.

/** A step's words ("perplexity as cut"), not its id ("evaluate_pruned"). */
export const STEP_LABELS = { cut: "cut", evaluate_pruned: "perplexity as cut", distill: "distill", evaluate: "perplexity distilled", benchmark: "speed" };

/** The label of step `name` in a branch; the teacher's branch only measures, so its evaluate is "perplexity". */
export function stepLabel(name, teacherBranch) {
  return teacherBranch && name === "evaluate" ? "perplexity" : STEP_LABELS[name] || name;
}

/** A failed or cancelled workflow can run its unfinished steps again. */
export function retriable(wf) {
  return wf.status === "failed" || wf.status === "cancelled";
}
