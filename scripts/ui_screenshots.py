"""Screenshots of the web UI for the README (docs/img/ui-*.png), taken along a new user's first minutes: a
fresh server, the one-click dataset and store, a folder of the pydicom test files uploaded, a study, an
image, the store's home row, and the chart of studies per modality. Headless Chromium at a laptop's 1366x768.

    .venv/bin/python scripts/ui_screenshots.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pydicom.data

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "web")]

from bench import servers  # noqa: E402
from browser_helpers import chromium  # noqa: E402

FILES = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "US1_J2KR.dcm", "SC_rgb.dcm", "693_J2KR.dcm"]
OUT = ROOT / "docs" / "img"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, servers.dicomlake(Path(tmp), workers=1) as target:
        folder = Path(tmp) / "scans"  # a folder of subfolders, as a CD or a scanner export has
        for name in FILES:
            (folder / name.split("_")[0]).mkdir(parents=True, exist_ok=True)
            shutil.copy(pydicom.data.get_testdata_file(name), folder / name.split("_")[0] / name)
        server = target.dicomweb.split("/v1/", 1)[0]
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(f"{server}/#/?project=demo&location=local")
            page.get_by_role("button", name="Create dataset “images” with a DICOM store “images”").click()
            page.wait_for_url("**/#/studies?*")
            page.locator("details.upload input[webkitdirectory]").set_input_files(folder)
            page.locator(".upload-status").get_by_text("Done:").wait_for()
            page.wait_for_selector("table.studies tbody tr")
            page.wait_for_timeout(500)
            page.screenshot(path=OUT / "ui-upload.png")
            page.locator("table.studies tbody tr").first.click()
            page.wait_for_timeout(2000)
            page.screenshot(path=OUT / "ui-studies.png")
            page.locator("img").first.click()
            page.wait_for_selector("canvas#image")
            page.wait_for_timeout(2000)
            page.screenshot(path=OUT / "ui-image.png")
            page.goto(f"{server}/#/?project=demo&location=local")
            page.wait_for_timeout(1500)
            page.screenshot(path=OUT / "ui-home.png")
            page.goto(f"{server}/#/studies?project=demo&location=local&dataset=images&store=images")
            page.get_by_role("button", name="Query in SQL").click()
            page.wait_for_selector("svg.chart")
            page.wait_for_timeout(500)
            page.screenshot(path=OUT / "ui-tables.png")
    print(f"wrote {', '.join(sorted(p.name for p in OUT.glob('ui-*.png')))} in {OUT}")


if __name__ == "__main__":
    main()
