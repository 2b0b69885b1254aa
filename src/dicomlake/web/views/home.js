// Stores: the datasets of a location and their DICOM stores with counts and sizes
// (dicomStores.getDICOMStoreMetrics), and forms to create a dataset or a store.

import { datasetPath, getJSON, locationPath, postJSON, request, storePath } from "../api.js";
import { bytes, clear, count, errorBox, h, route } from "../dom.js";
import { listDatasets, listStores, table } from "./common.js";

export async function home(main, params, signal) {
  const ctx = { project: params.project, location: params.location };
  const datasets = await listDatasets(ctx, signal);
  const sections = datasets.map((dataset) => datasetSection({ ...ctx, dataset }, signal));
  clear(main,
    h("h1", {}, `Datasets in projects/${ctx.project}/locations/${ctx.location}`),
    datasets.length ? null : quickStart(ctx),
    sections,
    createForms(ctx, datasets),
  );
}

function datasetSection(ctx, signal) {
  const body = h("div", {}, h("p", { class: "loading" }, "Loading stores…"));
  const section = h("section", { class: "dataset", dataset: { dataset: ctx.dataset } },
    h("h2", {}, "Dataset ", h("code", {}, ctx.dataset), " ",
      h("a", { class: "small", href: route("operations", ctx) }, "operations")),
    body);
  fillStores(body, ctx, signal).catch((error) => {
    if (!signal.aborted) clear(body, errorBox(error));
  });
  return section;
}

async function fillStores(body, ctx, signal) {
  const stores = await listStores(ctx, signal);
  if (!stores.length) {
    clear(body, h("p", { class: "note" }, "No DICOM stores in this dataset."));
    return;
  }
  const rows = stores.map((store) => {
    const cells = ["studies", "series", "instances", "blob", "structured"].map((k) => h("td", { class: `num ${k}` }, "…"));
    const row = h("tr", { dataset: { store } },
      h("td", {}, h("a", { href: route("studies", { ...ctx, store }) }, store)), cells,
      h("td", {}, h("a", { href: route("studies", { ...ctx, store }) }, "browse")));
    getJSON(`${storePath({ ...ctx, store })}:getDICOMStoreMetrics`, { signal })
      .then((m) => {
        const values = [count(m.studyCount), count(m.seriesCount), count(m.instanceCount),
          bytes(m.blobStorageSizeBytes), bytes(m.structuredStorageSizeBytes)];
        values.forEach((v, i) => (cells[i].textContent = v));
      })
      .catch((error) => {
        if (signal.aborted) return;
        cells.forEach((c) => (c.textContent = "?"));
        row.title = String(error);
      });
    return row;
  });
  clear(body, table(["DICOM store", "Studies", "Series", "Instances", "Blob storage", "Structured storage", ""], rows,
    { class: "stores" }));
}

function createForms(ctx, datasets) {
  const message = h("div", {});
  const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
  const submit = (action) => async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      await action(form);
      reload();
    } catch (error) {
      clear(message, errorBox(error));
    }
  };
  const createDataset = h("form", {
    class: "inline",
    onsubmit: submit((form) =>
      request(`${locationPath(ctx.project, ctx.location)}/datasets?datasetId=${encodeURIComponent(form.elements.newId.value.trim())}`, { method: "POST" })),
  }, h("label", {}, "New dataset ", h("input", { name: "newId", required: true, pattern: "[A-Za-z0-9_.\\-]{1,256}", size: 14 })),
  h("button", { type: "submit" }, "Create dataset"));
  const createStore = datasets.length ? h("form", {
    class: "inline",
    onsubmit: submit((form) =>
      postJSON(`${datasetPath({ ...ctx, dataset: form.elements.inDataset.value })}/dicomStores?dicomStoreId=${encodeURIComponent(form.elements.newId.value.trim())}`, {})),
  }, h("label", {}, "New DICOM store ", h("input", { name: "newId", required: true, pattern: "[A-Za-z0-9_.\\-]{1,256}", size: 14 })),
  h("label", {}, " in ", h("select", { name: "inDataset" }, datasets.map((d) => h("option", {}, d)))),
  h("button", { type: "submit" }, "Create store")) : null;
  return h("section", { class: "create" }, h("h2", {}, "Create"), createDataset, createStore, message);
}

// A new server has nothing: one click makes a dataset and a store and opens it, ready for images.
function quickStart(ctx) {
  const message = h("div", {});
  const start = async () => {
    try {
      await request(`${locationPath(ctx.project, ctx.location)}/datasets?datasetId=images`, { method: "POST", allow: [409] });
      await request(`${datasetPath({ ...ctx, dataset: "images" })}/dicomStores?dicomStoreId=images`, { method: "POST", json: {}, allow: [409] });
      location.hash = route("studies", { ...ctx, dataset: "images", store: "images" });
    } catch (error) {
      clear(message, errorBox(error));
    }
  };
  return h("div", { class: "quick-start" },
    h("p", {}, "No datasets here yet. Images live in a DICOM store, and stores in a dataset."),
    h("p", {}, h("button", { type: "button", class: "primary", onclick: start }, "Create dataset “images” with a DICOM store “images”"),
      " and add images to it, or make your own below, or choose another project and location above."),
    message);
}
