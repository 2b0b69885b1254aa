// What several views share: the lists of datasets and stores, and the bar that chooses one.

import { datasetPath, getJSON, lastSegment, locationPath } from "../api.js";
import { remembered } from "../context.js";
import { h, route } from "../dom.js";

// Every page of a list method (datasets and stores are few, so all of them).
async function all(url, field, signal) {
  const names = [];
  let pageToken = "";
  do {
    const sep = url.includes("?") ? "&" : "?";
    const page = await getJSON(`${url}${sep}pageSize=1000${pageToken ? "&pageToken=" + encodeURIComponent(pageToken) : ""}`, { signal });
    names.push(...(page[field] || []).map((item) => lastSegment(item.name)));
    pageToken = page.nextPageToken || "";
  } while (pageToken);
  return names;
}

export function listDatasets(ctx, signal) {
  return all(`${locationPath(ctx.project, ctx.location)}/datasets`, "datasets", signal);
}

export function listStores(ctx, signal) {
  return all(`${datasetPath(ctx)}/dicomStores`, "dicomStores", signal);
}

// The dataset (and store) a view works on: the route's, else the last one used, else the first;
// and a bar of <select>s that goes to `path` with another choice. {bar, dataset, store, datasets, stores}
export async function chooseStore(path, params, signal, { withStore = true } = {}) {
  const ctx = { project: params.project, location: params.location };
  const datasets = await listDatasets(ctx, signal);
  const where = `projects/${params.project}/locations/${params.location}`;
  if (!datasets.length) {
    const bar = h("p", { class: "note" }, `No datasets in ${where}. `, h("a", { href: route("", ctx) }, "Create one"), ".");
    return { bar, dataset: "", store: "", datasets, stores: [] };
  }
  let dataset = remembered("dataset", params);
  if (!datasets.includes(dataset)) dataset = datasets[0];
  let stores = [];
  let store = "";
  if (withStore) {
    stores = await listStores({ ...ctx, dataset }, signal);
    store = remembered("store", { ...params, dataset });
    if (!stores.includes(store)) store = stores[0] || "";
  }
  const go = (changes) => {
    location.hash = route(path, { ...ctx, dataset, store: withStore ? store : undefined, ...changes });
  };
  const select = (label, value, options, onchange) =>
    h("label", {}, label, " ",
      h("select", { name: label, onchange }, options.map((o) => h("option", { value: o, selected: o === value }, o))));
  const bar = h("div", { class: "picker" },
    select("dataset", dataset, datasets, (e) => go({ dataset: e.target.value, store: undefined })),
    withStore && stores.length ? select("store", store, stores, (e) => go({ store: e.target.value })) : null,
    withStore && !stores.length ? h("span", { class: "note" }, `No DICOM stores in dataset ${dataset}.`) : null,
  );
  return { bar, dataset, store, datasets, stores };
}

// A table: head is a list of labels, rows lists of cells (text or nodes).
export function table(head, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, head.map((label) => h("th", {}, label)))),
    h("tbody", {}, rows));
}
