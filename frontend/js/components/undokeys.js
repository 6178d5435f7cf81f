// Ctrl/Cmd+Z undoes the last plan edit, Ctrl/Cmd+Shift+Z or Ctrl/Cmd+Y redoes it (not while typing in a field).

/** Bind the keys to `plan` (a PlanState); returns the unbinding. */
export function bindUndoKeys(plan) {
  const onKey = (ev) => {
    if (ev.target.closest && ev.target.closest("input, textarea, select")) return;
    const mod = ev.ctrlKey || ev.metaKey;
    if (!mod) return;
    const key = ev.key.toLowerCase();
    if (key === "z" && !ev.shiftKey) {
      ev.preventDefault();
      plan.undo();
    } else if ((key === "z" && ev.shiftKey) || key === "y") {
      ev.preventDefault();
      plan.redo();
    }
  };
  window.addEventListener("keydown", onKey);
  return () => window.removeEventListener("keydown", onKey);
}
