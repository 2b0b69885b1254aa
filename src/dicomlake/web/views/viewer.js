// Image view: the instances of a series and their frames on a canvas, scrolled with the wheel and the
// keys, zoomed and panned; window presets; the instance's metadata as a tree; download of the file.
//
// The default rendering is the server's (WADO-RS /frames/N/rendered, the image's own window). A
// window preset fetches the frame's stored values instead and windows them here (pixels.js).

import { dicomweb, getJSON, request } from "../api.js";
import { TAG, first, metadataTree, number, text } from "../dicom.js";
import { clear, count, errorBox, h, route } from "../dom.js";
import { RAW_ACCEPT, decode, onlyPart, windowable, windowed } from "../pixels.js";

// [label, center, width]; "own" is the image's window (or its full range), "full" the full range.
const PRESETS = [
  ["Server rendering", null, null],
  ["Image's own window", "own", null],
  ["Full range", "full", null],
  ["CT soft tissue", 40, 400],
  ["CT lung", -600, 1500],
  ["CT bone", 400, 1800],
  ["CT brain", 40, 80],
  ["CT mediastinum", 50, 350],
  ["CT liver", 60, 160],
];
const INSTANCE_PAGE = 5000;

// A small least-recently-used cache.
class Cache {
  constructor(size) {
    this.size = size;
    this.map = new Map();
  }

  get(key, load) {
    if (this.map.has(key)) {
      const value = this.map.get(key);
      this.map.delete(key);
      this.map.set(key, value);
      return value;
    }
    const value = load();
    this.map.set(key, value);
    // A failed load is forgotten, so that it is tried again.
    Promise.resolve(value).catch(() => this.map.get(key) === value && this.map.delete(key));
    while (this.map.size > this.size) {
      const [oldest, old] = this.map.entries().next().value;
      this.map.delete(oldest);
      Promise.resolve(old).then((v) => v && v.close && v.close(), () => {});
    }
    return value;
  }
}

async function listInstances(seriesUrl, signal) {
  const out = [];
  for (let offset = 0; ; offset += INSTANCE_PAGE) {
    const page = (await getJSON(`${seriesUrl}/instances?limit=${INSTANCE_PAGE}&offset=${offset}`, { accept: "application/dicom+json", signal })) || [];
    out.push(...page);
    if (page.length < INSTANCE_PAGE) return out;
  }
}

export async function viewer(main, params, signal) {
  const ctx = { project: params.project, location: params.location, dataset: params.dataset, store: params.store };
  const studyUrl = `${dicomweb(ctx)}/studies/${encodeURIComponent(params.study)}`;
  const [seriesList, found] = await Promise.all([
    getJSON(`${studyUrl}/series?includefield=${TAG.SeriesNumber}`, { accept: "application/dicom+json", signal }),
    getJSON(`${dicomweb(ctx)}/studies?StudyInstanceUID=${encodeURIComponent(params.study)}`, { accept: "application/dicom+json", signal }),
  ]);
  const allSeries = (seriesList || []).sort((a, b) => number(a, TAG.SeriesNumber, 0) - number(b, TAG.SeriesNumber, 0));
  const seriesUid = params.series || first(allSeries[0], TAG.SeriesInstanceUID);
  const seriesUrl = `${studyUrl}/series/${encodeURIComponent(seriesUid)}`;
  const instances = await listInstances(seriesUrl, signal);
  if (!instances.length) throw new Error("this series has no instances");
  const studyAttrs = (found || [])[0] || {};

  const state = {
    index: Math.max(0, instances.findIndex((i) => first(i, TAG.SOPInstanceUID) === params.instance)),
    frame: Math.max(1, parseInt(params.frame || "1", 10) || 1),
    preset: 0,
    window: null, // {center, width} while a preset or a drag sets it
    zoom: 1,
    pan: { x: 0, y: 0 },
    meta: null,
    image: null, // the decoded frame shown in a windowed mode
    showing: 0,
  };
  const sop = (i = state.index) => first(instances[i], TAG.SOPInstanceUID);
  const frames = (i = state.index) => Math.max(1, number(instances[i], TAG.NumberOfFrames, 1));
  const instanceUrl = (i = state.index) => `${seriesUrl}/instances/${encodeURIComponent(sop(i))}`;

  const metadata = new Cache(64);
  const renders = new Cache(48);
  const raws = new Cache(4);
  const getMeta = (i) => metadata.get(sop(i), () =>
    getJSON(`${instanceUrl(i)}/metadata`, { accept: "application/dicom+json" }).then((list) => (list || [])[0] || {}));
  const getRender = (i, frame) => renders.get(`${sop(i)}/${frame}`, async () => {
    const response = await request(`${instanceUrl(i)}/frames/${frame}/rendered`, { accept: "image/jpeg" });
    return createImageBitmap(await response.blob());
  });
  const getRaw = (i, frame, meta) => raws.get(`${sop(i)}/${frame}`, async () => {
    const response = await request(`${instanceUrl(i)}/frames/${frame}`, { accept: RAW_ACCEPT });
    return decode(meta, frame, onlyPart(await response.arrayBuffer(), response.headers.get("Content-Type")));
  });

  // ---- the page ----
  const canvas = h("canvas", { id: "image", "aria-label": "image" });
  const stage = h("div", { class: "stage", tabindex: "0" }, canvas);
  const status = h("div", { class: "status" });
  const overlay = h("div", { class: "overlay" });
  stage.append(overlay, status);
  const instanceRange = h("input", { type: "range", min: 1, max: instances.length, value: state.index + 1, "aria-label": "instance" });
  const frameRange = h("input", { type: "range", min: 1, max: 1, value: 1, "aria-label": "frame" });
  const instanceText = h("span", { class: "counter" });
  const frameText = h("span", { class: "counter" });
  const presetSelect = h("select", { "aria-label": "window", title: "Window (keys 1–9; right-drag for your own)" },
    PRESETS.map(([label], i) => h("option", { value: i }, `${i + 1} ${label}`)));
  const zoomText = h("span", { class: "counter" });
  const filter = h("input", { type: "search", placeholder: "filter: tag, keyword or value", "aria-label": "filter metadata" });
  const tree = h("div", { class: "tree-box" });
  const meta = h("aside", { class: "meta" }, h("h2", {}, "Metadata"), filter, tree);
  const download = h("button", { type: "button", title: "Download the DICOM file as stored" }, "Download .dcm");
  const seriesSelect = h("select", { "aria-label": "series" }, allSeries.map((se) => {
    const uid = first(se, TAG.SeriesInstanceUID);
    const label = `${text(se, TAG.Modality)} #${text(se, TAG.SeriesNumber) || "?"} ${text(se, TAG.SeriesDescription)}`;
    return h("option", { value: uid, selected: uid === seriesUid }, label);
  }));

  const toolbar = h("div", { class: "toolbar" },
    h("a", { href: route("study", { ...ctx, study: params.study }), title: "Back to the study" }, "‹ Study"),
    h("strong", { class: "who" }, text(studyAttrs, TAG.PatientName) || "(no name)"),
    seriesSelect,
    h("label", {}, "Instance ", instanceRange, instanceText),
    h("label", { class: "frames" }, "Frame ", frameRange, frameText),
    presetSelect,
    h("span", { class: "zoom" },
      h("button", { type: "button", title: "Zoom out (-)", onclick: () => zoomBy(1 / 1.25) }, "−"),
      zoomText,
      h("button", { type: "button", title: "Zoom in (+)", onclick: () => zoomBy(1.25) }, "+"),
      h("button", { type: "button", title: "Fit (0)", onclick: () => fit() }, "Fit")),
    download,
    h("button", { type: "button", title: "Show or hide the metadata (m)", onclick: () => meta.classList.toggle("hidden") }, "Metadata"));
  clear(main, h("div", { class: "viewer" }, toolbar, h("div", { class: "panes" }, stage, meta)));

  // ---- drawing ----
  function place() {
    const fitScale = Math.min(stage.clientWidth / (canvas.width || 1), stage.clientHeight / (canvas.height || 1)) || 1;
    const scale = fitScale * state.zoom;
    canvas.style.transform = `translate(-50%, -50%) translate(${state.pan.x}px, ${state.pan.y}px) scale(${scale})`;
    zoomText.textContent = `${Math.round(scale * 100)}%`;
  }

  function draw(source) {
    if (canvas.width !== source.width || canvas.height !== source.height) {
      canvas.width = source.width;
      canvas.height = source.height;
    }
    const c2d = canvas.getContext("2d");
    if (source instanceof ImageData) c2d.putImageData(source, 0, 0);
    else c2d.drawImage(source, 0, 0);
    canvas.dataset.state = "ready";
    place();
  }

  function windowOf(image) {
    const [, center, width] = PRESETS[state.preset];
    if (state.window) return state.window;
    if (center === "own") return image.window;
    if (center === "full") return { center: (image.min + image.max) / 2, width: Math.max(image.max - image.min, 1) };
    return { center, width };
  }

  function drawWindowed() {
    const w = windowOf(state.image);
    draw(windowed(state.image, w.center, w.width));
    overlay.textContent = `W ${Math.round(w.width)} L ${Math.round(w.center)}`;
  }

  async function show() {
    const seq = ++state.showing;
    state.frame = Math.min(Math.max(state.frame, 1), frames());
    instanceRange.value = state.index + 1;
    instanceText.textContent = `${count(state.index + 1)} / ${count(instances.length)}`;
    frameRange.max = frames();
    frameRange.value = state.frame;
    frameText.textContent = `${state.frame} / ${frames()}`;
    frameRange.parentElement.hidden = frames() === 1;
    history.replaceState(null, "", route("view", { ...ctx, study: params.study, series: seriesUid, instance: sop(), frame: state.frame > 1 ? state.frame : undefined }));
    status.textContent = "";
    const index = state.index;
    const frame = state.frame;
    const metaPromise = getMeta(index);
    metaPromise.then((m) => seq === state.showing && showMetadata(m), (e) => seq === state.showing && clear(tree, errorBox(e)));
    try {
      if (state.preset === 0 && !state.window) {
        const bitmap = await getRender(index, frame);
        if (seq !== state.showing) return;
        state.image = null;
        draw(bitmap);
        overlay.textContent = "";
        prefetch(index, frame);
        return;
      }
      const m = await metaPromise;
      if (!windowable(m)) throw new Error("window presets apply to greyscale images only; shown as the server renders it");
      const image = await getRaw(index, frame, m);
      if (seq !== state.showing) return;
      state.image = image;
      drawWindowed();
    } catch (error) {
      if (seq !== state.showing || signal.aborted) return;
      canvas.dataset.state = "error";
      status.textContent = state.preset ? String(error.message || error) : `Cannot show this image: ${error.message || error}`;
      if (state.preset !== 0) {
        state.preset = 0;
        state.window = null;
        presetSelect.value = 0;
        const bitmap = await getRender(index, frame).catch(() => null);
        if (bitmap && seq === state.showing) draw(bitmap);
      }
    }
  }

  // The neighbours, so that scrolling does not wait for each image.
  function prefetch(index, frame) {
    const next = frames(index) > 1 ? [[index, frame + 1]] : [[index + 1, 1], [index + 2, 1], [index - 1, 1]];
    for (const [i, f] of next) if (i >= 0 && i < instances.length && f <= frames(i)) getRender(i, f).catch(() => {});
  }

  function showMetadata(m) {
    state.meta = m;
    clear(tree, metadataTree(m, filter.value.trim().toLowerCase()));
  }

  // ---- moving through the series ----
  function step(by) {
    if (frames() > 1) return stepFrame(by);
    stepInstance(by);
  }

  function stepInstance(by) {
    const index = Math.min(Math.max(state.index + by, 0), instances.length - 1);
    if (index === state.index) return;
    state.index = index;
    state.frame = 1;
    show();
  }

  function stepFrame(by) {
    const frame = Math.min(Math.max(state.frame + by, 1), frames());
    if (frame === state.frame) return stepInstance(by);
    state.frame = frame;
    show();
  }

  function zoomBy(factor) {
    state.zoom = Math.min(Math.max(state.zoom * factor, 0.1), 40);
    place();
  }

  function fit() {
    state.zoom = 1;
    state.pan = { x: 0, y: 0 };
    place();
  }

  function setPreset(i) {
    state.preset = i;
    state.window = null;
    presetSelect.value = i;
    show();
  }

  instanceRange.addEventListener("input", () => {
    state.index = Number(instanceRange.value) - 1;
    state.frame = 1;
    show();
  });
  frameRange.addEventListener("input", () => {
    state.frame = Number(frameRange.value);
    show();
  });
  presetSelect.addEventListener("change", () => setPreset(Number(presetSelect.value)));
  seriesSelect.addEventListener("change", () => {
    location.hash = route("view", { ...ctx, study: params.study, series: seriesSelect.value });
  });
  filter.addEventListener("input", () => state.meta && showMetadata(state.meta));
  download.addEventListener("click", async () => {
    download.disabled = true;
    try {
      const response = await request(instanceUrl(), { accept: "application/dicom; transfer-syntax=*" });
      const url = URL.createObjectURL(await response.blob());
      const a = h("a", { href: url, download: `${sop()}.dcm` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      status.textContent = `Download failed: ${error}`;
    } finally {
      download.disabled = false;
    }
  });

  // Scrolling or clicking the image gives it the keys (away from the metadata filter, say).
  stage.addEventListener("wheel", (event) => {
    event.preventDefault();
    stage.focus({ preventScroll: true });
    if (event.ctrlKey) zoomBy(event.deltaY < 0 ? 1.1 : 1 / 1.1);
    else step(event.deltaY > 0 ? 1 : -1);
  }, { passive: false });

  // Left drag pans; right drag (or shift and left) sets the window: across is width, down is level.
  stage.addEventListener("contextmenu", (event) => event.preventDefault());
  stage.addEventListener("pointerdown", (event) => {
    stage.focus({ preventScroll: true });
    const windowing = event.button === 2 || event.shiftKey;
    const start = { x: event.clientX, y: event.clientY, pan: { ...state.pan }, window: state.image ? windowOf(state.image) : null };
    if (windowing && !state.image) {
      // The first drag of a window needs the stored values: start from the image's own window.
      setPreset(1);
      return;
    }
    stage.setPointerCapture(event.pointerId);
    const move = (e) => {
      const dx = e.clientX - start.x;
      const dy = e.clientY - start.y;
      if (windowing && start.window) {
        const scale = Math.max(start.window.width, 1) / 256;
        state.window = { center: start.window.center + dy * scale, width: Math.max(1, start.window.width + dx * scale) };
        drawWindowed();
      } else {
        state.pan = { x: start.pan.x + dx, y: start.pan.y + dy };
        place();
      }
    };
    const up = () => {
      stage.removeEventListener("pointermove", move);
      stage.removeEventListener("pointerup", up);
    };
    stage.addEventListener("pointermove", move);
    stage.addEventListener("pointerup", up);
  });

  const keys = (event) => {
    if (event.target.closest && event.target.closest("input, select, textarea, dialog")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const actions = {
      ArrowDown: () => stepInstance(1), PageDown: () => stepInstance(1), j: () => stepInstance(1),
      ArrowUp: () => stepInstance(-1), PageUp: () => stepInstance(-1), k: () => stepInstance(-1),
      ArrowRight: () => stepFrame(1), ArrowLeft: () => stepFrame(-1),
      Home: () => { state.index = 0; state.frame = 1; show(); },
      End: () => { state.index = instances.length - 1; state.frame = 1; show(); },
      "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(1 / 1.25), 0: fit,
      m: () => meta.classList.toggle("hidden"),
    };
    const action = actions[event.key] || (/^[1-9]$/.test(event.key) && Number(event.key) <= PRESETS.length ? () => setPreset(Number(event.key) - 1) : null);
    if (!action) return;
    event.preventDefault();
    action();
  };
  document.addEventListener("keydown", keys);
  const resize = () => place();
  window.addEventListener("resize", resize);

  show();
  stage.focus();
  return () => {
    document.removeEventListener("keydown", keys);
    window.removeEventListener("resize", resize);
  };
}
