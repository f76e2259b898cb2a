"""HTML primitives of the run report: escaping, numbers, tables, embedded PNGs and the page.

Every piece of text goes through :func:`esc` (``html.escape``, quotes included) unless it is a
:class:`Markup`, which is HTML built here from escaped parts. Pictures are ``data:image/png;base64``
URIs, the style sheet is inline, and the page loads nothing: it works offline, as one file.
"""
from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

VALUE_MAX_CHARS = 160  # longer Decision values are cut (the full value is in plans.json)


class Markup(str):
    """HTML that is already safe (built from escaped parts): :func:`esc` passes it through."""


def esc(value: Any) -> Markup:
    """``value`` as text that is safe inside HTML elements and attribute values."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> Markup:
    return Markup(esc(sep).join(esc(p) for p in parts))


def tag(name: str, content: Any = "", **attrs: Any) -> Markup:
    """``<name attrs>content</name>`` with the content and every attribute value escaped
    (``class_`` gives ``class``; a None attribute is left out)."""
    text = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return Markup(f"<{name}{text}>{esc(content)}</{name}>")


def num(value: Any, digits: int = 4) -> str:
    """A number for a table: ``digits`` decimals, "–" for None or NaN, integers as they are."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def dims(values: Sequence[Any]) -> str:
    """``[2.0, 0.8, 0.8]`` as ``2 × 0.8 × 0.8``."""
    return " × ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values)


def value_text(value: Any) -> str:
    """A Decision's value (any JSON) on one line, cut after :data:`VALUE_MAX_CHARS` characters."""
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        text = dims(value) if value else "[]"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= VALUE_MAX_CHARS else text[:VALUE_MAX_CHARS - 1] + "…"


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, caption: Any = None,
          highlight: Iterable[int] = (), numeric_from: int = 1) -> Markup:
    """A table; cells are escaped unless they are :class:`Markup`. Rows whose index is in ``highlight`` are
    marked (class ``win``); columns from ``numeric_from`` on are right-aligned (class ``n``)."""
    marked = set(highlight)
    head = "".join(tag("th", h, class_="n" if i >= numeric_from else None) for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(tag("td", c, class_="n" if i >= numeric_from else None) for i, c in enumerate(row))
        row_class = ' class="win"' if r in marked else ""
        body.append(f"<tr{row_class}>{cells}</tr>")
    cap = tag("caption", caption) if caption is not None else ""
    return Markup(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def png_img(png: bytes, alt: str, *, width_px: int | None = None) -> Markup:
    """An ``<img>`` with the PNG embedded as a base64 data URI (nothing to load)."""
    data = base64.b64encode(png).decode("ascii")
    width = f' width="{int(width_px)}"' if width_px else ""
    return Markup(f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}"{width}>')


def code_block(text: str) -> Markup:
    return Markup(f"<pre>{esc(text)}</pre>")


def section(anchor: str, title: Any, *parts: Any) -> Markup:
    return Markup(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{join(parts)}</section>')


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d232a;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:1.2rem 1.6rem 3rem}
header{background:#1f3a5f;color:#fff;padding:1.1rem 1.6rem}
header h1{margin:0 0 .3rem;font-size:1.45rem}
header p{margin:.1rem 0;opacity:.9;font-size:.92rem}
nav{margin:.8rem 0 0;font-size:.9rem}
nav a{color:#cfe3ff;margin-right:1rem}
section{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:.6rem 1.2rem 1rem;margin:1rem 0}
h2{font-size:1.2rem;border-bottom:1px solid #e4e8ee;padding-bottom:.3rem}
h3{font-size:1.02rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;margin:.4rem 0 .8rem;font-size:.86rem}
caption{text-align:left;font-weight:600;padding:.2rem 0}
th,td{border:1px solid #dde2e8;padding:.22rem .5rem;vertical-align:top;text-align:left}
th{background:#eef2f7}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.win td{background:#e7f6ea;font-weight:600}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.84rem}
code{background:#f0f2f5;padding:.05rem .3rem;border-radius:3px}
pre{background:#f0f2f5;padding:.6rem;overflow-x:auto;white-space:pre-wrap}
.missing{border-left:4px solid #d08b00;background:#fff8e6;padding:.4rem .8rem;margin:.5rem 0}
.note{border-left:4px solid #b3261e;background:#fdecea;padding:.4rem .8rem;margin:.5rem 0}
.ok{color:#137333;font-weight:600}
.todo{color:#a15c00;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:.8rem}
figure{margin:.3rem 0;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #e4e8ee}
figcaption{font-size:.84rem;color:#4a5560}
details{margin:.5rem 0}
.muted{color:#66717c;font-size:.88rem}
"""


def page(title: str, header: Any, body: Iterable[Any]) -> str:
    """The whole document: inline style, no scripts, nothing external."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>{esc(header)}<main>\n"
            + "\n".join(esc(b) for b in body) + "\n</main></body></html>\n")
