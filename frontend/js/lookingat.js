// The teacher the user last looked at (its page on Teachers & data, an importance run of it in the
// explorer, ticked in Compare), kept in this browser: a form opened without a teacher in its URL starts
// from it, not from the newest one (audit 7: the depth-vs-width study offered the newest teacher).

const KEY = "prunescope.teacher";

export function lookAtTeacher(id) {
  if (id) localStorage.setItem(KEY, String(id));
}

/** The id of the teacher last looked at, or null. */
export function teacherLookedAt() {
  return Number(localStorage.getItem(KEY)) || null;
}
