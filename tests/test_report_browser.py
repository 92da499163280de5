"""report.html in a real headless browser: renders, no console or page errors, no network
request, every image decodes; a screenshot is written beside the report.

Runs only where a browser is available: node, plus puppeteer-core and @sparticuz/chromium
(an npm package that ships a Chromium build inside it, so nothing is downloaded at run time)
in the node_modules folder named by BAYESBENCH_BROWSER_MODULES, e.g.::

    mkdir -p /tmp/browser && (cd /tmp/browser && npm install @sparticuz/chromium puppeteer-core)
    BAYESBENCH_BROWSER_MODULES=/tmp/browser/node_modules pytest tests/test_report_browser.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fake_results import fake_result

from bayesbench.report import write_report
from bayesbench.store import ResultStore

MODULES = os.environ.get("BAYESBENCH_BROWSER_MODULES", "")
SCRIPT = Path(__file__).with_name("report_browser_check.mjs")

pytestmark = pytest.mark.skipif(
    not (MODULES and shutil.which("node")
         and (Path(MODULES) / "puppeteer-core").is_dir()
         and (Path(MODULES) / "@sparticuz" / "chromium").is_dir()),
    reason="no headless browser: set BAYESBENCH_BROWSER_MODULES (see the module docstring)")


def test_report_html_renders_in_a_headless_browser(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    for dataset in ("d1", "d2"):
        for label, acc in (("map", 0.9), ("vi", 0.8), ("swag", 0.85)):
            for seed in range(3):
                store.write(fake_result(label, dataset, seed, acc + 0.01 * seed, 0.1))
    write_report(store, tmp_path / "out")
    shot = tmp_path / "out" / "screenshot.png"
    res = subprocess.run(["node", str(SCRIPT), str(tmp_path / "out" / "report.html"),
                          str(shot)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "BROWSER_MODULES": MODULES})
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["images"] >= 4 and not report["broken"]  # cd, cost, 2 reliability
    assert report["consoleErrors"] == [] and report["pageErrors"] == []
    assert report["requests"] == []  # nothing fetched: self-contained
    assert report["tables"] > 5
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
