"""The web UI in a real browser (Debian's Chromium through Playwright) against a real server: search a study
and look at its pixels and metadata, run a query and chart it, watch an import finish, and work with a
server that asks for a token."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pydicom
import pytest
import requests
from browser_helpers import chromium, needs_chromium
from pydicom.uid import generate_uid

from conftest import Server, Store, dicom_file, make_store, new_bucket, start_server, stow, wait_done, write

pytestmark = needs_chromium

TOKEN = "ui-test-token"
CT_NAME = "CompressedSamples^CT1"  # PatientName of CT_small.dcm
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("ui"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()
    assert not errors, errors


def second_slice(path: Path) -> bytes:
    """The same image as another instance of the same series, one InstanceNumber further."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = int(ds.get("InstanceNumber") or 1) + 1
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def ui_url(store: Store, view: str = "", **params: str) -> str:
    where = {"project": store.project, "location": store.location, "dataset": store.dataset, "store": store.store}
    return f"{store.server.url}/#/{view}?{urlencode({**where, **params})}"


def canvas_has_pixels(page: Any) -> bool:
    """Whether the image canvas shows an image: pixels of more than one grey."""
    return page.evaluate(
        """() => {
            const c = document.querySelector('canvas#image');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i]);
            return c.width > 1 && seen.size > 8;
        }"""
    )


def test_search_open_study_view_pixels_scroll_window_metadata_and_download(server: Server, page: Any) -> None:
    store = make_store(server)
    ct = dicom_file("CT_small.dcm")
    stow(store, ct.read_bytes())
    stow(store, second_slice(ct))
    stow(store, dicom_file("MR_small.dcm").read_bytes())

    page.goto(ui_url(store, "studies"))
    page.wait_for_selector("table.studies tbody tr")
    assert page.locator("table.studies tbody tr").count() == 2
    assert "of 2" in page.locator(".pager .shown").inner_text()  # the total from getDICOMStoreMetrics
    page.fill("input[name=PatientName]", "compressedsamples^ct")  # a prefix: the UI adds the wildcard
    page.click("form.search button[type=submit]")
    page.wait_for_function("document.querySelectorAll('table.studies tbody tr').length === 1")
    assert "PatientName=compressedsamples" in page.url  # the search is in the route: back and links work
    page.click(f"table.studies >> text={CT_NAME}")

    page.wait_for_selector(".series-card")
    page.wait_for_function("document.querySelector('.series-card img.thumb').naturalWidth > 0")
    assert "2 instances" in page.locator(".series-card").inner_text()
    page.click(".series-card")

    page.wait_for_selector("canvas#image[data-state=ready]")
    assert canvas_has_pixels(page)
    page.wait_for_selector("aside.meta li[data-tag='00100010']")
    patient = page.locator("aside.meta li[data-tag='00100010']").inner_text()
    assert "PatientName" in patient and CT_NAME in patient
    page.fill("aside.meta input[type=search]", "patientname")
    page.wait_for_function("document.querySelectorAll('aside.meta li[data-tag]').length === 1")

    assert page.locator(".toolbar .counter").first.inner_text() == "1 / 2"
    page.locator(".stage").hover()
    page.mouse.wheel(0, 120)  # the wheel scrolls through the series
    page.wait_for_function("document.querySelector('.toolbar .counter').textContent === '2 / 2'")
    page.keyboard.press("ArrowUp")
    page.wait_for_function("document.querySelector('.toolbar .counter').textContent === '1 / 2'")

    page.keyboard.press("4")  # CT soft tissue, windowed in the page from the stored values
    page.wait_for_function("document.querySelector('.stage .overlay').textContent === 'W 400 L 40'")
    page.wait_for_selector("canvas#image[data-state=ready]")
    assert canvas_has_pixels(page)

    with page.expect_download() as download:
        page.click("text=Download .dcm")
    assert Path(download.value.path()).read_bytes() == ct.read_bytes()


def test_query_shows_rows_and_charts(server: Server, page: Any) -> None:
    store = make_store(server)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        stow(store, dicom_file(name).read_bytes())
    stow(store, second_slice(dicom_file("CT_small.dcm")))
    project = f"ui-{uuid.uuid4().hex[:8]}"
    bq = f"{server.url}/bigquery/v2/projects/{project}/datasets"
    requests.post(bq, json={"datasetReference": {"datasetId": "dicom"}}, timeout=30).raise_for_status()
    started = requests.post(
        f"{store.url}:export", json={"bigqueryDestination": {"tableUri": f"bq://{project}.dicom.instances"}}, timeout=30
    )
    assert "error" not in wait_done(server, started.json())

    page.goto(f"{server.url}/#/tables?project={project}")
    page.wait_for_selector("details.schema > summary")
    assert "3 rows" in page.locator("details.schema > summary").inner_text()
    page.select_option("select[aria-label='example queries']", label="Instances per modality (bar)")
    assert f"`{project}.dicom.instances`" in page.input_value("textarea[name=sql]")
    page.click("form.sql button[type=submit]")
    page.wait_for_selector("table.result tbody tr")
    rows = page.locator("table.result tbody tr").all_inner_texts()
    assert [r.split("\t") for r in rows] == [["CT", "2"], ["MR", "1"]]
    assert page.locator("svg.chart rect.bar").count() == 2
    page.select_option("select[aria-label='chart type']", "line")
    assert page.locator("svg.chart polyline.line").count() == 1

    page.fill("textarea[name=sql]", "SELECT nonsense FROM nowhere")
    page.click("form.sql button[type=submit]")
    page.wait_for_selector(".results .error")


def test_import_from_a_bucket_is_watched_to_the_end(server: Server, page: Any) -> None:
    store = make_store(server)
    bucket, folder = new_bucket(server)
    write(folder / "in" / "ct.dcm", dicom_file("CT_small.dcm").read_bytes())
    write(folder / "in" / "mr.dcm", dicom_file("MR_small.dcm").read_bytes())
    write(folder / "in" / "junk.dcm", b"not a DICOM file")

    page.goto(ui_url(store, "operations"))
    form = page.locator("form[aria-label=import]")
    form.locator("select[name=store]").select_option(store.store)
    form.locator("input[name=uri]").fill(f"gs://{bucket}/in/**")
    form.locator("button[type=submit]").click()

    done = page.locator(".finished tr.op[data-state=done]", has_text="Import")
    done.wait_for()
    assert "2 ok · 1 failed · 0 pending" in done.inner_text()
    done.locator("button").first.click()
    page.wait_for_selector("table.log-entries tbody tr")
    assert f"gs://{bucket}/in/junk.dcm" in page.locator("table.log-entries").inner_text()
    page.goto(ui_url(store, ""))
    row = page.locator(f"table.stores tr[data-store='{store.store}']")
    row.locator("td.instances", has_text="2").wait_for()


def test_a_new_user_makes_a_store_uploads_a_folder_and_charts_studies_per_modality(
    server: Server, page: Any, tmp_path: Path
) -> None:
    """The first minutes of a new user: nothing but the UI, a folder of files, and a chart at the end."""
    folder = tmp_path / "from-the-scanner"
    write(folder / "ct" / "IM0001", dicom_file("CT_small.dcm").read_bytes())
    write(folder / "ct" / "IM0002", second_slice(dicom_file("CT_small.dcm")))
    write(folder / "mr" / "deeper" / "mr.dcm", dicom_file("MR_small.dcm").read_bytes())
    write(folder / "sc.dcm", dicom_file("SC_rgb.dcm").read_bytes())
    write(folder / "README.txt", b"scanned on Tuesday")
    write(folder / "broken.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 200)  # the mark, then nothing of DICOM

    page.goto(f"{server.url}/#/?project=new-{uuid.uuid4().hex[:8]}&location=local")
    page.get_by_role("button", name="Create dataset “images” with a DICOM store “images”").click()
    page.wait_for_url("**/#/studies?*")
    assert page.locator("details.upload").get_attribute("open") is not None, "an empty store offers to add images"

    status = page.locator(".upload-status")
    page.locator("details.upload input[webkitdirectory]").set_input_files(folder)
    status.get_by_text("Done:").wait_for()
    text = status.inner_text()
    assert "4 instances of 3 studies stored from 6 files" in text, text
    assert "4 stored · 1 failed · 1 not DICOM" in text, text
    problems = status.locator(".problems").inner_text()
    assert "README.txt" in problems and "not a DICOM file" in problems, problems
    # The list reloads by itself when the upload ends.
    page.locator("table.studies tbody tr").nth(2).wait_for()
    assert page.locator("table.studies tbody tr").count() == 3
    assert CT_NAME in page.locator("table.studies").inner_text()

    page.locator("details.upload input[webkitdirectory]").set_input_files(folder)
    status.get_by_text("4 already there").wait_for()
    assert "0 instances of 0 studies stored" in status.inner_text()

    page.get_by_role("button", name="Query in SQL").click()
    page.wait_for_url("**/#/tables?*")
    page.wait_for_selector("table.result tbody tr")
    rows = sorted(r.split("\t") for r in page.locator("table.result tbody tr").all_inner_texts())
    assert rows == [["CT", "1"], ["MR", "1"], ["OT", "1"]]
    assert page.locator("svg.chart rect.bar").count() == 3


def test_a_server_with_tokens_asks_for_one_and_then_works(tmp_path: Path, page: Any) -> None:
    srv = start_server(tmp_path / "data", extra_env={"DICOMLAKE_AUTH_TOKENS": TOKEN})
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        store = make_store(srv, headers=auth)
        stow(store, dicom_file("CT_small.dcm").read_bytes(), auth)

        page.goto(ui_url(store, ""))
        dialog = page.locator("#token-dialog")
        dialog.locator("input").wait_for()
        dialog.locator("input").fill("wrong")
        dialog.locator("button[type=submit]").click()
        dialog.locator(".refused").wait_for()  # asked again, saying the first token was refused
        dialog.locator("input").fill(TOKEN)
        dialog.locator("button[type=submit]").click()

        row = page.locator(f"table.stores tr[data-store='{store.store}']")
        row.locator("td.studies", has_text="1").wait_for()
        assert row.locator("td.instances").inner_text() == "1"
        assert row.locator("td.blob").inner_text().endswith("KB")
        assert page.evaluate("sessionStorage.getItem('dicomlake.token')") == TOKEN

        page.goto(ui_url(store, "studies"))  # the token is kept: no dialog this time
        page.wait_for_selector(f"table.studies >> text={CT_NAME}")
        assert not dialog.is_visible()
    finally:
        srv.stop()
