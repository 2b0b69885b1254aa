// The "Add images" panel of a store's study list: a folder picker, a file picker and a drop zone,
// and the progress of the store's upload (web/stow.js) while it runs and after it ends.

import { bytes, clear, count, h } from "../dom.js";
import { droppedFiles, forgetUpload, startUpload, uploadOf } from "../stow.js";

// `onDone` runs when an upload this panel shows ends (the study list reloads then).
export function uploadPanel(ctx, { open, onDone }) {
  const status = h("div", { class: "upload-status", "aria-live": "polite" });
  const folder = h("input", { type: "file", webkitdirectory: true, multiple: true, hidden: true });
  const files = h("input", { type: "file", multiple: true, hidden: true, accept: ".dcm,application/dicom,*/*" });
  let detach = () => {};

  const follow = (upload) => {
    detach();
    let wasRunning = upload.running;
    const show = () => {
      clear(status, progressOf(upload, () => { forgetUpload(ctx); detach(); clear(status); }));
      if (wasRunning && !upload.running) onDone(upload);
      wasRunning = upload.running;
    };
    // The panel leaves the page with its view; the upload goes on without it.
    const off = upload.onChange(() => (panel.isConnected ? show() : detach()));
    detach = off;
    show();
  };
  const start = (list) => {
    if (list.length) follow(startUpload(ctx, list));
  };
  for (const input of [folder, files]) {
    input.addEventListener("change", () => {
      start([...input.files]);
      input.value = "";
    });
  }

  const zone = h("div", { class: "drop-zone" },
    h("p", {}, "Drop DICOM files or folders here, or ",
      h("button", { type: "button", onclick: () => folder.click() }, "Choose a folder…"), " ",
      h("button", { type: "button", onclick: () => files.click() }, "Choose files…")),
    h("p", { class: "small" }, "Sent with STOW-RS, 50 files to a request. Files without the DICM mark and DICOMDIR are skipped; instances already stored are counted, not stored twice."),
    folder, files);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    clear(status, h("p", { class: "loading" }, "Reading the folders…"));
    start(await droppedFiles(event.dataTransfer));
  });

  const panel = h("details", { class: "upload", open: open || undefined },
    h("summary", {}, "Add images from this computer"), zone, status);
  const running = uploadOf(ctx);
  if (running) {
    panel.open = true;
    follow(running);
  }
  return panel;
}

function progressOf(upload, dismiss) {
  const done = upload.sent + upload.skipped;
  const seconds = upload.elapsed / 1000;
  const rate = seconds > 0.5 ? ` · ${bytes(upload.sentBytes / seconds)}/s` : "";
  const parts = [
    `${count(upload.stored)} stored`,
    upload.duplicates ? `${count(upload.duplicates)} already there` : null,
    upload.failed ? `${count(upload.failed)} failed` : null,
    upload.skipped ? `${count(upload.skipped)} not DICOM` : null,
  ].filter(Boolean);
  const head = upload.running
    ? [`Uploading: ${count(done)} of ${count(upload.files)} files (${bytes(upload.sentBytes)} of ${bytes(upload.bytes)})${rate}. `,
      h("button", { type: "button", onclick: () => upload.cancel() }, "Cancel")]
    : [`${upload.cancelled ? "Cancelled" : "Done"}: ${count(upload.stored)} instance${upload.stored === 1 ? "" : "s"} of ` +
       `${count(upload.studies.size)} stud${upload.studies.size === 1 ? "y" : "ies"} stored from ${count(upload.files)} files in ${seconds.toFixed(1)} s. `,
      h("button", { type: "button", onclick: dismiss }, "Dismiss")];
  const problems = upload.problems.length
    ? h("details", { class: "problems", open: !upload.running && upload.failed > 0 },
      h("summary", {}, `What went wrong (${upload.failed + upload.skipped > upload.problems.length ? `the first ${upload.problems.length}` : upload.problems.length})`),
      h("ul", {}, upload.problems.map(([what, why]) => h("li", {}, h("code", {}, what), ": ", why))))
    : null;
  const bar = h("div", { class: "progress wide", title: parts.join(", ") },
    h("div", { class: "ok", style: `width:${upload.files ? (100 * (done - upload.failed)) / upload.files : 0}%` }),
    h("div", { class: "bad", style: `width:${upload.files ? (100 * upload.failed) / upload.files : 0}%` }));
  return [h("p", {}, head), h("p", {}, bar, h("span", { class: "counts" }, parts.join(" · "))), problems];
}
