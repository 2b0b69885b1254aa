// "Query in SQL": the one step between a store and its table for someone who has not read the docs.
// It makes a BigQuery dataset named after the store's dataset (if there is none), exports the store
// to a table named after the store (WRITE_TRUNCATE: the table then holds exactly what the store
// holds), waits for the export and opens the SQL console on a count of studies per modality.

import { bigquery, getJSON, postJSON, request, storePath } from "../api.js";
import { clear, count, errorBox, h, route } from "../dom.js";

const POLL_MS = 500;

export const STUDIES_PER_MODALITY =
  "SELECT Modality, COUNT(DISTINCT StudyInstanceUID) AS Studies\nFROM T\nGROUP BY Modality\nORDER BY Studies DESC";

// BigQuery names allow letters, digits and underscores only.
function bigqueryName(text) {
  return String(text).replace(/[^A-Za-z0-9_]/g, "_");
}

export function analyseButton(ctx) {
  const status = h("span", { class: "analyse-status", "aria-live": "polite" });
  const button = h("button", {
    type: "button",
    title: "Export this store to a BigQuery table and open the SQL console on it",
    onclick: async () => {
      button.disabled = true;
      try {
        await analyse(ctx, (text) => clear(status, text));
      } catch (error) {
        clear(status, errorBox(error));
      } finally {
        button.disabled = false;
      }
    },
  }, "Query in SQL");
  return h("span", { class: "analyse" }, button, status);
}

async function analyse(ctx, say) {
  const dataset = bigqueryName(ctx.dataset);
  const table = bigqueryName(ctx.store);
  say(`Creating BigQuery dataset ${dataset}…`);
  await request(`${bigquery(ctx.project)}/datasets`, {
    method: "POST",
    json: { datasetReference: { projectId: ctx.project, datasetId: dataset } },
    allow: [409], // it is there already
  });
  say(`Exporting to ${ctx.project}.${dataset}.${table}…`);
  let operation = await postJSON(`${storePath(ctx)}:export`, {
    bigqueryDestination: { tableUri: `bq://${ctx.project}.${dataset}.${table}`, writeDisposition: "WRITE_TRUNCATE" },
  });
  while (!operation.done) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    operation = await getJSON(`/v1/${operation.name}`);
    const c = operation.metadata?.counter || {};
    say(`Exporting to ${ctx.project}.${dataset}.${table}: ${count(c.success)} instances written, ${count(c.pending)} to go…`);
  }
  if (operation.error) throw new Error(`the export failed: ${operation.error.message}`);
  const sql = STUDIES_PER_MODALITY.replace(/\bT\b/g, `\`${ctx.project}.${dataset}.${table}\``);
  location.hash = route("tables", { project: ctx.project, dataset, table, q: sql });
}
