"""Open an HTML page in Debian's headless Chromium, as a reader would, and say which of its
images the browser decoded and painted.

Two runs of the real browser, each on a copy of the page alone in an empty folder (so a page
that needs files beside it shows broken images): one loads the page with a probe script
appended (after the load event it writes every image's decoded size and laid-out box into the
DOM, which ``--dump-dom`` prints); one screenshots the page, whole, at the same width. An image
counts as rendered when the browser decoded it (``complete`` and a natural size) and its box in
the screenshot holds a drawing: many colours and enough non-white pixels, not a blank or a
broken-image icon.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

WIDTH = 1200
MAX_HEIGHT = 16000  # Chromium draws taller windows, but the screenshot gets slow and huge
PROBE = """<script>
addEventListener("load", () => {
  const images = [...document.images].map((img) => {
    const r = img.getBoundingClientRect();
    return {alt: img.alt, complete: img.complete,
            natural: [img.naturalWidth, img.naturalHeight],
            box: [r.left + scrollX, r.top + scrollY, r.width, r.height]};
  });
  const out = document.createElement("pre");
  out.id = "browser-probe";
  out.textContent = JSON.stringify({images, height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


class BrowserError(RuntimeError):
    pass


@dataclass
class Figure:
    alt: str
    decoded: bool  # the browser decoded the image data (complete, natural size > 0)
    box: tuple[int, int, int, int]  # left, top, width, height in page pixels
    colours: int  # distinct colours inside the box in the screenshot
    inked: float  # fraction of the box's pixels that are not near-white

    @property
    def rendered(self) -> bool:
        return (self.decoded and self.box[2] >= 100 and self.box[3] >= 60
                and self.colours >= 16 and self.inked >= 0.01)


@dataclass
class Page:
    figures: list[Figure]
    screenshot: Path
    height: int

    @property
    def rendered(self) -> list[Figure]:
        return [f for f in self.figures if f.rendered]


def chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        raise BrowserError("chromium is not installed (Debian: apt-get install chromium)")
    return path


def _run(args: list[str], profile: Path) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--force-device-scale-factor=1", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BrowserError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def open_page(path: Path, screenshot: Path) -> Page:
    """Load the page at ``path`` in Chromium; screenshot it whole to ``screenshot`` (PNG)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        tmp = Path(tmp)
        # Copies alone in a folder: anything the page needs beside itself fails to load.
        page = path.read_text()
        alone, probed = tmp / "page.html", tmp / "probed.html"
        alone.write_text(page)
        probed.write_text(page.replace("</body>", PROBE + "</body>") if "</body>" in page
                          else page + PROBE)
        dom = _run([f"--window-size={WIDTH},900", "--dump-dom", probed.as_uri()],
                   tmp / "profile-probe")
        found = re.search(r'<pre id="browser-probe">(.*?)</pre>', dom, re.S)
        if not found:
            raise BrowserError(f"{path}: the probe did not run (no load event?)")
        probe = json.loads(html.unescape(found.group(1)))
        height = min(MAX_HEIGHT, int(probe["height"]) + 20)
        _run([f"--window-size={WIDTH},{height}", f"--screenshot={screenshot}", alone.as_uri()],
             tmp / "profile-shot")
    shot = Image.open(screenshot).convert("RGB")
    figures = []
    for img in probe["images"]:
        left, top, w, h = (round(v) for v in img["box"])
        region = shot.crop((left, top, left + w, top + h)) if w > 0 and h > 0 else None
        colours, inked = 0, 0.0
        if region is not None and region.width and region.height:
            colours = len(region.getcolors(maxcolors=1 << 20) or [])
            levels = region.convert("L").histogram()  # pixels per grey level 0…255
            inked = sum(levels[:235]) / (region.width * region.height)
        figures.append(Figure(img["alt"], bool(img["complete"] and img["natural"][0] > 0),
                              (left, top, w, h), colours, inked))
    return Page(figures, screenshot, height)
