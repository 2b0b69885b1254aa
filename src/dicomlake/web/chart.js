// Bar, line and histogram charts of query results as SVG, sized to their box.

import { svg } from "./dom.js";

const WIDTH = 560;
const HEIGHT = 300;
const M = { top: 12, right: 16, bottom: 64, left: 64 };
const MAX_BARS = 60;

// Round tick values covering [low, high].
function ticks(low, high, wanted = 5) {
  if (low === high) high = low + 1;
  const raw = (high - low) / wanted;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * magnitude).find((s) => s >= raw);
  const out = [];
  for (let v = Math.floor(low / step) * step; v <= high + step / 2; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function short(label, length = 14) {
  const s = String(label);
  return s.length > length ? s.slice(0, length - 1) + "…" : s;
}

function frame(yTicks, yOf) {
  const g = svg("g", { class: "axis" });
  for (const t of yTicks) {
    const y = yOf(t);
    g.append(svg("line", { x1: M.left, x2: WIDTH - M.right, y1: y, y2: y, class: "grid" }));
    g.append(svg("text", { x: M.left - 6, y: y + 4, "text-anchor": "end" }, short(t.toLocaleString("en-US"), 10)));
  }
  g.append(svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: HEIGHT - M.bottom }));
  g.append(svg("line", { x1: M.left, x2: WIDTH - M.right, y1: HEIGHT - M.bottom, y2: HEIGHT - M.bottom }));
  return g;
}

function xLabel(x, text) {
  const y = HEIGHT - M.bottom + 14;
  return svg("text", { x, y, transform: `rotate(-35 ${x} ${y})`, "text-anchor": "end" }, short(text));
}

// Bars of labelled values: [{label, value}], at most MAX_BARS.
function bars(points, title) {
  const shown = points.slice(0, MAX_BARS);
  const top = Math.max(0, ...shown.map((p) => p.value));
  const bottom = Math.min(0, ...shown.map((p) => p.value));
  const yTicks = ticks(bottom, top);
  const lo = yTicks[0];
  const hi = yTicks[yTicks.length - 1];
  const yOf = (v) => HEIGHT - M.bottom - ((v - lo) / (hi - lo)) * (HEIGHT - M.top - M.bottom);
  const band = (WIDTH - M.left - M.right) / Math.max(shown.length, 1);
  const root = chartRoot(title);
  root.append(frame(yTicks, yOf));
  shown.forEach((p, i) => {
    const x = M.left + i * band;
    const y0 = yOf(Math.max(p.value, 0));
    const y1 = yOf(Math.min(p.value, 0));
    const bar = svg("rect", { class: "bar", x: x + band * 0.1, y: y0, width: band * 0.8, height: Math.max(y1 - y0, 0.5) });
    bar.append(svg("title", {}, `${p.label}: ${p.value}`));
    root.append(bar);
    if (shown.length <= 30 || i % Math.ceil(shown.length / 30) === 0) root.append(xLabel(x + band / 2, p.label));
  });
  return root;
}

function chartRoot(title) {
  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img" });
  root.append(svg("title", {}, title));
  return root;
}

function line(points, title) {
  const numericX = points.every((p) => Number.isFinite(p.x));
  const xs = numericX ? points.map((p) => p.x) : points.map((_, i) => i);
  const ys = points.map((p) => p.value);
  const xLo = Math.min(...xs);
  const xHi = Math.max(...xs);
  const yTicks = ticks(Math.min(...ys), Math.max(...ys));
  const lo = yTicks[0];
  const hi = yTicks[yTicks.length - 1];
  const yOf = (v) => HEIGHT - M.bottom - ((v - lo) / (hi - lo)) * (HEIGHT - M.top - M.bottom);
  const xOf = (v) => M.left + ((v - xLo) / (xHi - xLo || 1)) * (WIDTH - M.left - M.right);
  const root = chartRoot(title);
  root.append(frame(yTicks, yOf));
  root.append(svg("polyline", { class: "line", points: points.map((p, i) => `${xOf(xs[i])},${yOf(p.value)}`).join(" ") }));
  const every = Math.ceil(points.length / 20);
  points.forEach((p, i) => {
    const dot = svg("circle", { class: "dot", cx: xOf(xs[i]), cy: yOf(p.value), r: points.length > 200 ? 1.5 : 3 });
    dot.append(svg("title", {}, `${p.label}: ${p.value}`));
    root.append(dot);
    if (i % every === 0) root.append(xLabel(xOf(xs[i]), p.label));
  });
  return root;
}

// Sturges' rule for the number of bins, at most 40.
function histogram(values, title) {
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const n = Math.min(40, Math.ceil(Math.log2(values.length)) + 1);
  const width = (hi - lo) / n || 1;
  const counts = new Array(n).fill(0);
  for (const v of values) counts[Math.min(n - 1, Math.floor((v - lo) / width))] += 1;
  const label = (i) => Number((lo + i * width).toPrecision(4)).toLocaleString("en-US");
  return bars(counts.map((c, i) => ({ label: `${label(i)}–${label(i + 1)}`, value: c })), title);
}

// The chart of `rows` (arrays of cell text): x from column xIndex, y from column yIndex. A histogram
// uses only y. Rows whose y is not a number are left out; null when nothing is left to draw.
export function chart(kind, rows, xIndex, yIndex, title) {
  const points = rows
    .map((r) => ({ label: r[xIndex] ?? "NULL", x: r[xIndex] === null ? NaN : Number(r[xIndex]), value: Number(r[yIndex]) }))
    .filter((p, i) => rows[i][yIndex] !== null && rows[i][yIndex] !== "" && Number.isFinite(p.value));
  if (!points.length) return null;
  if (kind === "histogram") return histogram(points.map((p) => p.value), title);
  if (kind === "line") return line(points, title);
  return bars(points, title);
}
