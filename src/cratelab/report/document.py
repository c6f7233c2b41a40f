"""A small document model (headings, paragraphs, lists, tables, images) rendered to Markdown and to
self-contained HTML, so both files carry the same content.

Text is plain text everywhere: the renderers escape it (run names come from users and may hold `<script>`
or Markdown syntax). Links are relative paths, percent-encoded.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Sequence, Union
from urllib.parse import quote


@dataclass(frozen=True)
class Link:
    text: str
    href: str  # a relative path inside the sweep folder


Inline = Union[str, Link]
Text = Union[str, Sequence[Inline]]  # one string, or a run of strings and links


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: Text


@dataclass
class Bullets:
    items: list[Text]


@dataclass
class Table:
    header: list[str]
    rows: list[list[Text]]
    caption: str = ""
    numeric: set[int] = field(default_factory=set)  # columns aligned right


@dataclass
class Image:
    src: str  # relative path of a PNG
    alt: str


Block = Union[Heading, Paragraph, Bullets, Table, Image]


def _parts(text: Text) -> list[Inline]:
    return [text] if isinstance(text, (str, Link)) else list(text)


def _href(path: str) -> str:
    return quote(path, safe="/#")


# ---------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~])")


def md_escape(text: str) -> str:
    """Backslash-escape Markdown syntax (and raw HTML) so text shows as typed; newlines become spaces."""
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\r", " ").replace("\n", " "))


def _md_inline(text: Text) -> str:
    return "".join(f"[{md_escape(p.text)}]({_href(p.href)})" if isinstance(p, Link) else md_escape(p)
                   for p in _parts(text))


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + md_escape(block.text)
    if isinstance(block, Paragraph):
        return _md_inline(block.text)
    if isinstance(block, Bullets):
        return "\n".join("- " + _md_inline(item) for item in block.items)
    if isinstance(block, Table):
        align = ["---:" if i in block.numeric else "---" for i in range(len(block.header))]
        lines = ([f"*{md_escape(block.caption)}*", ""] if block.caption else [])
        lines += ["| " + " | ".join(md_escape(h) for h in block.header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(_md_inline(cell) for cell in row) + " |" for row in block.rows]
        return "\n".join(lines)
    return f"![{md_escape(block.alt)}]({_href(block.src)})"


def to_markdown(blocks: Sequence[Block]) -> str:
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# ---------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;max-width:1180px;
 margin:20px auto;padding:0 18px}
h1{font-size:23px}h2{font-size:18px;margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin-top:20px}a{color:#0645ad}
table{border-collapse:collapse;margin:8px 0 14px}td,th{padding:3px 9px;border-bottom:1px solid #eee;
 text-align:left;vertical-align:top}th{background:#f4f4f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{caption-side:top;text-align:left;font-style:italic;color:#444;padding-bottom:4px}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
"""


def _html_inline(text: Text) -> str:
    return "".join(f'<a href="{html.escape(_href(p.href))}">{html.escape(p.text)}</a>' if isinstance(p, Link)
                   else html.escape(p) for p in _parts(text))


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_html_inline(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        body = "".join(
            "<tr>" + "".join(f'<td{" class=num" if i in block.numeric else ""}>{_html_inline(cell)}</td>'
                             for i, cell in enumerate(row)) + "</tr>"
            for row in block.rows)
        return f"<table>{caption}<tr>{head}</tr>{body}</table>"
    return f'<p><img src="{html.escape(_href(block.src))}" alt="{html.escape(block.alt)}"></p>'


def to_html(title: str, blocks: Sequence[Block]) -> str:
    body = "\n".join(_html_block(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
