// DICOM JSON (PS3.18 F.2) for people: attribute values as text and a dataset as a tree of
// <details> elements, keyword names where the table knows them, sequences nested.

import { h } from "./dom.js";
import { keyword } from "./keywords.js";

export const TAG = {
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  StudyDate: "00080020",
  StudyTime: "00080030",
  AccessionNumber: "00080050",
  Modality: "00080060",
  ModalitiesInStudy: "00080061",
  StudyDescription: "00081030",
  SeriesDescription: "0008103E",
  SOPClassUID: "00080016",
  SOPInstanceUID: "00080018",
  StudyInstanceUID: "0020000D",
  SeriesInstanceUID: "0020000E",
  SeriesNumber: "00200011",
  InstanceNumber: "00200013",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  NumberOfSeriesRelatedInstances: "00201209",
  SamplesPerPixel: "00280002",
  PhotometricInterpretation: "00280004",
  NumberOfFrames: "00280008",
  Rows: "00280010",
  Columns: "00280011",
  BitsAllocated: "00280100",
  BitsStored: "00280101",
  PixelRepresentation: "00280103",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
  VOILUTFunction: "00281056",
  SharedFunctionalGroupsSequence: "52009229",
  PerFrameFunctionalGroupsSequence: "52009230",
  PixelValueTransformationSequence: "00289145",
  FrameVOILUTSequence: "00289132",
};

// The first value of an attribute (a string, number or PN object), or undefined.
export function first(dataset, tag) {
  const element = dataset && dataset[tag];
  return element && element.Value ? element.Value[0] : undefined;
}

// An attribute as one line of text: "Doe^John", "2020-01-31", "0.5\0.5".
export function text(dataset, tag) {
  const element = dataset && dataset[tag];
  return element ? valueText(element) : "";
}

export function number(dataset, tag, fallback) {
  const value = Number(first(dataset, tag));
  return Number.isFinite(value) ? value : fallback;
}

export function valueText(element) {
  if (element.BulkDataURI) return "(bulk data)";
  if (element.InlineBinary !== undefined) return `(${Math.floor((element.InlineBinary.length * 3) / 4)} bytes, inline)`;
  if (!element.Value) return "";
  if (element.vr === "SQ") return `${element.Value.length} item${element.Value.length === 1 ? "" : "s"}`;
  return element.Value.map((v) => one(element.vr, v)).join("\\");
}

function one(vr, value) {
  if (value === null || value === undefined) return "";
  if (vr === "PN") return [value.Alphabetic, value.Ideographic, value.Phonetic].filter((x) => x !== undefined).join("=");
  if (vr === "DA" && /^\d{8}$/.test(value)) return `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}`;
  if (vr === "TM" && /^\d{4,}/.test(value)) {
    const s = String(value);
    return [s.slice(0, 2), s.slice(2, 4), s.slice(4)].filter(Boolean).join(":");
  }
  return String(value);
}

export function tagText(tag) {
  return `(${tag.slice(0, 4)},${tag.slice(4)})`;
}

// A dataset as a tree; `filter` (lower case) keeps the elements whose tag, keyword or value holds it,
// and the sequences that contain such an element.
export function metadataTree(dataset, filter = "") {
  const list = h("ul", { class: "tree" });
  for (const tag of Object.keys(dataset).sort()) {
    const item = elementNode(tag, dataset[tag], filter);
    if (item) list.append(item);
  }
  return list;
}

function elementNode(tag, element, filter) {
  const name = keyword(tag) || (parseInt(tag.slice(0, 4), 16) % 2 ? "(private)" : "");
  const label = [h("span", { class: "tag" }, tagText(tag)), " ", h("span", { class: "kw" }, name), " ",
    h("span", { class: "vr" }, element.vr || "")];
  const own = `${tag} ${name} ${valueText(element)}`.toLowerCase();
  if (element.vr === "SQ" && element.Value && element.Value.length) {
    const items = element.Value.map((item, i) => {
      const children = metadataTree(item || {}, own.includes(filter) ? "" : filter);
      if (!children.childElementCount) return null;
      return h("li", {}, h("details", { open: element.Value.length <= 3 },
        h("summary", {}, `Item ${i + 1}`), children));
    }).filter(Boolean);
    if (filter && !items.length && !own.includes(filter)) return null;
    return h("li", { dataset: { tag } }, h("details", { open: Boolean(filter) },
      h("summary", {}, label, " ", h("span", { class: "value" }, valueText(element))),
      h("ul", { class: "tree" }, items)));
  }
  if (filter && !own.includes(filter)) return null;
  return h("li", { dataset: { tag } }, label, " ", h("span", { class: "value" }, valueText(element)));
}
