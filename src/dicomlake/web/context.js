// Where the views are: project and location (from the route, else the last ones used), and the
// dataset and store last seen in a location, so that links and the header stay in place.

const DEFAULTS = { project: "demo", location: "local" };

// The route's parameters; project and location filled in when the route leaves them out.
export function parse() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const params = Object.fromEntries(new URLSearchParams(query || ""));
  for (const key of ["project", "location"]) {
    if (params[key]) localStorage.setItem(`dicomlake.${key}`, params[key]);
    else params[key] = localStorage.getItem(`dicomlake.${key}`) || DEFAULTS[key];
  }
  if (params.dataset) localStorage.setItem(memoryKey("dataset", params), params.dataset);
  if (params.dataset && params.store) localStorage.setItem(memoryKey("store", params), params.store);
  return { path: path || "", params };
}

function memoryKey(key, params) {
  const scope = `${params.project}/${params.location}`;
  return key === "dataset" ? `dicomlake.dataset:${scope}` : `dicomlake.store:${scope}/${params.dataset}`;
}

export function remembered(key, params) {
  return params[key] || localStorage.getItem(memoryKey(key, params)) || "";
}

