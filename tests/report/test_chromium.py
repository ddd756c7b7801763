"""The HTML report in a real browser: headless Chromium renders it, every figure decodes.

The report carries no script (its Content-Security-Policy forbids them), so the
image count comes from a *copy* of the page wrapped here with a small probe
script and the policy removed; the unmodified page is rendered too, to check
that the browser's DOM of the hostile report holds no element it should not.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (.ci/run installs it); cannot render the HTML",
)

PROBE = """<script>
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) loaded++;
  }
  var out = document.createElement("output");
  out.id = "probe";
  out.setAttribute("data-loaded", String(loaded));
  out.setAttribute("data-total", String(images.length));
  document.body.appendChild(out);
});
</script>"""


def _dump_dom(page: Path, profile: Path) -> str:
    """The DOM after load, as headless Chromium serializes it (bounded in time)."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",  # let the load event and the probe run before the dump
        "--dump-dom",
        page.as_uri(),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("headless chromium did not finish rendering the report within 60 s")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_every_figure_loads_in_chromium(
    report_paths: dict[str, Path], tmp_path: Path, parse_page: type
) -> None:
    html = report_paths["html"].read_text()
    wrapped = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    assert wrapped != html
    page = tmp_path / "wrapped.html"
    page.write_text(wrapped.replace("</body>", PROBE + "\n</body>"))
    dom = parse_page(_dump_dom(page, tmp_path / "profile"))
    probes = dom.find("output")
    assert probes, "the probe did not run: the page did not finish loading"
    figures = len(list(report_paths["figures"].glob("*.png")))
    assert probes[0]["data-total"] == str(figures)
    assert probes[0]["data-loaded"] == str(figures)
    text = dom.text
    assert "Study report: mini-ablation" in text
    assert "Factor: train.batch_size" in text and "256 (base)" in text
    assert "RuntimeError: CUDA out of memory" in text


def test_hostile_report_renders_as_text_in_chromium(
    hostile_report: dict[str, Path], tmp_path: Path, parse_page: type
) -> None:
    dom = parse_page(_dump_dom(hostile_report["html"], tmp_path / "profile"))
    assert not dom.find("script")
    assert not [
        (tag, name) for tag, attrs in dom.tags for name in attrs if name.lower().startswith("on")
    ]
    images = dom.find("img")
    assert len(images) == len(list(hostile_report["figures"].glob("*.png")))
    assert all((a.get("src") or "").startswith("data:image/png;base64,") for a in images)
    for literal in (
        "<script>alert('x')</script>",
        '"><img src=x onerror=alert(1)>',
        "javascript:alert(document.cookie)",
        "{{7*7}}",
    ):
        assert literal in dom.text
