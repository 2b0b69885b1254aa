// Studies: QIDO-RS search a page at a time (limit and offset, so a store of 100,000 studies answers
// as fast as one of ten), and a study's series with a thumbnail of each one's middle instance.

import { dicomweb, getJSON, request, storePath } from "../api.js";
import { TAG, first, number, text } from "../dicom.js";
import { clear, count, errorBox, h, route } from "../dom.js";
import { analyseButton } from "./analyse.js";
import { chooseStore, table } from "./common.js";
import { uploadPanel } from "./upload.js";

export const PAGE_SIZE = 25;
const STUDY_FIELDS = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
  .map((k) => `includefield=${TAG[k]}`).join("&");
const MODALITIES = ["", "CT", "MR", "CR", "DX", "US", "MG", "PT", "NM", "XA", "RF", "OT", "SM", "SEG", "SR", "RTDOSE", "RTPLAN", "RTSTRUCT", "ECG"];

// QIDO parameters of the search form's fields.
function searchParams(params) {
  const q = new URLSearchParams();
  if (params.PatientName) {
    // Names match from the start unless the user wrote a wildcard.
    const name = params.PatientName;
    q.set("PatientName", /[*?]/.test(name) ? name : `${name}*`);
  }
  if (params.PatientID) q.set("PatientID", params.PatientID);
  if (params.from || params.to) q.set("StudyDate", `${(params.from || "").replaceAll("-", "")}-${(params.to || "").replaceAll("-", "")}`);
  if (params.modality) q.set("ModalitiesInStudy", params.modality);
  return q;
}

export async function studies(main, params, signal) {
  const choice = await chooseStore("studies", params, signal);
  if (!choice.store) {
    clear(main, h("h1", {}, "Studies"), choice.bar);
    return;
  }
  const ctx = { project: params.project, location: params.location, dataset: choice.dataset, store: choice.store };
  const offset = Math.max(0, parseInt(params.offset || "0", 10) || 0);
  const filters = searchParams(params);
  const url = `${dicomweb(ctx)}/studies?limit=${PAGE_SIZE}&offset=${offset}&${STUDY_FIELDS}${filters.size ? "&" + filters : ""}`;
  const [found, metrics] = await Promise.all([
    getJSON(url, { accept: "application/dicom+json", signal }),
    // Without filters the store's study count is the total; with them QIDO does not say.
    filters.size ? null : getJSON(`${storePath(ctx)}:getDICOMStoreMetrics`, { signal }).catch(() => null),
  ]);
  const results = found || [];
  const total = metrics ? Number(metrics.studyCount) : null;
  const go = (changes) => (location.hash = route("studies", { ...ctx, ...pick(params), ...changes }));
  const rows = results.map((s) => {
    const uid = first(s, TAG.StudyInstanceUID);
    const link = route("study", { ...ctx, study: uid });
    return h("tr", { class: "link", onclick: () => (location.hash = link) },
      h("td", {}, h("a", { href: link }, text(s, TAG.PatientName) || "(no name)")),
      h("td", {}, text(s, TAG.PatientID)),
      h("td", { class: "nowrap" }, text(s, TAG.StudyDate)),
      h("td", {}, text(s, TAG.ModalitiesInStudy)),
      h("td", {}, text(s, TAG.StudyDescription)),
      h("td", {}, text(s, TAG.AccessionNumber)),
      h("td", { class: "num" }, text(s, TAG.NumberOfStudyRelatedSeries)),
      h("td", { class: "num" }, text(s, TAG.NumberOfStudyRelatedInstances)));
  });
  const shown = results.length ? `Studies ${count(offset + 1)}–${count(offset + results.length)}` : "No studies";
  const pager = h("div", { class: "pager" },
    h("button", { type: "button", disabled: offset === 0, onclick: () => go({ offset: Math.max(0, offset - PAGE_SIZE) || undefined }) }, "‹ Previous"),
    h("span", { class: "shown" }, shown, total !== null && results.length ? ` of ${count(total)}` : ""),
    h("button", { type: "button", disabled: results.length < PAGE_SIZE || (total !== null && offset + PAGE_SIZE >= total), onclick: () => go({ offset: offset + PAGE_SIZE }) }, "Next ›"));
  const empty = !filters.size && !offset && !results.length;
  const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
  clear(main,
    h("h1", {}, "Studies"),
    h("div", { class: "store-bar" }, choice.bar, analyseButton(ctx)),
    uploadPanel(ctx, { open: empty, onDone: reload }),
    searchForm(params, ctx),
    results.length
      ? table(["Patient name", "Patient ID", "Study date", "Modalities", "Description", "Accession", "Series", "Instances"], rows, { class: "studies" })
      : h("p", { class: "note" }, offset ? "No more studies." : empty ? "This store holds no studies yet: add images above." : "No study matches."),
    pager);
}

// The search fields kept in the route.
function pick(params) {
  const out = {};
  for (const k of ["PatientName", "PatientID", "from", "to", "modality"]) if (params[k]) out[k] = params[k];
  return out;
}

function searchForm(params, ctx) {
  const field = (label, name, attrs = {}) =>
    h("label", {}, label, h("input", { name, value: params[name] || "", ...attrs }));
  return h("form", {
    class: "search",
    onsubmit: (event) => {
      event.preventDefault();
      const data = Object.fromEntries(new FormData(event.target));
      location.hash = route("studies", { ...ctx, ...data });
    },
  },
  field("Patient name", "PatientName", { placeholder: "Doe^J*", size: 16, title: "Matches from the start; * and ? are wildcards" }),
  field("Patient ID", "PatientID", { size: 12 }),
  field("Study date from", "from", { type: "date" }),
  field("to", "to", { type: "date" }),
  h("label", {}, "Modality", h("select", { name: "modality" },
    MODALITIES.map((m) => h("option", { value: m, selected: m === (params.modality || "") }, m || "any")))),
  h("button", { type: "submit", class: "primary" }, "Search"),
  h("a", { class: "small", href: route("studies", ctx) }, "clear"));
}

// ---- one study ------------------------------------------------------------------------------

export async function study(main, params, signal) {
  const ctx = { project: params.project, location: params.location, dataset: params.dataset, store: params.store };
  const base = `${dicomweb(ctx)}/studies/${encodeURIComponent(params.study)}`;
  const [found, seriesList] = await Promise.all([
    getJSON(`${dicomweb(ctx)}/studies?StudyInstanceUID=${encodeURIComponent(params.study)}&${STUDY_FIELDS}`, { accept: "application/dicom+json", signal }),
    getJSON(`${base}/series?includefield=${TAG.SeriesDescription}&includefield=${TAG.SeriesNumber}`, { accept: "application/dicom+json", signal }),
  ]);
  const s = (found || [])[0] || {};
  const series = (seriesList || []).sort((a, b) => number(a, TAG.SeriesNumber, 0) - number(b, TAG.SeriesNumber, 0));
  const urls = [];
  const cards = series.map((se) => {
    const uid = first(se, TAG.SeriesInstanceUID);
    const instances = number(se, TAG.NumberOfSeriesRelatedInstances, 0);
    const img = h("img", { alt: "", class: "thumb", width: 128, height: 128 });
    const holder = h("div", { class: "thumb-box" }, img);
    thumbnail(`${base}/series/${encodeURIComponent(uid)}`, instances, signal)
      .then((url) => {
        urls.push(url);
        img.src = url;
      })
      .catch((error) => {
        if (!signal.aborted) clear(holder, h("span", { class: "no-image", title: String(error) }, "no image"));
      });
    return h("a", { class: "series-card", href: route("view", { ...ctx, study: params.study, series: uid }) },
      holder,
      h("div", { class: "series-text" },
        h("strong", {}, text(se, TAG.Modality) || "?", " ", text(se, TAG.SeriesNumber) ? `#${text(se, TAG.SeriesNumber)}` : ""),
        h("div", {}, text(se, TAG.SeriesDescription) || "(no description)"),
        h("div", { class: "small" }, `${count(instances)} instance${instances === 1 ? "" : "s"}`)));
  });
  clear(main,
    h("p", {}, h("a", { href: route("studies", ctx) }, "‹ Studies")),
    h("h1", {}, text(s, TAG.PatientName) || "(no name)", " ", h("span", { class: "small" }, text(s, TAG.PatientID))),
    h("dl", { class: "facts" },
      fact("Study date", text(s, TAG.StudyDate)),
      fact("Description", text(s, TAG.StudyDescription)),
      fact("Accession", text(s, TAG.AccessionNumber)),
      fact("Modalities", text(s, TAG.ModalitiesInStudy)),
      fact("StudyInstanceUID", params.study)),
    h("h2", {}, `${series.length} series`),
    h("div", { class: "series-grid" }, cards));
  return () => urls.forEach((u) => URL.revokeObjectURL(u));
}

function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value || "—")];
}

// A blob URL of the rendered middle instance of a series, 128 pixels at most on a side. The
// instance list is asked for that one instance only (limit=1, offset), whatever the series' size.
export async function thumbnail(seriesUrl, instances, signal) {
  const middle = Math.max(0, Math.floor((instances - 1) / 2));
  const found = await getJSON(`${seriesUrl}/instances?limit=1&offset=${middle}`, { accept: "application/dicom+json", signal });
  const sop = first((found || [])[0], TAG.SOPInstanceUID);
  if (!sop) throw new Error("no instance");
  const response = await request(`${seriesUrl}/instances/${encodeURIComponent(sop)}/rendered?viewport=128,128`, { accept: "image/jpeg", signal });
  return URL.createObjectURL(await response.blob());
}
