// Window presets need the stored pixel values, not the server's 8-bit rendering: a frame is fetched
// uncompressed (WADO-RS frames, Explicit VR Little Endian, which the server transcodes to), turned
// into modality values (rescale slope and intercept) and windowed here on a canvas.

import { TAG, first, number } from "./dicom.js";

const EXPLICIT_LE = "1.2.840.10008.1.2.1";
export const RAW_ACCEPT = `multipart/related; type="application/octet-stream"; transfer-syntax=${EXPLICIT_LE}`;

// Whether windowing applies: one sample of greyscale, integer pixels.
export function windowable(meta) {
  const photometric = String(first(meta, TAG.PhotometricInterpretation) || "");
  const bits = number(meta, TAG.BitsAllocated, 0);
  return number(meta, TAG.SamplesPerPixel, 1) === 1 && photometric.startsWith("MONOCHROME") && [8, 16, 32].includes(bits);
}

// The body of the one part of a multipart/related answer.
export function onlyPart(buffer, contentType) {
  const match = /boundary="?([^";]+)"?/i.exec(contentType || "");
  const data = new Uint8Array(buffer);
  if (!match) return data;
  const boundary = new TextEncoder().encode(`--${match[1]}`);
  const start = find(data, boundary, 0);
  const headersEnd = find(data, new TextEncoder().encode("\r\n\r\n"), start);
  const end = findLast(data, new TextEncoder().encode(`\r\n--${match[1]}`));
  if (start < 0 || headersEnd < 0 || end < headersEnd) throw new Error("malformed multipart answer");
  return data.subarray(headersEnd + 4, end);
}

function find(data, needle, from) {
  outer: for (let i = Math.max(from, 0); i <= data.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (data[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function findLast(data, needle) {
  outer: for (let i = data.length - needle.length; i >= 0; i--) {
    for (let j = 0; j < needle.length; j++) if (data[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// Rescale and window of a frame: per-frame functional groups first, then shared, then the top level
// (Enhanced multi-frame objects keep them in the groups).
function frameAttribute(meta, frame, sequenceTag, tag) {
  for (const groupsTag of [TAG.PerFrameFunctionalGroupsSequence, TAG.SharedFunctionalGroupsSequence]) {
    const groups = meta[groupsTag] && meta[groupsTag].Value;
    const group = groups && (groupsTag === TAG.SharedFunctionalGroupsSequence ? groups[0] : groups[frame - 1]);
    const item = group && group[sequenceTag] && group[sequenceTag].Value && group[sequenceTag].Value[0];
    if (item && item[tag] && item[tag].Value) return Number(item[tag].Value[0]);
  }
  return number(meta, tag, undefined);
}

// A frame's modality values and what it takes to show them.
export function decode(meta, frame, bytes) {
  const rows = number(meta, TAG.Rows, 0);
  const columns = number(meta, TAG.Columns, 0);
  const bits = number(meta, TAG.BitsAllocated, 16);
  const stored = number(meta, TAG.BitsStored, bits);
  const signed = number(meta, TAG.PixelRepresentation, 0) === 1;
  const count = rows * columns;
  const copy = bytes.slice(0, count * (bits / 8)).buffer; // aligned for the typed array
  let raw;
  if (bits === 8) raw = signed ? new Int8Array(copy) : new Uint8Array(copy);
  else if (bits === 16) raw = signed ? new Int16Array(copy) : new Uint16Array(copy);
  else raw = signed ? new Int32Array(copy) : new Uint32Array(copy);
  if (raw.length < count) throw new Error(`frame holds ${raw.length} pixels, expected ${count}`);
  const slope = frameAttribute(meta, frame, TAG.PixelValueTransformationSequence, TAG.RescaleSlope) ?? 1;
  const intercept = frameAttribute(meta, frame, TAG.PixelValueTransformationSequence, TAG.RescaleIntercept) ?? 0;
  const shift = 32 - stored;
  const values = new Float32Array(count);
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < count; i++) {
    // Signed values stored in fewer bits than allocated: extend the sign from the top stored bit.
    const v = (signed && stored < bits ? (raw[i] << shift) >> shift : raw[i]) * slope + intercept;
    values[i] = v;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const center = frameAttribute(meta, frame, TAG.FrameVOILUTSequence, TAG.WindowCenter);
  const width = frameAttribute(meta, frame, TAG.FrameVOILUTSequence, TAG.WindowWidth);
  const own = Number.isFinite(center) && width >= 1 ? { center, width } : null;
  return {
    rows,
    columns,
    values,
    min,
    max,
    inverted: first(meta, TAG.PhotometricInterpretation) === "MONOCHROME1",
    window: own || { center: (min + max) / 2, width: Math.max(max - min, 1) },
  };
}

// The frame through a linear window (PS3.3 C.11.2.1.2.1) as canvas pixels.
export function windowed(image, center, width) {
  const out = new ImageData(image.columns, image.rows);
  const low = center - 0.5 - (width - 1) / 2;
  const scale = 255 / Math.max(width - 1, 1);
  const { values, inverted } = image;
  const px = out.data;
  for (let i = 0, j = 0; i < values.length; i++, j += 4) {
    let y = (values[i] - low) * scale;
    y = y < 0 ? 0 : y > 255 ? 255 : y;
    if (inverted) y = 255 - y;
    px[j] = px[j + 1] = px[j + 2] = y;
    px[j + 3] = 255;
  }
  return out;
}
