"""Headless Chromium for the report tests: installed on demand, run with a fresh profile."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Lays the page out and writes what the browser measured into the DOM, for ``--dump-dom``:
#: per chart, its rendered size and how many of its bars have a positive rendered width; per
#: text and bar of a chart, its box relative to the chart's (``data-box``: left top right
#: bottom, px), whether it lies wholly inside the picture (``data-inside``) and, for a text,
#: its font size as rendered. The boxes come from ``getBoundingClientRect``, and ``getBBox``
#: (in the SVG's own units) must agree that the text is inside the viewBox.
MEASURE = """<script>
window.addEventListener('load', () => {
  const fmt = v => v.toFixed(1);
  for (const svg of document.querySelectorAll('svg[data-chart]')) {
    const box = svg.getBoundingClientRect();
    const view = svg.viewBox.baseVal;
    const bars = [...svg.querySelectorAll('rect[data-value]')];
    const drawn = bars.filter(r => r.getBoundingClientRect().width > 0
                                && r.getBoundingClientRect().height > 0);
    svg.setAttribute('data-rendered-width', String(Math.round(box.width)));
    svg.setAttribute('data-rendered-height', String(Math.round(box.height)));
    svg.setAttribute('data-rendered-bars', String(drawn.length));
    let outside = 0;
    for (const el of svg.querySelectorAll('text, rect[data-value]')) {
      const r = el.getBoundingClientRect();
      const b = el.getBBox();
      const rel = [r.left - box.left, r.top - box.top, r.right - box.left, r.bottom - box.top];
      const inside = rel[0] >= -0.5 && rel[1] >= -0.5 && rel[2] <= box.width + 0.5
        && rel[3] <= box.height + 0.5 && b.x >= view.x - 0.5 && b.y >= view.y - 0.5
        && b.x + b.width <= view.x + view.width + 0.5
        && b.y + b.height <= view.y + view.height + 0.5;
      if (!inside) outside += 1;
      el.setAttribute('data-box', rel.map(fmt).join(' '));
      el.setAttribute('data-inside', inside ? 'yes' : 'no');
      if (el.tagName === 'text') {
        el.setAttribute('data-font-size', getComputedStyle(el).fontSize);
      }
    }
    svg.setAttribute('data-rendered-outside', String(outside));
  }
  document.body.setAttribute('data-measured', 'yes');
});
</script>"""


def ensure_chromium() -> str:
    """The browser's path; ``scripts/ensure_chromium.sh`` installs it when missing."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "ensure_chromium.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done.stdout.strip().splitlines()[-1]


def _flags(profile: str) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ]


def dump_dom(browser: str, page: Path) -> str:
    """The DOM of ``page`` after Chromium loaded and laid it out (with ``MEASURE`` added)."""
    measured = page.with_name(page.stem + ".measured.html")
    measured.write_text(
        page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8"
    )
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                browser,
                *_flags(profile),
                "--virtual-time-budget=3000",
                "--dump-dom",
                measured.as_uri(),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    return done.stdout


def screenshot(browser: str, page: Path, out: Path, size: str = "1100,2400") -> Path:
    """A PNG of ``page`` as Chromium renders it."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                *_flags(profile),
                "--hide-scrollbars",
                f"--window-size={size}",
                f"--screenshot={out}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    return out
