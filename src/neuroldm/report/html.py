"""The report's building blocks as plain data, and their rendering to one self-contained HTML page.

A `Section` is a heading, a one-line explanation and a list of blocks (`Paragraph`, `Note`, `Table`, `Figure`,
`Details`). Figures are embedded as base64 ``data:`` URIs, the style is a few inline CSS rules, and the only
script counts images that failed to load (``document.body.dataset.brokenImages``) so a headless browser test can
check the page; nothing is fetched from anywhere.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

NOT_RUN = "Not run"


@dataclass
class Paragraph:
    text: str


@dataclass
class Note:
    """A short remark in a box: a stage that did not run, a skipped metric, a file that could not be read."""

    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str | None = None


@dataclass
class Figure:
    png: bytes
    caption: str


@dataclass
class Details:
    """A collapsed block of preformatted text (the configuration file)."""

    summary: str
    text: str


Block = Paragraph | Note | Table | Figure | Details


@dataclass
class Section:
    anchor: str
    title: str
    intro: str
    blocks: list[Block] = field(default_factory=list)


def not_run(what: str) -> Note:
    """The note of a stage whose outputs are missing, e.g. ``not_run("no evaluation/metrics.json")``."""
    return Note(f"{NOT_RUN}: {what}.")


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;max-width:1180px;
margin:0 auto;padding:0 24px 48px;background:#fff}
h1{font-size:26px;margin:28px 0 4px}h2{font-size:20px;margin:36px 0 6px;padding-top:8px;border-top:2px solid #dde3ea}
.sub{color:#5a6575;margin:0 0 10px}.intro{color:#3d4756;margin:0 0 12px}
nav ol{columns:2;margin:8px 0 0;padding-left:22px}nav a{color:#1f5fa8;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13.5px}
p.caption{font-weight:600;margin:14px 0 0;color:#2b3441}
th,td{border-bottom:1px solid #e3e7ec;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600}td.num{font-variant-numeric:tabular-nums}
.note{background:#fff8e6;border-left:4px solid #e0a800;padding:6px 12px;margin:8px 0;color:#5c4600}
figure{margin:10px 0 18px}figure img{max-width:100%;border:1px solid #e3e7ec}
figcaption{font-size:13px;color:#5a6575;margin-top:2px}
details{margin:8px 0}pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12.5px;max-height:600px}
"""

# counts images that did not load, for a headless browser test (and a reader's devtools)
_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (img) { return !img.complete || img.naturalWidth === 0; }).length;
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.brokenImages = String(broken);
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(tag: str, value: str) -> str:
    cls = ' class="num"' if value[:1].isdigit() or value[:1] in "-+–" else ""
    return f"<{tag}{cls}>{_e(value)}</{tag}>"


def render_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f'<p>{_e(block.text)}</p>'
    if isinstance(block, Note):
        return f'<p class="note">{_e(block.text)}</p>'
    if isinstance(block, Table):
        head = "".join(f"<th>{_e(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(_cell("td", str(v)) for v in row) + "</tr>" for row in block.rows)
        caption = f'<p class="caption">{_e(block.caption)}</p>' if block.caption else ""
        return f"{caption}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<figure><img alt="{_e(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_e(block.caption)}</figcaption></figure>")
    if isinstance(block, Details):
        return f"<details><summary>{_e(block.summary)}</summary><pre>{_e(block.text)}</pre></details>"
    raise TypeError(f"not a report block: {type(block).__name__}")


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page: title, table of contents, the sections in order, the image-check script."""
    toc = "".join(f'<li><a href="#{_e(s.anchor)}">{_e(s.title)}</a></li>' for s in sections)
    parts = [f'<section id="{_e(s.anchor)}"><h2>{_e(s.title)}</h2><p class="intro">{_e(s.intro)}</p>'
             + "".join(render_block(b) for b in s.blocks) + "</section>" for s in sections]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>"
            f"<h1>{_e(title)}</h1><p class=\"sub\">{_e(subtitle)}</p><nav><ol>{toc}</ol></nav>\n"
            + "\n".join(parts) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
