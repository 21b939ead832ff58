"""A self-contained HTML report: inline CSS, images as base64 data URIs, no external resources.

It opens from disk in any browser with no server and no network.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1100px; color: #1d2433; background: #fff; line-height: 1.4; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px;
     border-bottom: 1px solid #d0d4dc; padding-bottom: 3px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { border: 1px solid #d0d4dc; padding: 4px 10px; text-align: left; }
th { background: #eef1f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; border: 1px solid #e3e6ec; }
figcaption { font-size: 13px; color: #4a5266; } .note { font-size: 13px; color: #4a5266; }
.warn { background: #fff4e5; border-left: 4px solid #f4a261; padding: 6px 10px; }
code { background: #f3f4f7; padding: 1px 4px; }
"""


@dataclass
class Figure:
    key: str  # file stem, also the anchor
    title: str
    caption: str
    png: bytes


@dataclass
class Table:
    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    note: str = ""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(v: object) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return '<td class="num">–</td>'
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def render_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in t.rows)
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    return f"<h2>{html.escape(t.title)}</h2><table><tr>{head}</tr>{body}</table>{note}"


def render_html(title: str, intro: Sequence[str], tables: Sequence[Table],
                figures: Sequence[Figure], warnings: Sequence[str] = (),
                footer: str = "") -> str:
    """The whole report as one HTML string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f'<p class="note">{html.escape(line)}</p>' for line in intro]
    parts += [f'<p class="warn">{html.escape(w)}</p>' for w in warnings]
    parts += [render_table(t) for t in tables]
    for f in figures:
        parts.append(
            f'<h2 id="{html.escape(f.key)}">{html.escape(f.title)}</h2><figure>'
            f'<img alt="{html.escape(f.title)}" src="{data_uri(f.png)}">'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    if footer:
        parts.append(f'<p class="note">{html.escape(footer)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)
