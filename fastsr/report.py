"""A self-contained HTML page comparing SR methods by eye as well as by number (`fastsr eval --report DIR`).

A table of means says which method wins, not where: the page puts each image's panels (the LR enlarged by
bicubic, each method, HR) under one before/after slider and one zoom that shows the same region of every
panel at pixel scale, next to the same numbers as the JSON output. The folder stands alone: one index.html
(CSS and JavaScript inline, no libraries) and PNGs it names by relative paths, so it opens from file:// with
no server or network and can be copied or zipped as a whole.

Pictures are written as each image is scored (`Report.add`), so memory stays one image's worth on large
sets; every file is written atomically and index.html last (`Report.finish`), so a page that exists names
only complete pictures. When several processes share an evaluation (`fastsr eval --processes N`), each
writes the pictures of its own images into the one folder and the first writes the page for all.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from fastsr.data import save_image
from fastsr.errors import ImageError
from fastsr.evaluate import METRIC_LABELS, ONE_PROCESS, Shard
from fastsr.ops import imresize, quantize
from fastsr.util import write_atomic

LR_PANEL = "LR (bicubic)"
HR_PANEL = "HR"
PAGE = "index.html"
_NAME_MAX = 80  # characters of a set's or image's name kept in its folder's name


class Report:
    """The report folder `out_dir` for SR at `scale`: `add_set` each set, `add` each scored image, then `finish`
    with the table."""

    def __init__(self, out_dir: Path, scale: int):
        self.out_dir = Path(out_dir)
        self.scale = scale
        self._set_folders: dict[str, str] = {}
        self._image_folders: dict[str, dict[str, str]] = {}  # set -> image -> its folder's name, in the set's order
        self._pictures: dict[str, dict[str, dict]] = {}  # set -> image -> {"dir", "panels", "size"}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A page from an earlier run would show this run's pictures under that run's numbers.
        (self.out_dir / PAGE).unlink(missing_ok=True)

    def add_set(self, set_name: str, images: Sequence[str]) -> None:
        """Name the folders of a set and of its `images` (in the set's order) before any image is added: each
        name made safe for any file system and URL, and unique in its folder. Named from the whole set, they
        are the same in every process of a shared evaluation, whichever images each one writes."""
        self._set_folders[set_name] = _unique(safe_name(set_name), self._set_folders.values())
        folders: dict[str, str] = {}
        for image in images:
            folders[image] = _unique(safe_name(image), folders.values())
        self._image_folders[set_name] = folders

    def add(self, set_name: str, image: str, lr: torch.Tensor, outputs: dict[str, torch.Tensor],
            hr: torch.Tensor) -> None:
        """Write one image's panels now: LR 1x3xhxw enlarged by MATLAB bicubic, each method's SR (label -> 1x3xHxW,
        rounded to uint8 levels), HR 1x3xHxW; all float in [0, 1] on the CPU."""
        panels = [(LR_PANEL, imresize(lr.float(), scale=self.scale)), *outputs.items(), (HR_PANEL, hr)]
        _check_sizes(image, panels, tuple(hr.shape[-2:]))
        folder = f"images/{self._set_folders[set_name]}/{self._image_folders[set_name][image]}"
        for n, (_, picture) in enumerate(panels):
            save_image(self.out_dir / folder / f"{n}.png", quantize(picture))
        self._pictures.setdefault(set_name, {})[image] = {
            "dir": folder, "panels": [label for label, _ in panels], "size": list(hr.shape[-2:])}

    def finish(self, table: dict, shard: Shard = ONE_PROCESS) -> Path | None:
        """Write index.html showing `table` (as `fastsr.evaluate.results_to_json` returns it) with the pictures
        added so far; returns its path. With several processes (`shard`, a collective: all must call) the first
        writes it with every process's pictures, in each set's order, and the others return None; a picture
        another process wrote that is not in the folder (processes on machines that do not share it) is
        refused in one line."""
        added = {(set_name, image): entry for part in shard.collect(self._pictures)
                 for set_name, entries in part.items() for image, entry in entries.items()}
        if shard.rank != 0:
            return None
        pictures = {set_name: {image: added[set_name, image] for image in images if (set_name, image) in added}
                    for set_name, images in self._image_folders.items()}
        missing = [entry["dir"] for entry in added.values() if not (self.out_dir / entry["dir"]).is_dir()]
        if missing:
            raise ImageError(f"{self.out_dir}: the pictures of {len(missing)} image(s) that other processes wrote "
                             f"are not in it ({missing[0]}, ...); on several machines, put the report's folder on "
                             "a file system they all share")
        view = {"images": pictures, "labels": _metric_labels(table["metrics"]),
                "digits": {m: _digits(m) for m in table["metrics"]}}
        path = self.out_dir / PAGE
        write_atomic(path, render_page(table, view).encode())
        return path


def _check_sizes(image: str, panels: Sequence[tuple[str, torch.Tensor]], size: tuple[int, int]) -> None:
    """The slider and the zoom lay panels over each other pixel for pixel: all must be HR's size."""
    for label, picture in panels:
        if tuple(picture.shape[-2:]) != size:
            raise ValueError(f"{image}: panel {label} is {picture.shape[-2]}x{picture.shape[-1]}, "
                             f"HR is {size[0]}x{size[1]}; every panel must be HR's size")


def safe_name(name: str) -> str:
    """`name` as a folder name safe in paths and URLs: letters, digits, `.`, `_`, `-` (others become `_`),
    no leading dot, at most `_NAME_MAX` characters, never empty."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")[:_NAME_MAX]
    return name or "_"


def _unique(name: str, taken) -> str:
    """`name`, or `name-2`, `name-3`, ... if taken (ignoring case, for case-insensitive file systems)."""
    taken = {t.lower() for t in taken}
    candidate, k = name, 1
    while candidate.lower() in taken:
        k += 1
        candidate = f"{name}-{k}"
    return candidate


def _metric_labels(metrics: Sequence[str]) -> dict[str, str]:
    return {m: METRIC_LABELS.get(m, m.upper()) for m in metrics}


def _digits(metric: str) -> int:
    """Decimals shown, as the console table shows them: PSNR in dB to 0.01, the rest to 0.0001."""
    return 2 if metric == "psnr" else 4


def script_json(data) -> str:
    """`data` as JSON to put inside a <script> element: `<`, `>` and `&` as \\u escapes, so a name holding
    `</script>` or `<!--` stays text; infinite and NaN values (a PSNR of identical images) as the strings
    "Infinity", "-Infinity", "NaN", since JSON has no such numbers (the page reads them back as numbers)."""
    text = json.dumps(_finite(data), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(data):
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if math.isnan(data) else ("Infinity" if data > 0 else "-Infinity")
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def render_page(table: dict, view: dict) -> str:
    """index.html: the page's CSS and script with `table` (the results) and `view` (pictures, metric labels,
    decimals) embedded as JSON; the script builds the tables and viewers from them."""
    return (_PAGE.replace("@CSS@", _CSS).replace("@JS@", _JS)
            .replace("@TABLE@", script_json(table)).replace("@VIEW@", script_json(view)))


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fastsr evaluation report</title>
<style>@CSS@</style>
</head>
<body>
<main id="report">
<h1>fastsr evaluation report</h1>
<noscript>This page builds its tables and viewers with JavaScript; the results are also in the JSON inside it.</noscript>
</main>
<script type="application/json" id="table-data">@TABLE@</script>
<script type="application/json" id="view-data">@VIEW@</script>
<script>@JS@</script>
</body>
</html>
"""

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 1em 2em; color: #222; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
caption { caption-side: bottom; text-align: left; color: #555; padding-top: 0.4em; max-width: 60em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #e4e4e4; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
th[data-col] { cursor: pointer; user-select: none; }
th[data-col]:hover { background: #e8e8e8; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
.best { font-weight: bold; }
.scroll { max-height: 22em; overflow: auto; border: 1px solid #ddd; display: inline-block; max-width: 100%; }
.scroll thead th { position: sticky; top: 0; }
.scroll thead tr:nth-child(2) th { top: 1.8em; }
.per-image tbody tr { cursor: pointer; }
.per-image tbody tr:hover { background: #f2f7ff; }
.per-image tbody tr.selected { background: #dbe8ff; }
.viewer { margin: 1em 0; }
.controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin: 0.5em 0; }
.stage { width: 100%; }
.compare { position: relative; touch-action: none; cursor: crosshair; }
.compare img { display: block; width: 100%; height: auto; }
.compare.enlarged img, .zoom canvas { image-rendering: pixelated; }
.zoom canvas { display: block; }
.compare .overlay { position: absolute; left: 0; top: 0; height: 100%; }
.divider { position: absolute; top: 0; bottom: 0; width: 2px; margin-left: -1px; background: #fff;
           box-shadow: 0 0 2px #000; pointer-events: none; }
.marker { position: absolute; border: 1px solid #ff0; outline: 1px solid #000; pointer-events: none; }
.split { width: 100%; }
.side-labels { display: flex; justify-content: space-between; color: #555; }
.zoom { display: flex; flex-wrap: wrap; gap: 0.8em; margin-top: 0.8em; }
.zoom figure { margin: 0; width: min-content; }
.zoom figcaption { font-size: 12px; color: #444; }
.viewer.missing .stage, .viewer.missing .zoom, .viewer.missing .controls { display: none; }
"""

_JS = r"""
"use strict";
const TABLE = JSON.parse(document.getElementById("table-data").textContent);
const VIEW = JSON.parse(document.getElementById("view-data").textContent);
const ZOOM_SIZE = 192;  // CSS pixels of each zoomed panel's side
const ZOOM_FACTORS = [2, 4, 8, 16];
const RESULT_KEYS = ["metrics", "lower_is_better", "sets", "caption"];

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function clamp(v, lo, hi) { return Math.min(Math.max(v, lo), hi); }

// Infinite and NaN values come as strings (JSON has no such numbers).
function number(v) { return typeof v === "string" ? Number(v) : v; }

function formatValue(metric, v) {
  v = number(v);
  return Number.isFinite(v) ? v.toFixed(VIEW.digits[metric] ?? 4) : String(v);
}

function lowerIsBetter(metric) { return TABLE.lower_is_better.includes(metric); }

function metricHeader(metric) {
  return `${VIEW.labels[metric] ?? metric} ${lowerIsBetter(metric) ? "\u2193" : "\u2191"}`;
}

function bestOf(metric, values) {
  const finite = values.map(number).filter(v => !Number.isNaN(v));
  return lowerIsBetter(metric) ? Math.min(...finite) : Math.max(...finite);
}

function caption() {
  const arrows = TABLE.lower_is_better.length ? "; \u2193 lower is better, \u2191 higher is better" : "";
  if (TABLE.caption !== undefined) return TABLE.caption + arrows;  // fastsr eval's, as its console table
  const parts = [];
  if (TABLE.scale !== undefined) parts.push(`\u00d7${TABLE.scale}`);
  if (TABLE.degradation !== undefined) parts.push(`degradation: ${TABLE.degradation}`);
  if (TABLE.metrics.some(m => m === "psnr" || m === "ssim")) parts.push(protocolNote());
  parts.push("mean of per-image values");
  if (TABLE.lower_is_better.length) parts.push("\u2193 lower is better, \u2191 higher is better");
  return parts.join("; ");
}

function protocolNote() {
  let note = `PSNR (dB) and SSIM on the ${TABLE.channel ?? "Y"} channel`;
  if (TABLE.y !== undefined) note += ` (${TABLE.y})`;
  if (TABLE.crop_border !== undefined) note += `, ${TABLE.crop_border}-pixel border shaved`;
  return note;
}

function settingsBlock() {
  const items = Object.entries(TABLE).filter(([k]) => !RESULT_KEYS.includes(k)).map(([k, v]) =>
    el("li", {textContent: `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`}));
  return el("details", {className: "settings"}, [el("summary", {textContent: "Settings"}), el("ul", {}, items)]);
}

// ---- tables ----

function sortHeader(text, col, metric) {
  const th = el("th", {textContent: text, scope: "col", tabIndex: 0, title: "sort by this column"});
  th.dataset.col = col;
  th.dataset.better = metric === null ? "" : (lowerIsBetter(metric) ? "low" : "high");
  return th;
}

function textCell(text) {
  const td = el("td", {textContent: text});
  td.dataset.sort = text;
  return td;
}

function valueCell(metric, value, best) {
  const v = number(value);
  const td = el("td", {className: "number", textContent: formatValue(metric, v)});
  td.dataset.sort = v;
  td.dataset.kind = "number";
  if (v === best) td.classList.add("best");
  return td;
}

function summaryTable(set) {
  const methods = Object.keys(set.methods);
  const head = el("tr", {}, [sortHeader("Method", 0, null),
                             ...TABLE.metrics.map((m, i) => sortHeader(metricHeader(m), i + 1, m))]);
  const best = {};
  for (const m of TABLE.metrics) best[m] = methods.length > 1 ? bestOf(m, methods.map(k => set.methods[k][m])) : null;
  const rows = methods.map(k =>
    el("tr", {}, [textCell(k), ...TABLE.metrics.map(m => valueCell(m, set.methods[k][m], best[m]))]));
  const table = el("table", {className: "summary"},
                   [el("caption", {textContent: caption()}), el("thead", {}, [head]), el("tbody", {}, rows)]);
  makeSortable(table);
  return table;
}

function perImageTable(set, onSelect) {
  const methods = Object.keys(set.methods);
  const image = sortHeader("Image", 0, null);
  image.rowSpan = 2;
  const groups = TABLE.metrics.map(m => el("th", {textContent: metricHeader(m), colSpan: methods.length, scope: "colgroup"}));
  const names = TABLE.metrics.flatMap((m, i) => methods.map((k, j) => sortHeader(k, 1 + i * methods.length + j, m)));
  const rows = set.images.map((name, n) => perImageRow(set, methods, name, n));
  const table = el("table", {className: "per-image"}, [
    el("caption", {textContent: "Per image: click a row to view it"}),
    el("thead", {}, [el("tr", {}, [image, ...groups]), el("tr", {}, names)]), el("tbody", {}, rows)]);
  makeSortable(table);
  for (const row of rows) {
    const choose = () => { selectRow(table, row); onSelect(row.dataset.image); };
    row.addEventListener("click", choose);
    row.addEventListener("keydown", e => { if (e.key === "Enter") choose(); });
  }
  return table;
}

function perImageRow(set, methods, name, n) {
  const cells = [textCell(name)];
  for (const m of TABLE.metrics) {
    const values = methods.map(k => set.methods[k].per_image[m][n]);
    const best = methods.length > 1 ? bestOf(m, values) : null;
    cells.push(...values.map(v => valueCell(m, v, best)));
  }
  const row = el("tr", {tabIndex: 0}, cells);
  row.dataset.image = name;
  return row;
}

function selectRow(table, row) {
  for (const r of table.tBodies[0].rows) r.classList.toggle("selected", r === row);
}

function makeSortable(table) {
  for (const th of table.querySelectorAll("th[data-col]")) {
    th.addEventListener("click", () => sortBy(table, th));
    th.addEventListener("keydown", e => { if (e.key === "Enter") sortBy(table, th); });
  }
}

// First click: best first (names A to Z); each further click reverses.
function nextOrder(th) {
  const now = th.getAttribute("aria-sort");
  if (now) return now === "ascending" ? "descending" : "ascending";
  return th.dataset.better === "high" ? "descending" : "ascending";
}

function compareCells(a, b) {
  if (a.dataset.kind !== "number") return a.dataset.sort.localeCompare(b.dataset.sort);
  const x = Number(a.dataset.sort), y = Number(b.dataset.sort);
  return (Number.isNaN(x) ? -Infinity : x) - (Number.isNaN(y) ? -Infinity : y) || 0;
}

function sortBy(table, th) {
  const col = Number(th.dataset.col);
  const order = nextOrder(th);
  for (const other of table.querySelectorAll("th[data-col]")) other.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", order);
  const body = table.tBodies[0];
  const rows = [...body.rows].sort((a, b) => compareCells(a.cells[col], b.cells[col]));
  if (order === "descending") rows.reverse();
  body.append(...rows);
}

// ---- viewer: a before/after slider between two panels and a zoom of one region of every panel ----

function panelSelect(className, label) {
  return el("select", {className, title: label});
}

function fillPanels(select, panels, choice) {
  select.replaceChildren(...panels.map((p, n) => el("option", {value: n, textContent: p})));
  select.value = String(choice);
}

class Viewer {
  constructor(setName) {
    this.setName = setName;
    this.split = 50;
    this.factor = 4;
    this.centre = null;
    this.entry = null;
    this.buildDom();
    this.listen();
  }

  buildDom() {
    this.title = el("h3");
    this.leftSelect = panelSelect("left", "left of the divider");
    this.rightSelect = panelSelect("right", "right of the divider");
    this.factorSelect = el("select", {className: "factor", title: "zoom"},
                           ZOOM_FACTORS.map(f => el("option", {value: f, textContent: `${f}\u00d7`})));
    this.factorSelect.value = String(this.factor);
    this.base = el("img", {className: "base", alt: "right panel"});
    this.overlay = el("img", {className: "overlay", alt: "left panel"});
    this.divider = el("div", {className: "divider"});
    this.marker = el("div", {className: "marker"});
    this.compare = el("div", {className: "compare", title: "drag: move the divider; click: zoom there"},
                      [this.base, this.overlay, this.divider, this.marker]);
    this.range = el("input", {type: "range", className: "split", min: 0, max: 100, step: 0.1, value: this.split});
    this.zoom = el("div", {className: "zoom"});
    const controls = el("div", {className: "controls"}, [
      el("label", {}, ["Left ", this.leftSelect]), el("label", {}, ["Right ", this.rightSelect]),
      el("label", {}, ["Zoom ", this.factorSelect])]);
    const sides = el("div", {className: "side-labels"}, [el("span", {className: "left-name"}), el("span", {className: "right-name"})]);
    this.stage = el("div", {className: "stage"}, [sides, this.compare, this.range]);
    this.node = el("div", {className: "viewer"}, [this.title, controls, this.stage, this.zoom]);
  }

  listen() {
    this.leftSelect.addEventListener("change", () => this.showSides());
    this.rightSelect.addEventListener("change", () => this.showSides());
    this.factorSelect.addEventListener("change", () => { this.factor = Number(this.factorSelect.value); this.drawZoom(); });
    this.range.addEventListener("input", () => this.setSplit(Number(this.range.value)));
    this.compare.addEventListener("pointerdown", e => this.pointerDown(e));
    this.compare.addEventListener("pointermove", e => this.pointerMove(e));
    this.compare.addEventListener("pointerup", e => this.pointerUp(e));
    this.compare.addEventListener("dragstart", e => e.preventDefault());
  }

  show(image) {
    this.entry = (VIEW.images[this.setName] ?? {})[image] ?? null;
    this.node.classList.toggle("missing", this.entry === null);
    this.title.textContent = this.entry ? image : `${image}: no pictures in this report`;
    if (!this.entry) return;
    const panels = this.entry.panels;
    const [h, w] = this.entry.size;
    fillPanels(this.leftSelect, panels, this.keptChoice(this.leftSelect, 1));
    fillPanels(this.rightSelect, panels, this.keptChoice(this.rightSelect, panels.length - 1));
    this.pictures = panels.map((p, n) => this.loadPicture(`${this.entry.dir}/${n}.png`));
    this.stage.style.maxWidth = `${Math.max(w, 320)}px`;
    this.compare.classList.toggle("enlarged", w < 320);
    this.centre = this.centre ? {x: clamp(this.centre.x, 0, w), y: clamp(this.centre.y, 0, h)} : {x: w / 2, y: h / 2};
    this.buildZoom(panels, image);
    this.showSides();
    this.drawZoom();
  }

  keptChoice(select, fallback) {
    const n = select.value === "" ? fallback : Number(select.value);
    return n < this.entry.panels.length ? n : fallback;
  }

  loadPicture(src) {
    const picture = new Image();
    picture.addEventListener("load", () => this.drawZoom());
    picture.src = src;
    return picture;
  }

  showSides() {
    const left = Number(this.leftSelect.value), right = Number(this.rightSelect.value);
    this.overlay.src = this.pictures[left].getAttribute("src");
    this.base.src = this.pictures[right].getAttribute("src");
    this.node.querySelector(".left-name").textContent = `\u2190 ${this.entry.panels[left]}`;
    this.node.querySelector(".right-name").textContent = `${this.entry.panels[right]} \u2192`;
    this.setSplit(this.split);
  }

  setSplit(percent) {
    this.split = clamp(percent, 0, 100);
    this.overlay.style.clipPath = `inset(0 ${100 - this.split}% 0 0)`;
    this.divider.style.left = `${this.split}%`;
    this.range.value = String(this.split);
  }

  // Where a pointer event falls on the compared pictures, as fractions of their width and height.
  fraction(e) {
    const box = this.compare.getBoundingClientRect();
    return {x: clamp((e.clientX - box.left) / box.width, 0, 1), y: clamp((e.clientY - box.top) / box.height, 0, 1)};
  }

  pointerDown(e) {
    this.drag = {x: e.clientX, y: e.clientY, moved: false};
    this.compare.setPointerCapture(e.pointerId);
  }

  pointerMove(e) {
    if (!this.drag) return;
    if (Math.hypot(e.clientX - this.drag.x, e.clientY - this.drag.y) > 3) this.drag.moved = true;
    if (this.drag.moved) this.setSplit(100 * this.fraction(e).x);
  }

  pointerUp(e) {
    if (this.drag && !this.drag.moved) this.setCentre(this.fraction(e));
    this.drag = null;
  }

  setCentre(f) {
    const [h, w] = this.entry.size;
    this.centre = {x: f.x * w, y: f.y * h};
    this.drawZoom();
  }

  buildZoom(panels, image) {
    this.canvases = panels.map(() => el("canvas"));
    this.zoom.replaceChildren(...panels.map((p, n) => el("figure", {}, [
      this.canvases[n], el("figcaption", {textContent: this.panelNote(p, n, image)})])));
  }

  // A method's panel shows its values on this image.
  panelNote(panel, n, image) {
    if (n === 0 || n === this.entry.panels.length - 1) return panel;
    const set = TABLE.sets[this.setName];
    const scores = set.methods[panel];
    const i = set.images.indexOf(image);
    if (!scores || i < 0) return panel;
    return `${panel}: ` + TABLE.metrics.map(m => `${VIEW.labels[m] ?? m} ${formatValue(m, scores.per_image[m][i])}`).join(", ");
  }

  // The zoomed region in HR pixels: ZOOM_SIZE / factor on a side (less on a smaller image), around the centre.
  region() {
    const [h, w] = this.entry.size;
    const side = Math.round(ZOOM_SIZE / this.factor);
    const sw = Math.min(side, w), sh = Math.min(side, h);
    return {x: clamp(Math.round(this.centre.x - sw / 2), 0, w - sw), y: clamp(Math.round(this.centre.y - sh / 2), 0, h - sh), w: sw, h: sh};
  }

  drawZoom() {
    if (!this.entry || !this.canvases) return;
    const r = this.region();
    this.canvases.forEach((canvas, n) => drawRegion(canvas, this.pictures[n], r, this.factor));
    this.placeMarker(r);
  }

  placeMarker(r) {
    const [h, w] = this.entry.size;
    Object.assign(this.marker.style, {left: `${100 * r.x / w}%`, top: `${100 * r.y / h}%`,
                                      width: `${100 * r.w / w}%`, height: `${100 * r.h / h}%`});
  }
}

// Region r of the picture, each pixel a factor x factor block: no smoothing.
function drawRegion(canvas, picture, r, factor) {
  canvas.width = r.w * factor;
  canvas.height = r.h * factor;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  const ready = picture.complete && picture.naturalWidth > 0;
  if (ready) ctx.drawImage(picture, r.x, r.y, r.w, r.h, 0, 0, canvas.width, canvas.height);
  canvas.dataset.region = `${r.x},${r.y},${r.w},${r.h}`;
  canvas.dataset.drawn = ready ? "yes" : "no";
}

// ---- the page ----

function setSection(name, set) {
  const viewer = new Viewer(name);
  const section = el("section", {className: "set"}, [
    el("h2", {textContent: `${name} (${set.images.length} image${set.images.length === 1 ? "" : "s"})`}),
    summaryTable(set)]);
  section.dataset.set = name;
  if (set.images.length) {
    const table = perImageTable(set, image => viewer.show(image));
    section.append(el("div", {className: "scroll"}, [table]), viewer.node);
    selectRow(table, table.tBodies[0].rows[0]);
    viewer.show(set.images[0]);
  }
  return section;
}

function buildPage() {
  const main = document.getElementById("report");
  main.append(settingsBlock());
  for (const [name, set] of Object.entries(TABLE.sets)) main.append(setSection(name, set));
}

buildPage();
"""
