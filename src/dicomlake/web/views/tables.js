// Tables: the BigQuery datasets and tables of a project with their schemas, and a SQL console
// (BigQuery's jobs.query, GoogleSQL) whose results show as a table a page at a time and as a chart.

import { bigquery, getJSON, postJSON } from "../api.js";
import { chart } from "../chart.js";
import { clear, count, errorBox, h, route } from "../dom.js";
import { STUDIES_PER_MODALITY } from "./analyse.js";
import { table } from "./common.js";

const RESULT_PAGE = 200;
const QUERY_WAIT_MS = 10_000;

// The seeds' example queries (Google's "query and analyse DICOM data in BigQuery"), and a few for
// charts; T stands for the selected table.
const EXAMPLES = [
  ["DICOMweb paths of a patient's instances",
    "SELECT CONCAT('/dicomWeb/studies/', StudyInstanceUID, '/series/', SeriesInstanceUID, '/instances/', SOPInstanceUID) AS DICOMwebPath\nFROM T\nWHERE PatientID = (SELECT MIN(PatientID) FROM T)"],
  ["Latest studies",
    "SELECT MIN(CONCAT(CAST(StudyDate AS STRING), ' ', CAST(StudyTime AS STRING))) AS StudyDateTime, MIN(PatientID) AS PatientID,\n  StudyInstanceUID, COUNT(*) AS InstanceCount\nFROM T AS dicom\nGROUP BY StudyInstanceUID\nORDER BY StudyDateTime DESC\nLIMIT 10"],
  ["Studies per modality (bar)", STUDIES_PER_MODALITY],
  ["Instances per modality (bar)",
    "SELECT Modality, COUNT(*) AS Instances\nFROM T\nGROUP BY Modality\nORDER BY Instances DESC"],
  ["Studies per year (line)",
    "SELECT EXTRACT(YEAR FROM StudyDate) AS Year, COUNT(DISTINCT StudyInstanceUID) AS Studies\nFROM T\nWHERE StudyDate IS NOT NULL\nGROUP BY Year\nORDER BY Year"],
  ["Instance sizes (histogram)",
    "SELECT SOPInstanceUID, BlobStorageSize\nFROM T"],
];

async function all(url, field, signal) {
  const out = [];
  let pageToken = "";
  do {
    const page = await getJSON(`${url}?maxResults=1000${pageToken ? "&pageToken=" + encodeURIComponent(pageToken) : ""}`, { signal });
    out.push(...(page[field] || []));
    pageToken = page.nextPageToken || "";
  } while (pageToken);
  return out;
}

export async function tables(main, params, signal) {
  const project = params.project;
  const base = bigquery(project);
  const datasets = (await all(`${base}/datasets`, "datasets", signal)).map((d) => d.datasetReference.datasetId);
  const dataset = datasets.includes(params.dataset) ? params.dataset : datasets[0];
  const tableList = dataset ? (await all(`${base}/datasets/${encodeURIComponent(dataset)}/tables`, "tables", signal)) : [];
  const tableIds = tableList.map((t) => t.tableReference.tableId);
  const tableId = tableIds.includes(params.table) ? params.table : tableIds[0];
  const info = tableId
    ? await getJSON(`${base}/datasets/${encodeURIComponent(dataset)}/tables/${encodeURIComponent(tableId)}`, { signal })
    : null;
  const go = (changes) => (location.hash = route("tables", { project, dataset, table: tableId, ...changes }));

  const side = h("nav", { class: "bq-tree", "aria-label": "BigQuery datasets" },
    h("h2", {}, `Project ${project}`),
    datasets.length ? null : h("p", { class: "note" }, "No BigQuery datasets in this project. Create one with `dicomlake bq mk`, then export a store to a table."),
    h("ul", {}, datasets.map((d) => h("li", {},
      h("a", { href: route("tables", { project, dataset: d }), class: d === dataset ? "current" : "" }, d),
      d === dataset ? h("ul", {}, tableList.map((t) => {
        const id = t.tableReference.tableId;
        return h("li", {}, h("a", { href: route("tables", { project, dataset: d, table: id }), class: id === tableId ? "current" : "" },
          id, t.type === "VIEW" ? " (view)" : ""));
      })) : null))));

  const schema = info ? h("details", { class: "schema", open: !params.q },
    h("summary", {}, `Schema of ${project}.${dataset}.${tableId}`, info.numRows ? ` — ${count(info.numRows)} rows` : "",
      `, ${countFields(info.schema?.fields || [])} columns`),
    schemaTree(info.schema?.fields || [])) : null;

  const fullName = tableId ? `\`${project}.${dataset}.${tableId}\`` : "`PROJECT.DATASET.TABLE`";
  const sql = h("textarea", { name: "sql", rows: 7, spellcheck: "false", "aria-label": "SQL" },
    params.q || EXAMPLES[0][1].replace(/\bT\b/g, fullName));
  const examples = h("select", { "aria-label": "example queries" },
    h("option", { value: "" }, "Examples…"),
    EXAMPLES.map(([label], i) => h("option", { value: i }, label)));
  examples.addEventListener("change", () => {
    if (examples.value === "") return;
    sql.value = EXAMPLES[Number(examples.value)][1].replace(/\bT\b/g, fullName);
    examples.value = "";
    sql.focus();
  });
  const output = h("div", { class: "results" });
  const runButton = h("button", { type: "submit", class: "primary", title: "Run (Ctrl+Enter)" }, "Run");
  const consoleForm = h("form", { class: "sql", onsubmit: (e) => {
    e.preventDefault();
    // The query goes into the route, so that back and forward and a link bring it again.
    if (params.q === sql.value) run();
    else go({ q: sql.value });
  } }, h("div", { class: "sql-bar" }, h("strong", {}, "SQL (GoogleSQL)"), examples, runButton), sql);
  sql.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) consoleForm.requestSubmit();
  });

  clear(main, h("div", { class: "tables" }, side, h("div", { class: "bq-main" }, schema, consoleForm, output)));

  async function run() {
    runButton.disabled = true;
    clear(output, h("p", { class: "loading" }, "Running…"));
    try {
      const body = { query: sql.value, useLegacySql: false, maxResults: RESULT_PAGE, timeoutMs: QUERY_WAIT_MS };
      if (dataset) body.defaultDataset = { projectId: project, datasetId: dataset };
      let response = await postJSON(`${base}/queries`, body, { signal });
      const job = response.jobReference;
      while (!response.jobComplete) {
        response = await getJSON(`${base}/queries/${encodeURIComponent(job.jobId)}?location=${encodeURIComponent(job.location || "")}&maxResults=${RESULT_PAGE}&timeoutMs=${QUERY_WAIT_MS}`, { signal });
      }
      showResults(output, response, (start) =>
        getJSON(`${base}/queries/${encodeURIComponent(job.jobId)}?location=${encodeURIComponent(job.location || "")}&maxResults=${RESULT_PAGE}&startIndex=${start}`, { signal }));
    } catch (error) {
      if (!signal.aborted) clear(output, errorBox(error));
    } finally {
      runButton.disabled = false;
    }
  }
  if (params.q) run();
}

function countFields(fields) {
  return fields.reduce((n, f) => n + 1 + (f.fields ? countFields(f.fields) : 0), 0);
}

function schemaTree(fields) {
  return h("ul", { class: "tree" }, fields.map((f) => {
    const label = [h("span", { class: "kw" }, f.name), " ", h("span", { class: "vr" }, `${f.type}${f.mode && f.mode !== "NULLABLE" ? " " + f.mode : ""}`)];
    if (!f.fields) return h("li", {}, label);
    return h("li", {}, h("details", {}, h("summary", {}, label, ` (${f.fields.length})`), schemaTree(f.fields)));
  }));
}

// A BigQuery cell as text: records and repeated fields as compact JSON-like text.
function cellText(cell, field) {
  const v = cell ? cell.v : null;
  if (v === null || v === undefined) return null;
  if (field.mode === "REPEATED") return `[${v.map((item) => cellText(item, { ...field, mode: "NULLABLE" })).join(", ")}]`;
  if (field.type === "RECORD" || field.type === "STRUCT") {
    const parts = v.f.map((c, i) => [field.fields[i].name, cellText(c, field.fields[i])]).filter(([, x]) => x !== null);
    return `{${parts.map(([k, x]) => `${k}: ${x}`).join(", ")}}`;
  }
  if (field.type === "TIMESTAMP" && /^\d+(\.\d+)?(E\d+)?$/.test(v)) return new Date(Number(v) * 1000).toISOString();
  return String(v);
}

function showResults(output, response, page) {
  const fields = response.schema?.fields || [];
  const total = Number(response.totalRows || 0);
  if (!fields.length) {
    clear(output, h("p", { class: "note" },
      response.numDmlAffectedRows ? `${count(response.numDmlAffectedRows)} rows affected.` : "The statement ran and returned no rows."));
    return;
  }
  const grid = h("div", { class: "grid-box" });
  const pager = h("div", { class: "pager" });
  const chartBox = h("div", { class: "chart-box" });
  const numeric = fields.map((f) => ["INTEGER", "INT64", "FLOAT", "FLOAT64", "NUMERIC", "BIGNUMERIC"].includes(f.type) && f.mode !== "REPEATED");
  const firstNumber = Math.max(0, numeric.indexOf(true));
  const kind = h("select", { "aria-label": "chart type" }, ["bar", "line", "histogram"].map((k) => h("option", {}, k)));
  const xSelect = h("select", { "aria-label": "chart x" }, fields.map((f, i) => h("option", { value: i, selected: i === 0 }, f.name)));
  const ySelect = h("select", { "aria-label": "chart y" }, fields.map((f, i) => h("option", { value: i, selected: i === firstNumber }, f.name)));
  let rows = [];
  let start = 0;

  function drawChart() {
    const xi = Number(xSelect.value);
    const yi = Number(ySelect.value);
    xSelect.parentElement.hidden = kind.value === "histogram";
    const title = kind.value === "histogram" ? `Histogram of ${fields[yi].name}` : `${fields[yi].name} by ${fields[xi].name}`;
    const drawn = chart(kind.value, rows, xi, yi, title);
    clear(chartBox, drawn || h("p", { class: "note" }, `No numbers in column ${fields[yi].name} to draw.`));
  }
  for (const el of [kind, xSelect, ySelect]) el.addEventListener("change", drawChart);

  function show(resp) {
    rows = (resp.rows || []).map((r) => r.f.map((c, i) => cellText(c, fields[i])));
    const body = rows.map((r) => h("tr", {}, r.map((v, i) => h("td", { class: numeric[i] ? "num" : "" }, v === null ? h("span", { class: "null" }, "NULL") : v))));
    clear(grid, table(fields.map((f) => f.name), body, { class: "result" }));
    clear(pager,
      h("button", { type: "button", disabled: start === 0, onclick: () => load(Math.max(0, start - RESULT_PAGE)) }, "‹ Previous"),
      h("span", { class: "shown" }, total ? `Rows ${count(start + 1)}–${count(start + rows.length)} of ${count(total)}` : "No rows"),
      h("button", { type: "button", disabled: start + rows.length >= total, onclick: () => load(start + RESULT_PAGE) }, "Next ›"));
    drawChart();
  }

  async function load(at) {
    try {
      const resp = await page(at);
      start = at;
      show(resp);
    } catch (error) {
      clear(pager, errorBox(error));
    }
  }

  clear(output,
    h("div", { class: "result-table" }, grid, pager),
    h("div", { class: "chart-panel" },
      h("div", { class: "chart-bar" }, h("strong", {}, "Chart of this page"), kind,
        h("label", {}, " x ", xSelect), h("label", {}, " y ", ySelect)),
      chartBox));
  show(response);
}
