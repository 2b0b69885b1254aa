"""The Healthcare v1 resource API: datasets, DICOM stores and operations under /v1/ (and /v1beta1/), and
the log entries of operations under /v1/projects/{project}/logs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomlake.errors import InvalidArgument, NotFound, PayloadTooLarge
from dicomlake.operations import exporting, importing, records, table_export
from dicomlake.services import Services
from dicomlake.store import catalog, logs

VERSIONS = ("v1", "v1beta1")
DATASET_TYPE = "type.googleapis.com/google.cloud.healthcare.v1.dataset.Dataset"


def services(request: Request) -> Services:
    return request.app.state.services


def json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


# A resource's JSON (a DicomStore, an import or export request) is small and shallow; these bounds keep a body
# from taking the server's memory, and keep what is stored from it within orjson's 255 levels of nesting.
MAX_BODY_BYTES = 1 << 20
MAX_BODY_DEPTH = 32


def body_json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    if _depth(body) > MAX_BODY_DEPTH:
        raise InvalidArgument(f"the request body nests objects and arrays more than {MAX_BODY_DEPTH} levels deep")
    return body


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in a parsed JSON value (a scalar is 0); without recursion."""
    deepest, level = 0, [value]
    while level:
        deepest += 1
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
            if isinstance(child, dict | list)
        ]
    return deepest


def with_body(handler: Callable[[Request, bytes], Response]) -> Callable[[Request], Awaitable[Response]]:
    """A route whose handler needs the request body: the body is read on the event loop (at most
    MAX_BODY_BYTES), and the handler, which writes the index and deletes blobs, runs in the thread pool."""

    async def endpoint(request: Request) -> Response:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return await run_in_threadpool(handler, request, b"".join(chunks))

    return endpoint


def list_response(field: str, items: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    """A list method's answer as proto3 JSON: empty lists and tokens are left out, so no match is `{}`."""
    out: dict[str, Any] = {field: items} if items else {}
    if token:
        out["nextPageToken"] = token
    return out


def page_size(request: Request) -> int | None:
    value = request.query_params.get("pageSize")
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"pageSize must be an integer, got {value!r}") from None


def split_verb(segment: str) -> tuple[str, str | None]:
    resource, sep, verb = segment.partition(":")
    return resource, (verb if sep else None)


def dataset_of(request: Request) -> catalog.DatasetRef:
    p = request.path_params
    dataset_id, verb = split_verb(p["dataset"])
    if verb:
        raise NotFound(f"unknown method :{verb} on datasets")
    return catalog.get_dataset(services(request).db, p["project"], p["location"], dataset_id)


def store_of(request: Request, store_id: str) -> catalog.StoreRef:
    p = request.path_params
    dataset_id, verb = split_verb(p["dataset"])
    if verb:
        raise NotFound(f"unknown method :{verb} on datasets")
    return catalog.find_store(services(request).db, p["project"], p["location"], dataset_id, store_id)


# ---- datasets ---------------------------------------------------------------------------------


def datasets_collection(request: Request, raw: bytes) -> Response:
    p = request.path_params
    db = services(request).db
    if request.method == "POST":
        dataset_id = request.query_params.get("datasetId", "")
        body_json(raw)
        dataset = catalog.create_dataset(db, p["project"], p["location"], dataset_id)
        return json(
            records.record_finished(db, dataset, records.CREATE_DATASET, {"@type": DATASET_TYPE, "name": dataset.name})
        )
    refs, token = catalog.list_datasets(
        db, p["project"], p["location"], page_size(request), request.query_params.get("pageToken")
    )
    return json(list_response("datasets", [{"name": r.name} for r in refs], token))


def dataset_item(request: Request) -> Response:
    dataset = dataset_of(request)
    if request.method == "DELETE":
        svc = services(request)
        for key in catalog.delete_dataset(svc.db, dataset):
            svc.blobs.delete(key)
        return json({})
    return json({"name": dataset.name})


# ---- DICOM stores -----------------------------------------------------------------------------


def stores_collection(request: Request, raw: bytes) -> Response:
    db = services(request).db
    dataset = dataset_of(request)
    if request.method == "POST":
        store_id = request.query_params.get("dicomStoreId", "")
        store = catalog.create_store(db, dataset, store_id, body_json(raw))
        return json(store.resource())
    refs, token = catalog.list_stores(
        db, dataset, page_size(request), request.query_params.get("pageToken"), request.query_params.get("filter")
    )
    return json(list_response("dicomStores", [r.resource() for r in refs], token))


def store_item(request: Request, raw: bytes) -> Response:
    store_id, verb = split_verb(request.path_params["store"])
    svc = services(request)
    if verb is not None:
        if verb == "getDICOMStoreMetrics" and request.method == "GET":
            return json(catalog.store_metrics(svc.db, store_of(request, store_id)))
        if verb == "import" and request.method == "POST":
            body = body_json(raw)
            return json(importing.start(svc, store_of(request, store_id), body))
        if verb == "export" and request.method == "POST":
            body = body_json(raw)
            if ("gcsDestination" in body) == ("bigqueryDestination" in body):
                raise InvalidArgument("set exactly one of gcsDestination and bigqueryDestination")
            kind = table_export if "bigqueryDestination" in body else exporting
            return json(kind.start(svc, store_of(request, store_id), body))
        raise NotFound(f"unknown method {request.method} :{verb} on DICOM stores")
    if request.method == "POST":
        raise NotFound("POST on a DICOM store needs a custom verb: .../dicomStores/STORE_ID:VERB")
    store = store_of(request, store_id)
    if request.method == "PATCH":
        body = body_json(raw)
        return json(catalog.patch_store(svc.db, store, body, request.query_params.get("updateMask")).resource())
    if request.method == "DELETE":
        for key in catalog.delete_store(svc.db, store):
            svc.blobs.delete(key)
        return json({})
    return json(store.resource())


# ---- operations -------------------------------------------------------------------------------


def operations_collection(request: Request) -> Response:
    dataset = dataset_of(request)
    params = request.query_params
    db = services(request).db
    return json(records.list_(db, dataset, page_size(request), params.get("pageToken"), params.get("filter")))


def operation_item(request: Request) -> Response:
    operation_id, verb = split_verb(request.path_params["operation"])
    dataset = dataset_of(request)
    db = services(request).db
    operation = records.get(db, dataset, operation_id)
    if verb == "cancel" and request.method == "POST":
        records.request_cancel(db, dataset, operation_id)
        return json({})
    if verb is not None or request.method != "GET":
        raise NotFound(f"unknown method {request.method} :{verb} on operations")
    return json(operation)


# ---- logs -------------------------------------------------------------------------------------


def logs_collection(request: Request) -> Response:
    """Cloud Logging's entries.list, reduced: GET with `filter` (the query an operation's logsUrl carries)."""
    project = request.path_params["project"]
    catalog.check_id("project", project)
    entries = logs.query(services(request).db, project, request.query_params.get("filter", ""))
    return json({"entries": entries} if entries else {})


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for version in VERSIONS:
        base = f"/{version}/projects/{{project}}/locations/{{location}}/datasets"
        out += [
            Route(base, with_body(datasets_collection), methods=["GET", "POST"]),
            Route(base + "/{dataset}", dataset_item, methods=["GET", "DELETE"]),
            Route(base + "/{dataset}/dicomStores", with_body(stores_collection), methods=["GET", "POST"]),
            Route(
                base + "/{dataset}/dicomStores/{store}",
                with_body(store_item),
                methods=["GET", "PATCH", "DELETE", "POST"],
            ),
            Route(base + "/{dataset}/operations", operations_collection, methods=["GET"]),
            Route(base + "/{dataset}/operations/{operation}", operation_item, methods=["GET", "POST"]),
            Route(f"/{version}/projects/{{project}}/logs", logs_collection, methods=["GET"]),
        ]
    return out
