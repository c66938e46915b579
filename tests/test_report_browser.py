"""The report in a real browser (slow): headless Chromium over the DevTools protocol
(tunesmith.testing.browser). Needs Debian's chromium (`make chromium`, or apt-get install -y chromium)
and websocket-client (the dev extra).

The demo run is runs/quickstart when `make demo` has made it; on a clean clone (CI) there is no
runs/, and the run is the one tunesmith.testing.run_fixture writes (every section, no model). The
full fixture is checked either way, so every section is seen in the browser.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.testing.browser import INSTALL_HINT, Chromium, find_chromium
from tunesmith.testing.run_fixture import INJECTION, write_run

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[1] / "runs" / "quickstart"
PLOTS_DRAWN = """Array.from(document.querySelectorAll('svg.plot')).filter(function (s) {
  var r = s.getBoundingClientRect(), line = s.querySelector('polyline, rect, circle');
  return r.width > 0 && r.height > 0 && line && line.getBBox().width > 0; }).length"""
HEADINGS = ("Array.from(document.querySelectorAll('section.sec > h2')).filter(h => h.offsetHeight > 0)"
            ".map(h => h.textContent)")


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip(f"no Chromium on this machine; {INSTALL_HINT}")
    pytest.importorskip("websocket", reason="websocket-client is not installed: pip install -e '.[dev]'")
    with Chromium() as b:
        yield b


@pytest.fixture(scope="module")
def full_page(tmp_path_factory) -> Path:
    run = write_run(tmp_path_factory.mktemp("browser") / "full", items=120)
    assert main(["report", str(run)]) == 0
    return run / "report.html"


def _headings(html: str) -> list[str]:
    return re.findall(r'<section class="sec" id="[^"]+"><h2>([^<]+)</h2>', html)


def _items(html: str) -> list[dict]:
    block = re.search(r'<script type="application/json" id="items-data">(.*?)</script>', html, re.S)
    return json.loads(block.group(1))["items"] if block else []


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _check_page(browser: Chromium, page: Path, shot: Path) -> None:
    html = page.read_text()
    loaded = browser.open(page)
    assert loaded.console_errors == []
    assert loaded.requests == []  # nothing but the file itself
    expected = _headings(html)
    assert expected and browser.evaluate(HEADINGS) == expected
    assert browser.evaluate(PLOTS_DRAWN) >= 1
    items = _items(html)
    assert browser.evaluate("document.querySelectorAll('#items .item').length") == min(50, len(items))
    browser.screenshot(shot)
    width, height = _png_size(shot)
    assert width >= 1000 and height > 1500


def test_demo_run_report_in_chromium(browser, tmp_path):
    if (DEMO / "summary.json").is_file():
        run, out = DEMO, tmp_path / "report.html"  # the demo run is read, never written
    else:
        run = write_run(tmp_path / "demo", items=260, metric_lines=144, selection=False, phases=False)
        out = run / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    _check_page(browser, out, tmp_path / "demo.png")
    assert {"Overview", "Training", "Evaluation", "Provenance"} <= set(_headings(out.read_text()))


def test_every_section_of_the_full_fixture_in_chromium(browser, full_page, tmp_path):
    _check_page(browser, full_page, tmp_path / "full.png")
    assert _headings(full_page.read_text()) == ["Overview", "Data", "Selection", "Training", "Evaluation", "Exports",
                                                "Phases", "Provenance"]


def test_the_item_browser_filters_pages_and_shows_markup_as_text(browser, full_page):
    items = _items(full_page.read_text())
    browser.open(full_page)
    assert browser.evaluate("typeof window.pwned") == "undefined"  # the injected output did not run
    shown = browser.evaluate("Array.from(document.querySelectorAll('#items pre')).map(e => e.textContent)")
    assert INJECTION in shown
    fixed = [it for it in items if it["c"] == "fixed"]
    browser.evaluate("var s = document.getElementById('f-cat'); s.value = 'fixed'; "
                     "s.dispatchEvent(new Event('change')); 1")
    assert browser.evaluate("document.querySelectorAll('#items .item').length") == min(50, len(fixed))
    assert browser.evaluate("document.getElementById('pageinfo').textContent").endswith(
        f"of {len(fixed)} · page 1 of {max(1, -(-len(fixed) // 50))}")
    browser.evaluate("var s = document.getElementById('f-cat'); s.value = ''; s.dispatchEvent(new Event('change')); "
                     "document.getElementById('next').click(); 1")
    assert browser.evaluate("document.getElementById('pageinfo').textContent").startswith(
        f"items 51–{min(100, len(items))} of {len(items)}")


def test_the_comparison_page_in_chromium(browser, tmp_path):
    a = write_run(tmp_path / "a", selection=False, exports=False, phases=False, seed=0)
    b = write_run(tmp_path / "b", selection=False, exports=False, phases=False, seed=1)
    out = tmp_path / "ab.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    loaded = browser.open(out)
    assert loaded.console_errors == [] and loaded.requests == []
    assert browser.evaluate(HEADINGS) == ["Runs", "Config differences", "Curves", "Evaluation"]
    assert browser.evaluate(PLOTS_DRAWN) >= 2
