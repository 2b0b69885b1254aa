"""The published OHIF viewer build served as a static site of its own (another origin than dicomlake), with an
app-config.js that points OHIF's DICOMweb data source at one dicomlake store. docs/viewers.md shows the same
configuration."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

OHIF_VERSION = "3.13.2"
OHIF_DIST = Path(__file__).resolve().parents[2] / ".cache" / "ohif" / OHIF_VERSION / "dist"

# OHIF 3.13 takes the Authorization header of every QIDO, WADO and image-loader request from its
# userAuthenticationService (the data source ignores `requestOptions.auth`; `?token=` works only on viewer
# URLs, not on the study list). An app-config that is a function gets the servicesManager, and the data
# source's `onConfiguration` runs before its first request: there the service is told the token.
_AUTH_HOOK = """
      onConfiguration: (configuration) => {
        servicesManager.services.userAuthenticationService.setServiceImplementation({
          getAuthorizationHeader: () => ({ Authorization: 'Bearer ' + TOKEN }),
        });
        return configuration;
      },"""


def app_config(dicomweb_root: str, token: str = "") -> str:
    """app-config.js for a dicomlake store's DICOMweb root (…/dicomStores/S/dicomWeb), with a bearer token
    or without."""
    root = json.dumps(dicomweb_root)
    return f"""const TOKEN = {json.dumps(token)};
window.config = ({{ servicesManager }}) => ({{
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  defaultDataSourceName: 'dicomlake',
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomlake',
      configuration: {{
        friendlyName: 'dicomlake',
        name: 'dicomlake',
        qidoRoot: {root},
        wadoRoot: {root},
        wadoUriRoot: {root},
        qidoSupportsIncludeField: true,
        supportsWildcard: true,
        supportsFuzzyMatching: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: {{ enabled: true }},{_AUTH_HOOK if token else ""}
      }},
    }},
  ],
}});
"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    """dist/ as files, the generated app-config.js, and index.html for every other path (OHIF routes in the
    browser: /viewer?StudyInstanceUIDs=… is a page of the single-page app, not a file)."""

    config = ""

    def send_head(self) -> BinaryIO | None:
        path = self.path.split("?", 1)[0]
        if path == "/app-config.js":
            body = self.config.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return io.BytesIO(body)
        if not (Path(self.directory) / path.lstrip("/")).is_file():
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def ohif_site(port: int) -> Iterator[type[_Handler]]:
    """OHIF on http://127.0.0.1:PORT until exit; set `.config` of the yielded handler class to the app-config
    text (it may be set after the site starts, once the store it names exists)."""
    handler = type("OhifHandler", (_Handler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(OHIF_DIST)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
