// Hash router: "#/explore/3?plan=5&batch=l2" -> {name: "explore", args: ["3"], query}. The URL says what
// is open, so links are shareable and survive reload; view state changes use replaceState (no re-render).

const routes = new Map();
let current = null; // the live view's context: {alive, cleanups}

export function route(name, render) {
  routes.set(name, render);
}

export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean);
  return { name: parts[0] || "", args: parts.slice(1), query: new URLSearchParams(search) };
}

export function href(name, args = [], query = {}) {
  const path = [name, ...args].filter((p) => p !== undefined && p !== null && p !== "").join("/");
  const entries = Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== "");
  const search = entries.length ? `?${new URLSearchParams(entries)}` : "";
  return `#/${path}${search}`;
}

export function go(name, args, query) {
  location.hash = href(name, args, query);
}

/** Update query keys of the current route without re-rendering the view. */
export function setQuery(updates) {
  const { name, args, query } = parseHash();
  for (const [k, v] of Object.entries(updates)) {
    if (v === undefined || v === null || v === "") query.delete(k);
    else query.set(k, v);
  }
  const url = href(name, args, Object.fromEntries(query));
  history.replaceState(null, "", url);
}

function dispose(ctx) {
  ctx.alive = false;
  for (const fn of ctx.cleanups) {
    try {
      fn();
    } catch (err) {
      console.error(err);
    }
  }
}

/** An address no page answers (a typo, an old bookmark): said, with the way back, instead of showing
 * the start page as if the address were right. */
function unknownPage(host, parsed) {
  const back = Object.assign(document.createElement("a"), { href: "#/", textContent: "Teachers & data" });
  const box = Object.assign(document.createElement("div"), { className: "empty" });
  box.dataset.testid = "unknown-page";
  box.append(`No page at #/${parsed.name}. Go to `, back, ".");
  host.append(box);
}

export function start(host, onNavigate) {
  const render = () => {
    const parsed = parseHash();
    if (current) dispose(current);
    const view = routes.get(parsed.name) || unknownPage;
    host.replaceChildren();
    onNavigate(parsed);
    // Views may be async; ctx.alive tells late callbacks that the user has left the page.
    const ctx = { alive: true, cleanups: [], onCleanup: (fn) => ctx.cleanups.push(fn) };
    current = ctx;
    Promise.resolve(view(host, parsed, ctx)).catch((err) => {
      console.error(err);
      host.append(Object.assign(document.createElement("div"), { className: "error-msg", textContent: String(err.message || err) }));
    });
    window.scrollTo(0, 0);
  };
  window.addEventListener("hashchange", render);
  render();
}
