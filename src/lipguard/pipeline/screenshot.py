"""Render a report page in headless Chromium and save a PNG screenshot of it.

    python -m lipguard.pipeline.screenshot runs/<date-time>/report.html docs/report.png

Needs Debian's ``chromium`` (``apt-get install chromium``); flags as the project's machines need
them (no sandbox as root, no background networking on a closed network).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lipguard.errors import InvalidArgumentError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    """The first headless-capable Chromium on ``PATH``, or ``None``."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, png: Path, width: int = 1100, height: int = 2200) -> Path:
    """Load ``page`` (a local HTML file) and write a ``width``×``height`` screenshot to ``png``."""
    browser = find_browser()
    if browser is None:
        raise InvalidArgumentError("no Chromium found: apt-get install chromium")
    page, png = Path(page).resolve(), Path(png).resolve()
    if not page.is_file():
        raise InvalidArgumentError(f"{page} does not exist")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            page.as_uri(),
        ]
        subprocess.run(command, capture_output=True, timeout=120, check=True)
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot to {png}")
    return png


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m lipguard.pipeline.screenshot REPORT.html OUT.png")
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
