"""Hostile user text (labels, spec values, errors, run names, versions) shows as text only.

Parsed the way a browser parses it: there must be no script element, no ``on*``
attribute, no link anywhere, and the hostile strings must be in the page text
verbatim, so the reader still sees what the spec said.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnlab.report.markdown import escape, escape_line

HOSTILE = {
    "script": "<script>alert('x')</script>",
    "img": '"><img src=x onerror=alert(1)>',
    "js": "javascript:alert(document.cookie)",
    "template": "{{7*7}}",
}


def test_html_has_no_active_content(hostile_report: dict[str, Path], parse_page: type) -> None:
    page = parse_page(hostile_report["html"].read_text())
    assert not page.find("script")
    assert not [
        (tag, name) for tag, attrs in page.tags for name in attrs if name.lower().startswith("on")
    ]
    assert not page.find("a") and not page.find("iframe") and not page.find("object")
    figures = len(list(hostile_report["figures"].glob("*.png")))
    assert len(page.find("img")) == figures  # no injected image
    assert all((a.get("src") or "").startswith("data:image/png;base64,") for a in page.find("img"))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_html_shows_hostile_strings_as_text(
    hostile_report: dict[str, Path], parse_page: type, name: str
) -> None:
    page = parse_page(hostile_report["html"].read_text())
    assert HOSTILE[name] in page.text


def test_hostile_strings_reach_every_part(
    hostile_report: dict[str, Path], parse_page: type
) -> None:
    """The labels, the error, the versions and the spec all carry hostile text, each escaped."""
    page = parse_page(hostile_report["html"].read_text())
    text = page.text
    assert f"Study report: {HOSTILE['script']}" in text  # the spec's name, as title
    assert f"model.activation={HOSTILE['img']}" in text  # a variant label
    assert f"{HOSTILE['js']} {HOSTILE['script']}" in text  # a failed run's error
    assert f"{HOSTILE['script']} (2)" in text and f"{HOSTILE['template']} (2)" in text  # versions
    assert f"device{HOSTILE['img']} (2)" in text  # devices
    assert f"name: {HOSTILE['template']}" in text.replace(
        "'", ""
    )  # a spec value, in the spec block


def test_markdown_escapes_markup(hostile_report: dict[str, Path]) -> None:
    text = hostile_report["markdown"].read_text()
    outside, spec = text.split("## Spec")
    assert "<script" not in outside and "<img" not in outside and "](javascript" not in outside
    assert "&lt;script&gt;" in outside
    # The spec is verbatim inside one fence longer than any backtick run it holds
    # (the hostile spec has a ``` of its own), so Markdown shows it as code.
    fence = re.search(r"^(`{3,})text$", spec, re.MULTILINE)
    assert fence is not None and len(fence.group(1)) > 3
    body = spec.split(fence.group(0) + "\n")[1]
    assert body.rstrip().endswith(fence.group(1)) and body.count(fence.group(1)) == 1
    assert "<script>" in body  # verbatim: a code block renders it as text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<b>", "&lt;b&gt;"),
        ("a & b", "a &amp; b"),
        ("[x](javascript:y)", "\\[x\\](javascript:y)"),
        ("{{7*7}}", "{{7\\*7}}"),
        ("a|b", "a\\|b"),
        ("two\nlines", "two lines"),
        ("lr=$x^2$", "lr=\\$x^2\\$"),  # GitHub renders $...$ as math
    ],
)
def test_markdown_escape(text: str, expected: str) -> None:
    assert escape(text) == expected


def test_markdown_escape_line_start() -> None:
    assert escape_line("# not a heading") == "\\# not a heading"
    assert escape_line("- not a list") == "\\- not a list"
    assert escape_line("12. not a list") == "12\\. not a list"
    assert escape("-0.5") == "-0.5"  # inside a table cell nothing needs escaping
