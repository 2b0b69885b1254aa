// STOW-RS from the browser: files from the user's disk into a store. They are chosen with a folder
// or file picker or dropped on the page (folders are walked), checked for the DICM mark, then sent
// in batches of multipart/related requests, two at a time. The browser streams the files from disk
// (a Blob of File parts); they are never read into memory here, so a folder of 50,000 files uploads
// like one of ten.
//
// An upload belongs to its store, not to the page: it goes on while the user looks at another view,
// and the store's page shows its progress again on coming back.

import { dicomweb, request } from "./api.js";

const BATCH_FILES = 50;
const BATCH_BYTES = 32 * 1024 * 1024;
const PARALLEL = 2;
const KEEP_DETAILS = 50;

// STOW-RS answer attributes (PS3.18 table 10.5.3-1).
const FAILED_SOP_SEQUENCE = "00081198";
const REFERENCED_SOP_SEQUENCE = "00081199";
const RETRIEVE_URL = "00081190";
const FAILURE_REASON = "00081197";
const SOP_INSTANCE_UID = "00081155";
const DETAIL = "00091097"; // where the server puts its own words for a failure

const uploads = new Map(); // store path -> the running or last Upload

export function uploadOf(ctx) {
  return uploads.get(dicomweb(ctx)) || null;
}

// Starts uploading `files` into the store; an upload already running there takes the files in too.
export function startUpload(ctx, files) {
  const key = dicomweb(ctx);
  let upload = uploads.get(key);
  if (upload && upload.running) {
    upload.add(files);
    return upload;
  }
  upload = new Upload(ctx);
  uploads.set(key, upload);
  upload.add(files);
  return upload;
}

export function forgetUpload(ctx) {
  const upload = uploadOf(ctx);
  if (upload && !upload.running) uploads.delete(dicomweb(ctx));
}

window.addEventListener("beforeunload", (event) => {
  if ([...uploads.values()].some((u) => u.running)) event.preventDefault();
});

export class Upload {
  constructor(ctx) {
    this.url = `${dicomweb(ctx)}/studies`;
    this.queue = [];
    this.listeners = new Set();
    this.abort = new AbortController();
    this.running = false;
    this.cancelled = false;
    Object.assign(this, { files: 0, bytes: 0, checked: 0, sent: 0, sentBytes: 0, stored: 0, duplicates: 0, failed: 0, skipped: 0 });
    this.studies = new Set();
    this.problems = []; // [file or SOP Instance UID, what went wrong], the first KEEP_DETAILS
    this.started = performance.now();
    this.elapsed = 0;
  }

  onChange(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  changed() {
    this.elapsed = performance.now() - this.started;
    for (const listener of this.listeners) listener(this);
  }

  problem(what, why) {
    if (this.problems.length < KEEP_DETAILS) this.problems.push([what, why]);
  }

  add(files) {
    for (const file of files) {
      this.queue.push(file);
      this.files += 1;
      this.bytes += file.size;
    }
    if (!this.running) {
      this.running = true;
      this.run().finally(() => {
        this.running = false;
        this.changed();
      });
    }
    this.changed();
  }

  cancel() {
    this.cancelled = true;
    this.abort.abort();
  }

  async run() {
    const batches = this.batches();
    const worker = async () => {
      for (;;) {
        const next = await batches.next();
        if (next.done || this.cancelled) return;
        await this.send(next.value);
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
  }

  // Batches of DICOM files out of the queue, at most BATCH_FILES files or BATCH_BYTES each (one
  // larger file goes alone). A generator shared by the senders: each takes the next batch.
  async *batches() {
    let batch = [];
    let size = 0;
    while (this.queue.length && !this.cancelled) {
      const file = this.queue.shift();
      this.checked += 1;
      if (!(await isDicom(file))) {
        this.skipped += 1;
        this.problem(pathOf(file), "not a DICOM file (no DICM mark at byte 128): skipped");
        this.changed();
        continue;
      }
      if (batch.length && (batch.length >= BATCH_FILES || size + file.size > BATCH_BYTES)) {
        yield batch;
        batch = [];
        size = 0;
      }
      batch.push(file);
      size += file.size;
    }
    if (batch.length && !this.cancelled) yield batch;
  }

  async send(batch) {
    const boundary = `dicomlake-${crypto.randomUUID()}`;
    const parts = [];
    for (const file of batch) parts.push(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, file, "\r\n");
    parts.push(`--${boundary}--\r\n`);
    const bytes = batch.reduce((n, f) => n + f.size, 0);
    try {
      const response = await request(this.url, {
        method: "POST",
        accept: "application/dicom+json",
        contentType: `multipart/related; type="application/dicom"; boundary=${boundary}`,
        body: new Blob(parts),
        allow: [409], // some instances failed: the answer says which
        signal: this.abort.signal,
      });
      this.count(await response.json(), batch);
    } catch (error) {
      if (this.cancelled) return;
      this.failed += batch.length;
      this.problem(batch.length === 1 ? pathOf(batch[0]) : `${pathOf(batch[0])} and ${batch.length - 1} more`, String(error));
    } finally {
      this.sent += batch.length;
      this.sentBytes += bytes;
      this.changed();
    }
  }

  count(answer, batch) {
    for (const item of sequence(answer, REFERENCED_SOP_SEQUENCE)) {
      this.stored += 1;
      const url = value(item, RETRIEVE_URL) || "";
      const study = /\/studies\/([^/]+)/.exec(url);
      if (study) this.studies.add(study[1]);
    }
    for (const item of sequence(answer, FAILED_SOP_SEQUENCE)) {
      const detail = value(item, DETAIL) || `failure reason ${value(item, FAILURE_REASON)}`;
      if (/already exists/.test(detail)) {
        this.duplicates += 1;
        continue;
      }
      this.failed += 1;
      this.problem(value(item, SOP_INSTANCE_UID) || `a file of ${pathOf(batch[0])}…`, detail);
    }
  }
}

function sequence(dataset, tag) {
  return (dataset && dataset[tag] && dataset[tag].Value) || [];
}

function value(item, tag) {
  return item && item[tag] && item[tag].Value ? item[tag].Value[0] : null;
}

export function pathOf(file) {
  return file.relativePath || file.webkitRelativePath || file.name;
}

// A DICOM file (PS3.10) has "DICM" after a 128-byte preamble. DICOMDIR is a DICOM file too, but an
// index of a medium, not an image: a store has no use for it.
async function isDicom(file) {
  if (file.name.toUpperCase() === "DICOMDIR" || file.size < 132) return false;
  const mark = new Uint8Array(await file.slice(128, 132).arrayBuffer());
  return mark[0] === 0x44 && mark[1] === 0x49 && mark[2] === 0x43 && mark[3] === 0x4d;
}

// The files of a drop: folders are walked to the bottom (each File keeps its path in relativePath).
export async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const files = [];
  const walk = async (entry, path) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      file.relativePath = path + entry.name;
      files.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      // readEntries gives a hundred or so at a time: read until it gives none.
      for (;;) {
        const some = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!some.length) break;
        for (const child of some) await walk(child, `${path}${entry.name}/`);
      }
    }
  };
  for (const entry of entries) await walk(entry, "");
  return files;
}
