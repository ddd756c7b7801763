"""A tiny document model that both the Markdown and the HTML report render.

The report is built once as data (sections of paragraphs, lists, tables,
figures, code), then written twice. Every string in it is plain text, never
markup: the renderers escape all of it, so a variant label such as
``<script>`` can only ever appear as text, whichever output is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Paragraph:
    """One paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bulleted list of plain-text items."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of text cells; ``caption`` explains how to read it."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG on disk: linked from Markdown, inlined as a data URI in HTML."""

    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    """Preformatted text shown verbatim (the spec file)."""

    text: str


Block = Paragraph | Bullets | Table | Figure | Code


@dataclass(frozen=True)
class Section:
    """A titled run of blocks; ``level`` 2 for top sections, 3 below them."""

    title: str
    blocks: tuple[Block, ...] = ()
    level: int = 2


@dataclass(frozen=True)
class Document:
    """The whole report."""

    title: str
    sections: tuple[Section, ...] = field(default_factory=tuple)
