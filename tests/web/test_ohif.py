"""The published OHIF viewer (3.13), served from another origin than dicomlake, lists and displays real studies
in headless Chromium, with bearer tokens on and off: dicomlake's CORS, QIDO, metadata and frames as a real
browser viewer uses them. The proof of display is the viewport's own canvas pixels, read once the image
decoders (JPEG 2000, JPEG baseline in WebAssembly) have drawn. scripts/install-ohif.sh installs the build."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pydicom
import pytest
import requests
from browser_helpers import chromium, needs_chromium
from ohif_site import OHIF_DIST, OHIF_VERSION, app_config, ohif_site
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from conftest import Store, dicom_file, free_port, make_store, start_server

pytestmark = [
    needs_chromium,
    pytest.mark.skipif(
        not (OHIF_DIST / "index.html").is_file(),
        reason=f"OHIF {OHIF_VERSION} is not installed in {OHIF_DIST.parent}: run scripts/install-ohif.sh (needs npm)",
    ),
]

TOKEN = "secret"
# The study list appears in about 3 s (loading OHIF), an image in 1-2 s more (decoding in WebAssembly workers).
LIST_TIMEOUT = 20
DISPLAY_TIMEOUT = 30


@dataclass(frozen=True)
class Study:
    file: str
    row_text: str  # what identifies its row in OHIF's study list (patient name, or the date when there is none)
    frames: int
    colour: bool

    def __str__(self) -> str:
        return self.file


STUDIES = [
    Study("CT_small.dcm", "CompressedSamples, CT1", 1, colour=False),
    Study("MR_small.dcm", "CompressedSamples, MR1", 1, colour=False),
    Study("emri_small.dcm", "01-Jan-2000", 10, colour=False),  # Enhanced MR, 10 frames
    Study("SC_rgb.dcm", "Lestrade, G", 1, colour=True),  # secondary capture, RGB
    Study("US1_J2KR.dcm", "CompressedSamples, US1", 1, colour=True),  # JPEG 2000 lossless, YBR_RCT
    Study("color3d_jpeg_baseline.dcm", "03-May-2016", 120, colour=True),  # JPEG baseline, YBR_FULL_422
]


@dataclass
class Viewer:
    """One browser page on OHIF, its origin, the dicomlake store behind it, and every failed request."""

    page: Any
    origin: str
    store: Store
    token: str
    problems: list[str] = field(default_factory=list)


# The viewport in OHIF's grid (cornerstone also renders thumbnails on enabled elements of its own).
_FIND_VIEWPORT = """
  const grid = document.querySelector('[data-cy="viewport-grid"]');
  const enabled = grid && window.cornerstone && window.cornerstone.getEnabledElements()
    .find((e) => grid.contains(e.viewport.element));
  const viewport = enabled && enabled.viewport.getImageIds ? enabled.viewport : null;
"""
# Its stack and canvas, through the cornerstone OHIF puts on window: how many frames the stack holds, which one
# is shown, and over the canvas's pixels how many are not black, how many grey levels (luminance / 8) occur,
# how many are coloured, and a fingerprint that changes when another frame is drawn.
_READ_VIEWPORT = """
  if (!viewport) return null;
  const canvas = viewport.canvas;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const levels = new Set();
  let lit = 0, coloured = 0, fingerprint = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    if (r + g + b > 24) lit++;
    if (Math.max(Math.abs(r - g), Math.abs(g - b), Math.abs(r - b)) > 32) coloured++;
    levels.add((r * 3 + g * 6 + b) >> 6);
    fingerprint = (fingerprint * 31 + r + g + b) % 1000000007;
  }
  return {
    frames: viewport.getImageIds().length, index: viewport.getCurrentImageIdIndex(),
    pixels: data.length / 4, lit, coloured, levels: levels.size, fingerprint,
  };
"""


def _displayed(stats: dict[str, Any]) -> bool:
    """An image, not the black canvas before the decoder finished: a tenth lit and many grey levels."""
    return stats["lit"] > stats["pixels"] / 10 and stats["levels"] >= 16


def wait_for_image(viewer: Viewer, differs_from: int | None = None) -> dict[str, Any]:
    """Poll the viewport's canvas until it shows an image (another one than `differs_from`, a fingerprint)."""
    page = viewer.page
    deadline = time.monotonic() + DISPLAY_TIMEOUT
    stats = None
    while time.monotonic() < deadline:
        stats = page.evaluate("() => {" + _FIND_VIEWPORT + _READ_VIEWPORT + "}")
        if stats is not None and _displayed(stats) and stats["fingerprint"] != differs_from:
            return stats
        page.wait_for_timeout(100)
    raise AssertionError(
        f"viewport shows no image after {DISPLAY_TIMEOUT} s: {stats}; failed requests: {viewer.problems}"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module", params=["tokens off", "tokens on"])
def viewer(request: pytest.FixtureRequest, browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    """dicomlake with the OHIF origin allowed (and a token, or none), the studies stored, OHIF on its own port."""
    token = TOKEN if request.param == "tokens on" else ""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {"DICOMLAKE_CORS_ORIGINS": origin} | ({"DICOMLAKE_AUTH_TOKENS": token} if token else {})
    server = start_server(tmp_path_factory.mktemp("ohif"), extra_env=env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        store = make_store(server, headers)
        for study in STUDIES:
            response = requests.post(
                f"{store.dicomweb}/studies",
                data=dicom_file(study.file).read_bytes(),
                headers={"Content-Type": "application/dicom", "Accept": "application/dicom+json", **headers},
                timeout=30,
            )
            assert response.status_code == 200, response.text
        with ohif_site(port) as site:
            site.config = app_config(store.dicomweb, token)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            viewer = Viewer(context.new_page(), origin, store, token)
            # A refused CORS request never gets a response: it shows up only as a failed request
            # (net::ERR_FAILED). net::ERR_ABORTED is the page cancelling its own request, as it does
            # with a previous study's prefetches when the next test navigates away: not a failure.
            viewer.page.on(
                "requestfailed",
                lambda r: (
                    viewer.problems.append(f"{r.method} {r.url}: {r.failure}")
                    if r.failure != "net::ERR_ABORTED"
                    else None
                ),
            )
            viewer.page.on(
                "response",
                lambda r: (
                    viewer.problems.append(f"{r.request.method} {r.url}: {r.status}")
                    if r.url.startswith(server.url) and r.status >= 400
                    else None
                ),
            )
            try:
                yield viewer
            finally:
                context.close()
    finally:
        server.stop()


@pytest.mark.parametrize("study", STUDIES, ids=str)
def test_ohif_lists_the_study_and_draws_its_first_and_last_frame(viewer: Viewer, study: Study) -> None:
    viewer.problems.clear()
    uid = pydicom.dcmread(dicom_file(study.file), stop_before_pixels=True).StudyInstanceUID
    page = viewer.page
    page.goto(viewer.origin + "/")
    try:
        page.locator("tr", has_text=study.row_text).click(timeout=LIST_TIMEOUT * 1000)
    except PlaywrightTimeoutError:
        raise AssertionError(f"no study list row with {study.row_text!r}; failed requests: {viewer.problems}") from None
    page.get_by_role("button", name="Basic Viewer").click()
    page.wait_for_url(f"**/viewer?StudyInstanceUIDs={uid}*")

    shown = wait_for_image(viewer)
    assert shown["frames"] == study.frames
    assert (shown["coloured"] > shown["pixels"] / 1000) == study.colour, shown
    if study.frames > 1:
        # The last frame too, fetched and decoded on its own, replaces the first on the canvas.
        page.evaluate("(n) => {" + _FIND_VIEWPORT + "viewport.setImageIdIndex(n); }", study.frames - 1)
        last = wait_for_image(viewer, differs_from=shown["fingerprint"])
        assert last["index"] == study.frames - 1
    assert viewer.problems == []


def test_the_token_mode_refuses_requests_without_the_token(viewer: Viewer) -> None:
    """What makes the tokens-on run mean something: OHIF was let in only because it sent the token."""
    response = requests.get(f"{viewer.store.dicomweb}/studies", timeout=30)
    assert response.status_code == (401 if viewer.token else 200)
