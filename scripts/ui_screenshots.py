"""Screenshots of the web UI for the README (docs/img/ui-*.png): a fresh server with the pydicom test
studies, exported to a table, shot in headless Chromium at a laptop's 1366x768.

    .venv/bin/python scripts/ui_screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pydicom.data
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "web")]

from bench import servers  # noqa: E402
from bench.measure import multipart  # noqa: E402
from browser_helpers import chromium  # noqa: E402

FILES = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "US1_J2KR.dcm", "SC_rgb.dcm", "693_J2KR.dcm"]
OUT = ROOT / "docs" / "img"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, servers.dicomlake(Path(tmp), workers=1) as target:
        body, content_type = multipart([Path(pydicom.data.get_testdata_file(n)).read_bytes() for n in FILES])
        requests.post(f"{target.dicomweb}/studies", data=body, headers={"Content-Type": content_type}, timeout=60)
        server = target.dicomweb.split("/v1/", 1)[0]
        store = target.dicomweb.removesuffix("/dicomWeb")
        bq = f"{server}/bigquery/v2/projects/bench/datasets"
        requests.post(bq, json={"datasetReference": {"datasetId": "dicom"}}, timeout=30).raise_for_status()
        export = requests.post(
            f"{store}:export", json={"bigqueryDestination": {"tableUri": "bq://bench.dicom.instances"}}, timeout=30
        ).json()
        while not requests.get(f"{server}/v1/{export['name']}", timeout=30).json().get("done"):
            time.sleep(0.2)
        where = "project=bench&location=local&dataset=bench&store=bench"
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(f"{server}/#/?{where}")
            page.wait_for_timeout(1500)
            page.screenshot(path=OUT / "ui-home.png")
            page.goto(f"{server}/#/studies?{where}")
            page.wait_for_selector("table.studies tbody tr")
            page.locator("table.studies tbody tr").first.click()
            page.wait_for_timeout(2000)
            page.screenshot(path=OUT / "ui-studies.png")
            page.locator("img").first.click()
            page.wait_for_selector("canvas#image")
            page.wait_for_timeout(2000)
            page.screenshot(path=OUT / "ui-image.png")
            page.goto(f"{server}/#/tables?project=bench")
            page.wait_for_selector("details.schema > summary")
            page.select_option("select[aria-label='example queries']", label="Instances per modality (bar)")
            page.click("form.sql button[type=submit]")
            page.wait_for_selector("svg.chart")
            page.wait_for_timeout(500)
            page.screenshot(path=OUT / "ui-tables.png")
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('ui-*.png')))} in {OUT}")


if __name__ == "__main__":
    main()
