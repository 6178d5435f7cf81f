// Forms that remember their last submitted values (localStorage), like the distillation settings:
// the next student's form starts where the last one left off.

const PREFIX = "prunescope.form.";

/** The values saved under `key` ({} when none or unreadable). */
export function recalled(key) {
  try {
    return JSON.parse(localStorage.getItem(PREFIX + key) || "{}") || {};
  } catch {
    return {};
  }
}

/** Save the named inputs of `form` under `key` (checkboxes as booleans, the rest as typed). */
export function remember(key, form) {
  const values = {};
  for (const el of form.querySelectorAll("[name]")) values[el.name] = el.type === "checkbox" ? el.checked : el.value;
  localStorage.setItem(PREFIX + key, JSON.stringify(values));
}

/** Put the values saved under `key` back into `form`'s inputs of the same names (but `except`). */
export function restore(key, form, except = []) {
  const values = recalled(key);
  for (const el of form.querySelectorAll("[name]")) {
    if (!(el.name in values) || except.includes(el.name)) continue;
    if (el.type === "checkbox") el.checked = !!values[el.name];
    else if (el.tagName === "SELECT" && ![...el.options].some((o) => o.value === String(values[el.name]))) continue;
    else el.value = values[el.name];
  }
  return Object.keys(values).length > 0;
}
