// The web UI's entry point: hash routes (#/view?param=...) so that back, forward and links work, the
// header (views, project and location, token), and the view of the current route.
//
// Each view is `async (main, params, signal) => cleanup?`: it fills `main` from the APIs, stops its
// requests when `signal` aborts (the route changed), and may return a function that undoes what it
// set up outside `main` (timers, key listeners).

import { askToken, setToken, token } from "./api.js";
import { parse, remembered } from "./context.js";
import { clear, errorBox, h, route } from "./dom.js";
import { home } from "./views/home.js";
import { operations } from "./views/operations.js";
import { study, studies } from "./views/studies.js";
import { tables } from "./views/tables.js";
import { viewer } from "./views/viewer.js";

const VIEWS = { "": home, studies, study, view: viewer, operations, tables };
let current = { abort: null, cleanup: null };

function header(path, params) {
  const ctx = { project: params.project, location: params.location };
  const dataset = remembered("dataset", params);
  const store = remembered("store", { ...params, dataset });
  const links = [
    ["", "Stores", ctx],
    ["studies", "Studies", { ...ctx, dataset, store }],
    ["operations", "Operations", { ...ctx, dataset }],
    ["tables", "Tables", { project: params.project }],
  ];
  const active = path === "study" || path === "view" ? "studies" : path;
  clear(
    document.getElementById("nav"),
    links.map(([p, label, q]) => h("a", { href: route(p, q), "aria-current": p === active ? "page" : null }, label)),
  );
  const form = document.getElementById("context");
  form.project.value = params.project;
  form.location.value = params.location;
  document.getElementById("token-button").textContent = token() ? "Token ✓" : "Token";
}

async function render() {
  if (current.abort) current.abort.abort();
  if (current.cleanup) current.cleanup();
  const abort = new AbortController();
  current = { abort, cleanup: null };
  const { path, params } = parse();
  header(path, params);
  const main = document.getElementById("main");
  const view = VIEWS[path];
  main.className = `view-${path || "home"}`;
  if (!view) {
    clear(main, errorBox(`No such page: #/${path}`));
    return;
  }
  clear(main, h("p", { class: "loading" }, "Loading…"));
  try {
    const cleanup = await view(main, params, abort.signal);
    if (abort.signal.aborted) cleanup && cleanup();
    else current.cleanup = cleanup || null;
  } catch (error) {
    if (error.name === "AbortError" || abort.signal.aborted) return;
    clear(main, errorBox(error));
    console.error(error);
  }
}

document.getElementById("context").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  location.hash = route("", { project: form.project.value.trim(), location: form.location.value.trim() });
});

document.getElementById("token-button").addEventListener("click", async () => {
  if (token() && confirm("Forget the access token of this tab?")) {
    setToken("");
  } else if (!token()) {
    try {
      await askToken(false);
    } catch {
      return; // cancelled
    }
  }
  render();
});

document.addEventListener("tokenchange", () => {
  document.getElementById("token-button").textContent = token() ? "Token ✓" : "Token";
});

window.addEventListener("hashchange", render);
render();
