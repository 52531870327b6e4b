"""A real headless Chromium for report tests: what the page shows once loaded, and a screenshot.

The page is loaded from a copy of itself (in its own folder, so relative links resolve the same) with
a script appended that, on the window's load event, writes the state of every image and table, the
layout box of every element with an id (is the header above the fold?) and the thumbnails' links into
the DOM; `--dump-dom` prints the DOM after load, so the test reads what the browser rendered.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

PROBE = """<script>window.addEventListener('load', () => {
  const images = Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                        width: i.naturalWidth}));
  const tables = {};
  document.querySelectorAll('table[id]').forEach(t => { tables[t.id] = t.tBodies[0].rows.length; });
  const boxes = {};
  document.querySelectorAll('[id]').forEach(el => {
    const r = el.getBoundingClientRect();
    boxes[el.id] = {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY, height: r.height};
  });
  const links = Array.from(document.querySelectorAll('a > img.sample')).map(
    i => ({src: i.getAttribute('src'), href: i.parentElement.getAttribute('href'),
           rendering: getComputedStyle(i).imageRendering}));
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({images, tables, boxes, links, viewport: [window.innerWidth, window.innerHeight]});
  document.body.appendChild(out);
});</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("no Chromium on PATH: install it (`apt-get install -y chromium`; .ci/run does)")


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           *args], capture_output=True, text=True, timeout=timeout)


def rendered(page: Path, size: str = "1400,900") -> dict:
    """As the browser saw `page` after load in a `size` window: {images: [{src, complete, width}], tables:
    {id: body rows}, boxes: {element id: {top, bottom, height}} in page pixels, links: [{src, href,
    rendering}] of the thumbnails inside links, viewport: [width, height]}."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        done = _run(["--virtual-time-budget=10000", f"--window-size={size}", "--dump-dom", probe.as_uri()])
    finally:
        probe.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    if not found:
        raise AssertionError(f"the browser did not run the page (rc {done.returncode}): {done.stderr[-2000:]}")
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, png: Path, size: str = "1400,2400") -> Path:
    done = _run([f"--screenshot={png}", f"--window-size={size}", "--hide-scrollbars", page.as_uri()])
    if not png.is_file():
        raise AssertionError(f"no screenshot (rc {done.returncode}): {done.stderr[-2000:]}")
    return png
