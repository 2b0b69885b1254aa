// Operations: the imports, exports and deletes of a dataset, running ones first, with their counters
// polled while they run; each one's log entries (the failures of single files or instances); forms
// that start an import from a bucket or an export to a bucket or a table.

import { datasetPath, getJSON, lastSegment, postJSON, request, storePath } from "../api.js";
import { clear, count, errorBox, h, timeText } from "../dom.js";
import { chooseStore, table } from "./common.js";

const POLL_RUNNING_MS = 1000;
const POLL_IDLE_MS = 5000;
const FINISHED_SHOWN = 50;
const METHODS = {
  ImportDicomData: "Import",
  ExportDicomData: "Export to bucket",
  ExportDicomData_bq: "Export to table",
};

function methodLabel(operation) {
  const name = String(operation.metadata?.apiMethodName || "").split(".").pop();
  return METHODS[name] || name || "?";
}

// Every page of a filtered operations.list (a dataset's operations, newest last).
async function listAll(url, filter, signal) {
  const out = [];
  let pageToken = "";
  do {
    const q = new URLSearchParams({ filter, pageSize: "1000" });
    if (pageToken) q.set("pageToken", pageToken);
    const page = await getJSON(`${url}?${q}`, { signal });
    out.push(...(page.operations || []));
    pageToken = page.nextPageToken || "";
  } while (pageToken && out.length < 10_000);
  return out;
}

function stateOf(operation) {
  if (!operation.done) return operation.metadata?.cancelRequested ? "cancelling" : "running";
  if (operation.error) return operation.error.code === 1 ? "cancelled" : "failed";
  return "done";
}

function progress(operation) {
  const c = operation.metadata?.counter || {};
  const success = Number(c.success || 0);
  const failure = Number(c.failure || 0);
  const pending = Number(c.pending || 0);
  const total = success + failure + pending;
  const bar = h("div", { class: "progress", title: `${success} succeeded, ${failure} failed, ${pending} pending` },
    h("div", { class: "ok", style: `width:${total ? (100 * success) / total : operation.done ? 100 : 0}%` }),
    h("div", { class: "bad", style: `width:${total ? (100 * failure) / total : 0}%` }));
  return [bar, h("span", { class: "counts" }, `${count(success)} ok · ${count(failure)} failed · ${count(pending)} pending`)];
}

function duration(operation) {
  const start = Date.parse(operation.metadata?.createTime);
  const end = operation.metadata?.endTime ? Date.parse(operation.metadata.endTime) : Date.now();
  if (!Number.isFinite(start)) return "";
  const s = Math.max(0, (end - start) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export async function operations(main, params, signal) {
  const choice = await chooseStore("operations", params, signal, { withStore: false });
  if (!choice.dataset) {
    clear(main, h("h1", {}, "Operations"), choice.bar);
    return;
  }
  const ctx = { project: params.project, location: params.location, dataset: choice.dataset };
  const url = `${datasetPath(ctx)}/operations`;
  const running = h("div", { class: "running" });
  const finished = h("div", { class: "finished" });
  const message = h("div", {});
  const opened = new Set(); // operations whose details are shown; they stay open across polls
  const finishedLogs = new Map(); // the log entries of a finished operation no longer change
  const stores = await listStoresOf(ctx, signal);
  clear(main,
    h("h1", {}, "Operations"),
    choice.bar,
    startForms(ctx, stores, message, () => refresh(true)),
    message,
    h("h2", {}, "Running"), running,
    h("h2", {}, "Finished"), finished);

  // The finished list is read again when the running set changes, else at the idle pace.
  let timer = null;
  let liveIds = null;
  let finishedAt = 0;
  async function refresh(force = false) {
    clearTimeout(timer);
    try {
      const live = await listAll(url, "done=false", signal);
      const ids = live.map((o) => o.name).join(" ");
      if (force || ids !== liveIds || Date.now() - finishedAt >= POLL_IDLE_MS) {
        const done = await listAll(url, "done=true", signal);
        finishedAt = Date.now();
        const newest = done.reverse().slice(0, FINISHED_SHOWN);
        clear(finished,
          newest.length ? operationsTable(newest, { opened, finishedLogs, signal, refresh }) : h("p", { class: "note" }, "No finished operations."),
          done.length > FINISHED_SHOWN ? h("p", { class: "note" }, `The newest ${FINISHED_SHOWN} of ${count(done.length)}.`) : null);
      }
      liveIds = ids;
      clear(running, live.length ? operationsTable(live, { opened, finishedLogs, signal, refresh }) : h("p", { class: "note" }, "Nothing running."));
      timer = setTimeout(() => refresh(), live.length ? POLL_RUNNING_MS : POLL_IDLE_MS);
    } catch (error) {
      if (signal.aborted) return;
      clear(message, errorBox(error));
      timer = setTimeout(() => refresh(), POLL_IDLE_MS);
    }
  }
  await refresh();
  return () => clearTimeout(timer);
}

async function listStoresOf(ctx, signal) {
  const page = await getJSON(`${datasetPath(ctx)}/dicomStores?pageSize=1000`, { signal });
  return (page.dicomStores || []).map((s) => lastSegment(s.name));
}

function operationsTable(list, view) {
  const { opened, refresh } = view;
  const rows = [];
  for (const operation of list) {
    const id = lastSegment(operation.name);
    const state = stateOf(operation);
    const toggle = h("button", { type: "button", class: "quiet", "aria-expanded": opened.has(id) }, opened.has(id) ? "▾" : "▸");
    const cancel = operation.done ? null : h("button", {
      type: "button",
      class: "quiet",
      disabled: Boolean(operation.metadata?.cancelRequested),
      onclick: async () => {
        await request(`/v1/${operation.name}:cancel`, { method: "POST" }).catch((e) => alert(String(e)));
        refresh(true);
      },
    }, "Cancel");
    const row = h("tr", { class: `op ${state}`, dataset: { operation: id, state } },
      h("td", {}, toggle, " ", id),
      h("td", {}, methodLabel(operation)),
      h("td", {}, h("span", { class: `badge ${state}` }, state)),
      h("td", { class: "progress-cell" }, progress(operation)),
      h("td", { class: "nowrap" }, timeText(operation.metadata?.createTime)),
      h("td", { class: "nowrap" }, duration(operation)),
      h("td", {}, cancel));
    rows.push(row);
    if (opened.has(id)) rows.push(details(operation, view));
    toggle.addEventListener("click", () => {
      if (opened.has(id)) opened.delete(id);
      else opened.add(id);
      refresh(true);
    });
  }
  return table(["Operation", "Method", "State", "Progress", "Started", "Duration", ""], rows, { class: "operations" });
}

// The operation's outcome and its log entries.
function details(operation, { finishedLogs, signal }) {
  const logs = h("div", { class: "logs" }, h("p", { class: "loading" }, "Loading log entries…"));
  const logsUrl = operation.metadata?.logsUrl;
  if (logsUrl && logsUrl.startsWith("/")) {
    const entries = finishedLogs.get(operation.name) || getJSON(logsUrl, { signal }).then((body) => body.entries || []);
    if (operation.done) finishedLogs.set(operation.name, entries);
    entries.then((list) => clear(logs, logTable(list)), (error) => {
      finishedLogs.delete(operation.name);
      if (!signal.aborted) clear(logs, errorBox(error));
    });
  } else {
    clear(logs, h("p", { class: "note" }, "No log URL."));
  }
  const outcome = operation.error ? errorBox(`${operation.error.code}: ${operation.error.message}`) : null;
  return h("tr", { class: "details" }, h("td", { colspan: 7 },
    h("div", { class: "small" }, operation.name),
    outcome,
    h("h3", {}, "Log entries"),
    logs));
}

function logTable(entries) {
  if (!entries.length) return h("p", { class: "note" }, "No log entries: no unit failed.");
  const rows = entries.map((e) => {
    const payload = e.jsonPayload || {};
    return h("tr", {},
      h("td", { class: "nowrap" }, timeText(e.timestamp)),
      h("td", {}, e.severity || ""),
      h("td", { class: "wrap" }, payload.source || payload.resourceName || ""),
      h("td", { class: "wrap" }, payload.error ? `${payload.error.code}: ${payload.error.message}` : ""));
  });
  return table(["Time", "Severity", "File or resource", "Error"], rows, { class: "log-entries" });
}

function startForms(ctx, stores, message, refresh) {
  if (!stores.length) return h("p", { class: "note" }, "This dataset has no DICOM store to import into or export from.");
  const storeSelect = () => h("select", { name: "store" }, stores.map((s) => h("option", {}, s)));
  const start = (bodyOf, verb) => async (event) => {
    event.preventDefault();
    const form = event.target;
    clear(message);
    try {
      await postJSON(`${storePath({ ...ctx, store: form.elements.store.value })}:${verb}`, bodyOf(form.elements));
      refresh();
    } catch (error) {
      clear(message, errorBox(error));
    }
  };
  const importForm = h("form", { class: "inline", "aria-label": "import",
    onsubmit: start((f) => ({ gcsSource: { uri: f.uri.value.trim() } }), "import") },
  h("strong", {}, "Import"), " into ", storeSelect(), " from ",
  h("input", { name: "uri", required: true, size: 36, placeholder: "gs://BUCKET/DIR/**.dcm", "aria-label": "source URI" }),
  h("button", { type: "submit", class: "primary" }, "Start import"));
  const exportForm = h("form", { class: "inline", "aria-label": "export",
    onsubmit: start((f) => {
      const to = f.destination.value.trim();
      if (to.startsWith("bq://")) return { bigqueryDestination: { tableUri: to, writeDisposition: f.disposition.value } };
      const destination = { uriPrefix: to };
      if (f.mime.value) destination.mimeType = f.mime.value;
      return { gcsDestination: destination };
    }, "export") },
  h("strong", {}, "Export"), " from ", storeSelect(), " to ",
  h("input", { name: "destination", required: true, size: 36, placeholder: "gs://BUCKET/DIR or bq://PROJECT.DATASET.TABLE", "aria-label": "destination" }),
  h("label", { title: "For a bucket: how each instance is written" }, " as ", h("select", { name: "mime" },
    [["", "DICOM as stored"], ["application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "DICOM, Explicit VR LE"], ["image/png", "PNG"], ["image/jpeg", "JPEG"]]
      .map(([v, label]) => h("option", { value: v }, label)))),
  h("label", { title: "For a table: what to do when it holds rows" }, " table ", h("select", { name: "disposition" },
    ["WRITE_EMPTY", "WRITE_APPEND", "WRITE_TRUNCATE"].map((v) => h("option", {}, v)))),
  h("button", { type: "submit", class: "primary" }, "Start export"));
  return h("section", { class: "start" }, importForm, exportForm);
}
