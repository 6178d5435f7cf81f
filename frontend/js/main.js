// Entry point: routes -> views, nav highlighting, API health indicator.

import { api } from "./api.js";
import { route, start } from "./router.js";
import { bakeoffView } from "./views/bakeoff.js";
import { compareView } from "./views/compare.js";
import { explorerView } from "./views/explorer.js";
import { jobView } from "./views/job.js";
import { runsView } from "./views/runs.js";
import { searchView } from "./views/search.js";
import { teachersView } from "./views/teachers.js";

route("", teachersView);
route("teachers", teachersView);
route("explore", explorerView);
route("runs", runsView);
route("job", jobView);
route("compare", compareView);
route("search", searchView);
route("bakeoff", bakeoffView);

const NAV_OF = { "": "teachers", teachers: "teachers", explore: "explore", runs: "runs", job: "runs", compare: "compare", search: "search", bakeoff: "search" };

start(document.getElementById("view"), ({ name }) => {
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === NAV_OF[name]);
  }
});

async function health() {
  const el = document.getElementById("conn-status");
  try {
    const info = await api.get("/health");
    el.textContent = `${info.database} · ${info.broker} · v${info.version}`;
    el.classList.remove("down");
  } catch (err) {
    el.textContent = "API unreachable";
    el.title = err.message;
    el.classList.add("down");
  }
}
health();
setInterval(health, 30000);
