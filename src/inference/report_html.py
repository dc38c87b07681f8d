"""The evaluation report (report.md, written by src/training/report.py) as one HTML page.

Only the Markdown that report.py writes is understood: headings, paragraphs, quotes, tables, images
and inline `code` and **bold**. Every piece of text is escaped first (image names and paths come
from the user's data), and images may only name a file of the same folder, served by /report/.
"""

from __future__ import annotations

import html
import re

IMAGE = re.compile(r"^!\[([^\]]*)\]\(([\w.-]+\.png)\)$")
STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:0 auto;padding:0 1rem;color:#1d2125}"
    "table{border-collapse:collapse;margin:.6rem 0;display:block;overflow-x:auto}"
    "td,th{border:1px solid #dde1e6;padding:.2rem .5rem;text-align:left}"
    "blockquote{background:#fff4d6;border-left:4px solid #e0b84a;margin:.6rem 0;padding:.4rem .8rem}"
    "img{max-width:100%;height:auto}code{overflow-wrap:anywhere}"
)


def inline(text: str) -> str:
    text = html.escape(text, quote=True)
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def table(rows: list[str]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    body = [r for r in cells[1:] if not all(set(c) <= {"-", ":"} for c in r)]
    head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
    rest = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>"


def block(lines: list[str]) -> str:
    first = lines[0]
    if first.startswith("#"):
        level = min(len(first) - len(first.lstrip("#")), 3)
        return f"<h{level}>{inline(first.lstrip('#').strip())}</h{level}>"
    if first.startswith("|"):
        return table(lines)
    if first.startswith(">"):
        return "<blockquote>" + " ".join(inline(line.lstrip("> ")) for line in lines) + "</blockquote>"
    if first.startswith("!"):
        return "".join(image(line.strip()) for line in lines)
    return "<p>" + " ".join(inline(line) for line in lines) + "</p>"


def image(line: str) -> str:
    found = IMAGE.match(line)
    if not found:  # anything but a plot of the same folder is shown as text
        return f"<p>{inline(line)}</p>"
    return f'<p><img src="report/{found[2]}" alt="{html.escape(found[1])}"></p>'


def report_page(markdown: str) -> str:
    """report.md as a self-contained page; its one style block is pinned by the service's CSP."""
    blocks, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.strip() and not line.startswith("#"):
            current.append(line)
            continue
        if current:
            blocks.append(block(current))
        current = []
        if line.startswith("#"):
            blocks.append(block([line]))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Evaluation report</title><style>{STYLE}</style></head><body>"
        + "".join(blocks)
        + "</body></html>"
    )
