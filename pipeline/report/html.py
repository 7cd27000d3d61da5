"""The report as one HTML file that opens offline and can be mailed: a contents list linking every
artefact, tables that scroll inside their own box (not the page), and each figure embedded as a
small palette PNG (at most ``THUMB_WIDTH`` pixels wide) that links to the full-size file beside
the report (``<experiment>/figures/*.png``). The full-size figures made the page 11.8 MB."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

THUMB_WIDTH = 720   # pixels: readable on a laptop screen; the link opens the original
PALETTE = 128       # colours: plots have few, and a palette PNG of a plot is a fraction of the RGBA one


def slug(title: str) -> str:
    """GitHub's anchor for a Markdown heading (lower case, punctuation dropped, spaces to hyphens),
    used as the HTML id too, so the contents links work on GitHub and in the HTML file."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def thumbnail(path: Path) -> bytes:
    """A small palette PNG of the figure at ``path``."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.width > THUMB_WIDTH:
            img = img.resize((THUMB_WIDTH, round(img.height * THUMB_WIDTH / img.width)), Image.LANCZOS)
        buf = io.BytesIO()
        img.quantize(colors=PALETTE, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _inline(text: str) -> str:
    """Escaped text with Markdown's **bold**, `code` and [links](#anchor) as HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"\[([^\]]+)\]\((#[\w\-]+)\)", r'<a href="\2">\1</a>', out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def to_html(secs: list[dict[str, Any]], md: str) -> str:
    """The Markdown report as HTML (the same lines), figures embedded as linked thumbnails."""
    body = []
    for line in md.splitlines():
        if line.startswith("!["):
            path = line[line.index("(") + 1:-1]
            fig = next(f for s in secs for f in s["figures"] if str(f).endswith(path))
            data = base64.b64encode(thumbnail(fig)).decode()
            body.append(f'<a href="{html.escape(path)}"><img alt="{html.escape(fig.stem)}" '
                        f'src="data:image/png;base64,{data}" style="max-width:100%"></a>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            title = line[level:].strip()
            body.append(f'<h{level} id="{slug(title)}">{html.escape(title)}</h{level}>')
        elif line.startswith("|---"):
            continue
        elif line.startswith("| "):
            cells = [_inline(c.strip()) for c in line.strip("|").split(" | ")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        elif line.startswith(("- ", "  - ")):
            indent = "margin-left:1.5em;" if line.startswith("  ") else ""
            body.append(f'<p style="{indent}margin-top:0;margin-bottom:0">&bull; {_inline(line.strip()[2:])}</p>')
        elif line:
            body.append(f"<p>{_inline(line)}</p>")
    out, in_table = [], False
    for b in body:  # consecutive rows make one table, in a box that scrolls sideways on its own
        if b.startswith("<tr>") and not in_table:
            out.append('<div class="scroll"><table>')
            in_table = True
        elif not b.startswith("<tr>") and in_table:
            out.append("</table></div>")
            in_table = False
        out.append(b)
    if in_table:
        out.append("</table></div>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:12px;margin:.5em 0}td{border:1px solid #ccc;padding:2px 6px}"
             "tr:first-child td{font-weight:bold}.scroll{overflow-x:auto;max-width:100%}")
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>Report</title><style>{style}</style></head>"
    return head + "<body>" + "\n".join(out) + "</body></html>\n"
