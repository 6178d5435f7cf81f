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

// A study is a bake-off workflow named so: a search's bake-off is a workflow of the teacher too, and the
// wizard must not show another experiment as its study, with that experiment's steps; the bake-off page
// words a study's result as a comparison of two sizes, not a winner.
export const STUDY_NAME = "depth vs width at ";
export function isStudy(wf) {
  return typeof wf?.name === "string" && wf.name.startsWith(STUDY_NAME);
}
