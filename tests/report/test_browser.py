"""The report as a browser sees it: headless Chromium loads it offline, every image decodes, a screenshot renders."""

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from neuroldm.report import write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary found (install it with `apt-get install -y chromium`)")


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def written(fake_run, tmp_path_factory):
    _chromium()
    return write_report(fake_run[0], tmp_path_factory.mktemp("browser") / "report.html")


def test_every_image_loads_in_chromium(written, tmp_path):
    page = written
    dom = _run(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    n_images = len(re.findall(r"<img\b", dom))
    assert n_images == page.read_text().count("<img ") > 0
    assert 'data-broken-images="0"' in body  # the page's own check ran, and found nothing broken
    assert f'data-images="{n_images}"' in body


def test_a_broken_image_is_counted(written, tmp_path):
    """The check can fail: an image whose data is not a PNG is reported."""
    html = written.read_text()
    page = tmp_path / "broken.html"
    page.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src="data:image/png;base64,AAAA"', html, count=1))
    dom = _run(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path).stdout
    assert 'data-broken-images="1"' in re.search(r"<body[^>]*>", dom).group(0)


def test_screenshot_renders(written, tmp_path):
    page = written
    shot = tmp_path / "shot.png"
    _run(["--window-size=1280,4000", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri()], tmp_path)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 4000)
    assert len(data) > 50_000  # a blank page compresses to a few kB
