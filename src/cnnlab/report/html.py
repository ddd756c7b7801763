"""Render a report :class:`~cnnlab.report.document.Document` as one self-contained HTML page.

The page has no external assets (figures are base64 ``data:`` URIs, CSS is
inline) so it can be mailed or archived as a single file. Every piece of text
goes through :func:`html.escape` with quotes, and a Content-Security-Policy
that forbids scripts, frames and remote loads backs that up: even a renderer
bug could not make a hostile variant label run code.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from cnnlab.report.document import Bullets, Code, Document, Figure, Paragraph, Section, Table

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 68rem; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f5; }
caption { caption-side: bottom; font-size: .8rem; color: #555; text-align: left; padding-top: .3rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .85rem; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def to_html(document: Document) -> str:
    """The document as a complete HTML page with figures inlined.

    Args:
        document: The report content.

    Returns:
        The page text.
    """
    body = [f"<h1>{_e(document.title)}</h1>"]
    for section in document.sections:
        body.append(_section(section))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(document.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _section(section: Section) -> str:
    level = min(max(section.level, 2), 6)
    parts = [f"<section>\n<h{level}>{_e(section.title)}</h{level}>"]
    parts += [_block(block) for block in section.blocks]
    parts.append("</section>")
    return "\n".join(parts)


def _block(block: object) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_e(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>\n" + "\n".join(f"<li>{_e(item)}</li>" for item in block.items) + "\n</ul>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return (
            f'<figure><img src="{data_uri(block.path)}" alt="{_e(block.caption)}">'
            f"<figcaption>{_e(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Code):
        return f"<pre><code>{_e(block.text.rstrip())}</code></pre>"
    raise TypeError(f"cannot render {type(block).__name__} as HTML")


def _table(table: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    caption = f"<caption>{_e(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


def data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI (base64 needs no escaping)."""
    payload = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{payload}"
