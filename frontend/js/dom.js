// Tiny DOM helpers: element creation without a framework.

/** h("div.panel#id", {onclick, class, style, ...}, ...children) -> HTMLElement */
export function h(tag, attrs, ...children) {
  const [, name, rest] = tag.match(/^([a-z0-9-]+)?(.*)$/i);
  const el = document.createElement(name || "div");
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className += ` ${value}`;
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace all children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A short message in the top bar (the newest replaces any still shown: the bar holds one line). */
export function toast(text, kind = "") {
  const host = document.getElementById("toast-host");
  const el = h(`div.toast${kind ? `.${kind}` : ""}`, { title: text, dataset: { testid: "toast" } }, text);
  host.replaceChildren(el);
  setTimeout(() => el.remove(), kind === "err" ? 7000 : 3500);
}

/** A segmented control: options [[value, label]], calls onChange(value). */
export function segmented(options, value, onChange, attrs = {}) {
  const el = h("div.seg", { role: "group", ...attrs });
  const render = (current) => {
    el.replaceChildren(
      ...options.map(([v, label]) =>
        h("button", {
          class: v === current ? "on" : "",
          "aria-pressed": String(v === current),
          dataset: { value: v },
          onclick: () => {
            render(v);
            onChange(v);
          },
        }, label),
      ),
    );
  };
  render(value);
  el.setValue = render;
  return el;
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}
