"""The case report in a real headless browser (Debian's chromium at /usr/bin/chromium).

Checks: the page loads without console errors, blocked resources or failed
image decodes, and a screenshot shows the image (its known gray squares), the
model and reference boxes around them, and the stage sections. Skips when
chromium is not installed (`make browser-deps` installs it).
"""

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrtrek_jax.case_report import write_case_report
from cxrtrek_jax.case_report.image_overlay import MODEL_BOX_COLOR, REFERENCE_BOX_COLOR
from cxrtrek_jax.case_report.render import STAGE_ACCENT_COLOR
from cxrtrek_jax.evaluation.scores.predictions import PredictionRecord
from data_pipeline.schema.records import QAItem, Study

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1200, 2000)
SIDE = 200  # the fixture image is SIDE x SIDE pixels
MODEL_GRAY, REFERENCE_GRAY = 200, 120  # 8-bit levels of the squares the boxes frame
MODEL_SQUARE = (20.0, 20.0, 45.0, 45.0)  # x1, y1, x2, y2 on the 0-100 scale
REFERENCE_SQUARE = (55.0, 55.0, 85.0, 85.0)
STAGES = (1, 2, 3, 8)

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is not installed; `make browser-deps` installs Debian's chromium",
)

# Injected before the page's Content-Security-Policy, so that it runs; it records
# script errors, resources that fail to load or decode, and CSP violations, and
# writes them into the DOM when the page has loaded (read back with --dump-dom).
ERROR_PROBE = """<script>
var pageErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  pageErrors.push(e.message || ('failed to load a ' + (t && t.tagName)));
}, true);
document.addEventListener('securitypolicyviolation', function (e) {
  pageErrors.push('CSP blocked ' + e.blockedURI);
});
window.addEventListener('load', function () {
  var out = document.createElement('pre');
  out.id = 'page-errors';
  out.textContent = JSON.stringify(pageErrors);
  document.body.appendChild(out);
});
</script>"""


def _rgb(hex_color):
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])


def _box_markup(label, square):
    x1, y1, x2, y2 = square
    return f"<|ref|> {label} <|/ref|> <|box|>({x1}, {y1}), ({x2}, {y2})<|/box|>"


def _fixture_image(path):
    """Black image with two uniform gray squares exactly where the boxes go."""
    pixels = np.zeros((SIDE, SIDE), np.uint8)
    for square, level in ((MODEL_SQUARE, MODEL_GRAY), (REFERENCE_SQUARE, REFERENCE_GRAY)):
        x1, y1, x2, y2 = (round(v / 100 * SIDE) for v in square)
        pixels[y1:y2, x1:x2] = level
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _study():
    items = (
        QAItem(1, "View_Information", "single-choice", 1, "<image>Which view? A. PA. or B. AP.", "A. PA."),
        QAItem(2, "Findings_Identification", "yes_no", 1, "Is there a nodule?", "Yes."),
        QAItem(3, "Findings_Detection", "detection", 1, "Locate the findings.", _box_markup("mass", REFERENCE_SQUARE)),
        QAItem(8, "Report_Generation", "captioning", 1, "Write the report.", "A mass in the right lower zone."),
    )
    return Study("b1", pat_id="p9", images=("b1/pa.png",), items=items)


def _predictions(study):
    answers = ("A. PA.", "No.", _box_markup("nodule", MODEL_SQUARE), "A nodule. <b>not bold</b>")
    return [
        PredictionRecord(study.key, i, it.stage, it.task_type, it.qtype, it.question, it.answer, a, "own")
        for i, (it, a) in enumerate(zip(study.items, answers))
    ]


def _chromium(tmp_path, url, *args):
    """Runs headless chromium; returns (stdout, stderr)."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
        *args, url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def _page_errors(tmp_path, html_text, name):
    """(errors the probe saw, console lines of chromium's log) for a page."""
    head = html_text.index("<head>") + len("<head>")
    probed = tmp_path / name
    probed.write_text(html_text[:head] + ERROR_PROBE + html_text[head:], encoding="utf-8")
    dom, log = _chromium(tmp_path, probed.as_uri(), "--dump-dom")
    match = re.search(r'<pre id="page-errors">(.*?)</pre>', dom, re.S)
    assert match, "the probe never reported: the page did not finish loading"
    errors = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    console = [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return errors, console, dom


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_report")
    _fixture_image(root / "images" / "b1" / "pa.png")
    study = _study()
    out = root / "report.html"
    write_case_report(_predictions(study), [study], root / "images", out)
    return out


def test_page_loads_without_errors(report, tmp_path):
    errors, console, dom = _page_errors(tmp_path, report.read_text(encoding="utf-8"), "probed.html")
    assert errors == []
    assert console == []
    assert re.findall(r"<h3>Stage (\d)", dom) == [str(s) for s in STAGES]
    assert "&lt;b&gt;not bold&lt;/b&gt;" in dom


def test_error_probe_catches_a_broken_page(report, tmp_path):
    """The probe is not blind: an external image (blocked by the page's CSP) and an
    undecodable inline image are both reported."""
    text = report.read_text(encoding="utf-8").replace(
        "<main>",
        '<main><img src="http://example.invalid/x.png"><img src="data:image/png;base64,AAAA">',
    )
    errors, console, _ = _page_errors(tmp_path, text, "broken.html")
    assert any("CSP blocked http://example.invalid/x.png" in e for e in errors), errors
    assert any("failed to load a IMG" in e for e in errors), errors
    assert console, "chromium logged nothing for the blocked resource"


def _long_runs(mask, min_run):
    """Rows and columns covered by rows holding at least `min_run` True pixels."""
    rows = np.nonzero(mask.sum(axis=1) >= min_run)[0]
    cols = np.nonzero(mask[rows].any(axis=0))[0] if rows.size else rows
    return rows, cols


def _near(pixels, rgb, tolerance):
    return (np.abs(pixels.astype(int) - rgb).max(axis=-1) <= tolerance)


def test_screenshot_shows_images_boxes_and_stages(report, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, report.as_uri(), f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    assert pixels.std() > 20, "blank screenshot"

    for gray, color in ((MODEL_GRAY, MODEL_BOX_COLOR), (REFERENCE_GRAY, REFERENCE_BOX_COLOR)):
        square = _near(pixels, np.array([gray] * 3), 3)
        rows, cols = _long_runs(square, 60)
        assert rows.size >= 60, f"the gray-{gray} square of the image is not on the screenshot"
        # Its box: each side of the square has the box colour along most of its length
        # (a dashed line covers ~60%), within a few pixels of the square's edge.
        top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
        colored = _near(pixels, _rgb(color), 40)
        sides = {
            "left": colored[top:bottom, left - 5 : left + 5].any(axis=1),
            "right": colored[top:bottom, right - 4 : right + 6].any(axis=1),
            "top": colored[top - 5 : top + 5, left:right].any(axis=0),
            "bottom": colored[bottom - 4 : bottom + 6, left:right].any(axis=0),
        }
        for side, covered in sides.items():
            assert covered.mean() > 0.5, f"{color} box: {side} side covers {covered.mean():.0%} of the square"
        other = REFERENCE_BOX_COLOR if color == MODEL_BOX_COLOR else MODEL_BOX_COLOR
        assert not _near(pixels, _rgb(other), 40)[top:bottom, left:right].any(), f"{other} box on the gray-{gray} square"

    # One accent band per stage heading, each a run of rows holding the accent colour.
    accent_rows = _near(pixels[:, :200], _rgb(STAGE_ACCENT_COLOR), 10).sum(axis=1) >= 4
    bands = np.count_nonzero(np.diff(accent_rows.astype(int)) == 1) + int(accent_rows[0])
    assert bands == len(STAGES)
