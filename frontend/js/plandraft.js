// The plan being edited, kept in this browser (localStorage) so that leaving the page or reloading never
// loses it (audit 15). A run's new plan is kept under draft.run<run>; the unsaved edits of a saved plan
// under draft.plan<plan>, with the version they were made on, until they are saved or reverted.

const PREFIX = "prunescope.draft.";

/** The storage key of the draft of saved plan `planId`, else of run `runId`'s new plan. */
export function draftKey({ runId, planId = null }) {
  return planId ? `${PREFIX}plan${planId}` : `${PREFIX}run${runId}`;
}

/** {plan, version} kept under `key` (version null for a run's draft), or null when none or unreadable. */
export function readDraft(key) {
  try {
    const stored = JSON.parse(localStorage.getItem(key) || "null");
    if (!stored || typeof stored !== "object") return null;
    // A saved plan's draft is {version, plan}; a run's draft is the plan itself (as it always was).
    return "version" in stored && stored.plan ? { plan: stored.plan, version: stored.version } : { plan: stored, version: null };
  } catch {
    return null; // a corrupt draft is simply ignored
  }
}

/** Keep `plan` under `key`: bare for a run's draft, with the saved `version` it was edited from else. */
export function keepDraft(key, plan, version = null) {
  localStorage.setItem(key, JSON.stringify(version === null ? plan : { version, plan }));
}

export function dropDraft(key) {
  localStorage.removeItem(key);
}
