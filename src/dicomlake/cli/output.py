"""What the gcloud-style commands print: resources as YAML or JSON with sorted keys as gcloud does, lists as
gcloud's tables, and the progress line of a running operation."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import yaml

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def render(resource: dict[str, Any], format_: str) -> str:
    """One resource as `yaml` or `json`, ending in a newline."""
    if format_ == "json":
        return json.dumps(resource, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    # No line width: a long name or URL stays on one line, for grep and copy.
    return yaml.safe_dump(resource, sort_keys=True, allow_unicode=True, default_flow_style=False, width=1 << 30)


def render_list(items: Sequence[dict[str, Any]], format_: str, columns: Sequence[Column] = ()) -> str:
    """Resources as a `table` of `columns`, a JSON array, or YAML documents separated by `---`."""
    if format_ == "table":
        return table([name for name, _ in columns], [[cell(get(i)) for _, get in columns] for i in items])
    if format_ == "json":
        return json.dumps(list(items), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return "---\n".join(render(item, "yaml") for item in items)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks; empty when there are no rows."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines) + "\n"


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    return str(value)


def scope(name: str, collection: str) -> str:
    """gcloud's `name.scope(collection)`: what follows `collection/` in a resource name."""
    return name.partition(f"/{collection}/")[2]


def progress_line(done: int, total: int, elapsed: float, unit: str, width: int = 80) -> str:
    """`[#####.....]  120/500 files  35.2/s  ETA 0:11`, the bar taking what `width` leaves. A total of 0
    means nothing is counted yet (the operation is still listing its work)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = duration((total - done) / rate) if rate > 0 and total else "--:--"
    text = f"  {done}/{total or '?'} {unit}  {rate:.1f}/s  ETA {eta}"
    slots = max(10, width - len(text) - 2)
    filled = min(slots, slots * done // total) if total else 0
    return f"[{'#' * filled}{'.' * (slots - filled)}]{text}"


def duration(seconds: float) -> str:
    """`0:07`, `12:05`, `1:02:03`."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


class ProgressBar:
    """The progress line on a terminal, redrawn in place; the rate counts from when it was made."""

    def __init__(self, stream: TextIO, unit: str) -> None:
        self.stream = stream
        self.unit = unit
        self.started = time.monotonic()

    def draw(self, done: int, total: int) -> None:
        # One column short of the terminal, so the line never wraps and `\r` always returns to its start.
        width = terminal_width(self.stream) - 1
        self.stream.write("\r" + progress_line(done, total, time.monotonic() - self.started, self.unit, width))
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()
