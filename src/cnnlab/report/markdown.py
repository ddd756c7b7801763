"""Render a report :class:`~cnnlab.report.document.Document` as Markdown.

Markdown viewers render raw HTML and links, so user text is escaped too:
``<``, ``>`` and ``&`` become entities (no tag can start) and Markdown
punctuation gets a backslash (no link, emphasis, table cell or ``$...$`` math,
which GitHub renders, can be forged).
The spec goes into a fenced block longer than any backtick run inside it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cnnlab.report.document import Bullets, Code, Document, Figure, Paragraph, Section, Table

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_PUNCTUATION = re.compile(r"([\\`*_\[\]|~$])")
_LINE_START = re.compile(r"^([#+\-=]|\d+[.)])")


def escape(text: str) -> str:
    """Plain text -> inline Markdown that renders as exactly that text, on one line."""
    text = " ".join(str(text).split())
    text = "".join(_ENTITIES.get(ch, ch) for ch in text)
    return _PUNCTUATION.sub(r"\\\1", text)


def escape_line(text: str) -> str:
    """Like :func:`escape`, for text that starts a line (paragraph, list item, heading).

    There a leading ``#``, ``+``, ``-``, ``=`` or ``1.`` would make a heading or a list.
    """
    text = escape(text)
    match = _LINE_START.match(text)
    if match is None:
        return text
    cut = match.end() - 1
    return text[:cut] + "\\" + text[cut:]


def to_markdown(document: Document, base_dir: str | Path) -> str:
    """The document as Markdown, figures linked relative to ``base_dir``.

    Args:
        document: The report content.
        base_dir: Folder the Markdown file will live in (links are relative to it).

    Returns:
        The Markdown text, ending with a newline.
    """
    parts = [f"# {escape_line(document.title)}"]
    for section in document.sections:
        parts.extend(_section(section, Path(base_dir)))
    return "\n\n".join(parts) + "\n"


def _section(section: Section, base_dir: Path) -> list[str]:
    out = [f"{'#' * section.level} {escape_line(section.title)}"]
    for block in section.blocks:
        out.append(_block(block, base_dir))
    return out


def _block(block: object, base_dir: Path) -> str:
    if isinstance(block, Paragraph):
        return escape_line(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {escape_line(item)}" for item in block.items)
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        link = Path(os.path.relpath(block.path, base_dir)).as_posix()
        return f"![{escape(block.caption)}](<{link}>)"
    if isinstance(block, Code):
        fence = "`" * max(3, _longest_backtick_run(block.text) + 1)
        return f"{fence}text\n{block.text.rstrip()}\n{fence}"
    raise TypeError(f"cannot render {type(block).__name__} as Markdown")


def _table(table: Table) -> str:
    lines = [
        "| " + " | ".join(escape(h) for h in table.header) + " |",
        "|" + "|".join("---" for _ in table.header) + "|",
    ]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"*{escape(table.caption)}*"]
    return "\n".join(lines)


def _longest_backtick_run(text: str) -> int:
    return max((len(m) for m in re.findall(r"`+", text)), default=0)
