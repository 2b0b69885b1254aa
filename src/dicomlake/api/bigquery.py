"""The part of BigQuery's REST API (v2) that google-cloud-bigquery needs to work on the embedded warehouse:
datasets, tables, tabledata.list, and query jobs (jobs.query, jobs.insert, jobs.get, jobs.getQueryResults),
under /bigquery/v2/projects/{project}/. Errors come in BigQuery's envelope, with `errors[].reason`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomlake.api.resources import body_json, json, services
from dicomlake.errors import DicomlakeError, InvalidArgument
from dicomlake.warehouse import embedded, inserts, jobs, results
from dicomlake.warehouse.embedded import AnyWarehouse, DatasetInfo, TableInfo, TableRef

PREFIX = "/bigquery/v2/projects/{project}"
# jobs.query and jobs.getQueryResults wait this long for a job when the request does not say (BigQuery's default).
DEFAULT_TIMEOUT_MS = 10_000
# timeoutMs only bounds how long a request waits for a job (the job runs on, under its own limits): at most this,
# after which the answer says jobComplete false and clients ask again (BigQuery too returns before a long timeoutMs).
MAX_WAIT_MS = 30_000
MAX_LIST_RESULTS = 1000
# Numbers beyond this (row counts, offsets) are taken as this.
MAX_NUMBER = 2**62

Handler = Callable[[Request], Awaitable[Response]]


def _bigquery_errors(handler: Handler) -> Handler:
    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except DicomlakeError as exc:
            return error_response(exc)

    return wrapped


def error_response(exc: DicomlakeError) -> Response:
    """BigQuery's error body: google-cloud-bigquery raises the matching exception (BadRequest, NotFound, Conflict)
    with `message`, and decides on retries by `errors[0].reason`."""
    item = {"message": exc.message, "domain": "global", "reason": jobs.reason_of(exc)}
    body = {"error": {"code": exc.http, "message": exc.message, "errors": [item], "status": exc.status}}
    return Response(orjson.dumps(body), status_code=exc.http, media_type="application/json")


def _warehouse(request: Request) -> AnyWarehouse:
    return services(request).warehouse


def _int_param(request: Request, name: str, default: int | None = None) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, got {value[:40]!r}") from None
    if number < 0:
        raise InvalidArgument(f"{name} must not be negative, got {value[:40]}")
    return min(number, MAX_NUMBER)


def _body_int(body: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgument(f"{name} must be an integer")
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, got {str(value)[:40]!r}") from None
    if number < 0:
        raise InvalidArgument(f"{name} must not be negative")
    return min(number, MAX_NUMBER)


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name} must be an object")
    return value


def _text(body: dict[str, Any], name: str, default: str = "") -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string")
    return value


def _labels(body: dict[str, Any]) -> dict[str, str]:
    """A resource's labels, as BigQuery allows them: at most 64, keys and values strings of at most 63
    characters."""
    labels = _object(body, "labels")
    if len(labels) > 64:
        raise InvalidArgument("at most 64 labels are allowed")
    for key, value in labels.items():
        if not isinstance(value, str) or len(key) > 63 or len(value) > 63 or not key:
            raise InvalidArgument(f"label {key[:63]!r}: keys and values are strings of 1 to 63 characters")
    return labels


async def _wait(wh: AnyWarehouse, job: jobs.Job, timeout_ms: int | None) -> jobs.Job:
    """The job once done, or as it is after timeoutMs (at most MAX_WAIT_MS): the request waits on the event loop,
    holding none of the threads that every other request needs."""
    deadline = time.monotonic() + min(timeout_ms or 0, MAX_WAIT_MS) / 1000
    if job.done or deadline <= time.monotonic():
        return job
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(ended.set)

    if jobs.when_done(wh, job.project, job.job_id, wake):
        # This process runs the job: woken the moment it ends.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), deadline - time.monotonic())
        return await run_in_threadpool(jobs.get, wh, job.project, job.job_id)
    delay = 0.002
    while not job.done and (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.1)
        job = await run_in_threadpool(jobs.get, wh, job.project, job.job_id)
    return job


def _bool_param(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("true", "1")


def _start(request: Request) -> int:
    """Where a page starts: the pageToken of the previous page, else startIndex."""
    token = request.query_params.get("pageToken")
    if token:
        if not token.isdigit():
            raise InvalidArgument(f"invalid pageToken {token!r}")
        return int(token)
    return _int_param(request, "startIndex", 0) or 0


def _page(request: Request, items: list[Any]) -> tuple[list[Any], str | None]:
    start = _start(request)
    size = _int_param(request, "maxResults") or MAX_LIST_RESULTS
    page = items[start : start + size]
    return page, (str(start + size) if start + size < len(items) else None)


def _timestamps(params: Any) -> str:
    """The TIMESTAMP encoding asked for by formatOptions (query parameters or the body of jobs.query)."""
    get = params.get
    if str(get("formatOptions.timestampOutputFormat") or get("timestampOutputFormat") or "") == "ISO8601_STRING":
        return results.TimestampFormat.ISO8601
    if str(get("formatOptions.useInt64Timestamp") or get("useInt64Timestamp") or "").lower() == "true":
        return results.TimestampFormat.INT64_MICROS
    return results.TimestampFormat.FLOAT_SECONDS


def _dataset_resource(info: DatasetInfo, full: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "bigquery#dataset",
        "id": f"{info.project}:{info.dataset}",
        "datasetReference": {"projectId": info.project, "datasetId": info.dataset},
        "location": info.location,
    }
    if info.labels:
        out["labels"] = info.labels
    if full:
        out.update(
            etag=f'"{info.modified_ms}"',
            creationTime=str(info.created_ms),
            lastModifiedTime=str(info.modified_ms),
            type="DEFAULT",
        )
        if info.description:
            out["description"] = info.description
    return out


def _table_resource(info: TableInfo, location: str, full: bool = True) -> dict[str, Any]:
    ref = info.ref
    out: dict[str, Any] = {
        "kind": "bigquery#table",
        "id": f"{ref.project}:{ref.dataset}.{ref.table}",
        "tableReference": {"projectId": ref.project, "datasetId": ref.dataset, "tableId": ref.table},
        "type": info.type,
        "creationTime": str(info.created_ms),
    }
    if info.type == "VIEW":
        out["view"] = {"query": info.view_query or "", "useLegacySql": False}
    if not full:
        return out
    out.update(
        etag=info.etag,
        lastModifiedTime=str(info.modified_ms),
        location=location,
        schema={"fields": info.fields},
    )
    if info.num_rows is not None:
        out.update(numRows=str(info.num_rows), numBytes="0", numLongTermBytes="0")
    if info.description:
        out["description"] = info.description
    return out


# ---- datasets ---------------------------------------------------------------------------------


@_bigquery_errors
async def datasets_collection(request: Request) -> Response:
    wh, project = _warehouse(request), request.path_params["project"]
    if request.method == "POST":
        body = body_json(await request.body())
        reference = _object(body, "datasetReference")
        if reference.get("projectId", project) != project:
            raise InvalidArgument("datasetReference.projectId must be the project of the request path")
        info = await run_in_threadpool(
            wh.create_dataset,
            project,
            _text(reference, "datasetId"),
            location=_text(body, "location") or None,
            description=_text(body, "description") or None,
            labels=_labels(body),
        )
        return json(_dataset_resource(info))
    infos = await run_in_threadpool(wh.list_datasets, project, include_hidden=_bool_param(request, "all"))
    page, token = _page(request, infos)
    out: dict[str, Any] = {"kind": "bigquery#datasetList", "etag": f'"{len(infos)}"'}
    if page:
        out["datasets"] = [_dataset_resource(i, full=False) for i in page]
    if token:
        out["nextPageToken"] = token
    return json(out)


@_bigquery_errors
async def dataset_item(request: Request) -> Response:
    wh, p = _warehouse(request), request.path_params
    if request.method == "DELETE":
        await run_in_threadpool(
            wh.delete_dataset,
            p["project"],
            p["dataset"],
            delete_contents=_bool_param(request, "deleteContents"),
        )
        return Response(status_code=204)
    return json(_dataset_resource(await run_in_threadpool(wh.get_dataset, p["project"], p["dataset"])))


# ---- tables -----------------------------------------------------------------------------------


@_bigquery_errors
async def tables_collection(request: Request) -> Response:
    wh, p = _warehouse(request), request.path_params
    dataset = await run_in_threadpool(wh.get_dataset, p["project"], p["dataset"])
    if request.method == "POST":
        body = body_json(await request.body())
        ref = TableRef(p["project"], p["dataset"], _text(_object(body, "tableReference"), "tableId"))
        view = _object(body, "view")
        if view:
            if view.get("useLegacySql"):
                raise InvalidArgument("legacy SQL views are not supported: set view.useLegacySql to false")
            info = await run_in_threadpool(wh.create_or_replace_view, ref, _text(view, "query"))
        else:
            fields = _object(body, "schema").get("fields") or []
            description = _text(body, "description") or None
            info = await run_in_threadpool(wh.create_table, ref, fields, description=description)
        return json(_table_resource(info, dataset.location))
    infos = await run_in_threadpool(wh.list_tables, p["project"], p["dataset"])
    page, token = _page(request, infos)
    out: dict[str, Any] = {"kind": "bigquery#tableList", "etag": f'"{len(infos)}"', "totalItems": len(infos)}
    if page:
        out["tables"] = [_table_resource(i, dataset.location, full=False) for i in page]
    if token:
        out["nextPageToken"] = token
    return json(out)


@_bigquery_errors
async def table_item(request: Request) -> Response:
    wh, p = _warehouse(request), request.path_params
    ref = TableRef(p["project"], p["dataset"], p["table"])
    if request.method == "DELETE":
        await run_in_threadpool(wh.delete_table, ref)
        return Response(status_code=204)
    dataset = await run_in_threadpool(wh.get_dataset, ref.project, ref.dataset)
    if request.method in ("PATCH", "PUT"):
        info = await run_in_threadpool(_patch_table, wh, ref, body_json(await request.body()), request)
    else:
        info = await run_in_threadpool(wh.get_table, ref)
    return json(_table_resource(info, dataset.location))


# What tables.patch and tables.update change; the table's own read-only fields may come back as they were read.
_PATCHABLE = {"schema", "description", "view"}
_READ_ONLY = {
    "kind", "id", "etag", "selfLink", "tableReference", "type", "creationTime", "lastModifiedTime", "location",
    "numRows", "numBytes", "numLongTermBytes", "streamingBuffer",
}  # fmt: skip


def _patch_table(wh: AnyWarehouse, ref: TableRef, body: dict[str, Any], request: Request) -> TableInfo:
    """tables.patch (PATCH) and tables.update (PUT): a table's schema (columns may be added, none left out) and
    description, or a view's query; `If-Match` makes it conditional on the table's etag."""
    unsupported = sorted(set(body) - _PATCHABLE - _READ_ONLY)
    if unsupported:
        raise InvalidArgument(f"cannot change {', '.join(unsupported)} of a table: only schema, description, view")
    view = _object(body, "view")
    if view:
        if view.get("useLegacySql"):
            raise InvalidArgument("legacy SQL views are not supported: set view.useLegacySql to false")
        return wh.create_or_replace_view(ref, _text(view, "query"))
    schema = _object(body, "schema")
    fields = schema.get("fields") if "schema" in body else None
    if fields is not None and not isinstance(fields, list):
        raise InvalidArgument("schema.fields must be a list of fields")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidArgument("description must be a string")
    if request.method == "PUT" and fields is None:
        raise InvalidArgument("tables.update needs the table's whole resource, its schema included")
    etag = request.headers.get("if-match")
    return wh.patch_table(ref, fields=fields, description=description, etag=etag)


@_bigquery_errors
async def table_insert_all(request: Request) -> Response:
    """tabledata.insertAll: rows as JSON into an existing table, checked against its schema row by row. Unless
    skipInvalidRows, one invalid row stops them all (the others' errors say `stopped`). insertIds seen in the
    last INSERT_ID_MEMORY rows of the table in this process are dropped, as BigQuery's best-effort
    de-duplication does."""
    wh, p = _warehouse(request), request.path_params
    ref = TableRef(p["project"], p["dataset"], p["table"])
    body = body_json(await request.body())
    rows = body.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidArgument("rows must be a list of {insertId, json} objects")
    if body.get("templateSuffix"):
        raise InvalidArgument("templateSuffix is not supported: insert into the table itself")
    errors = await run_in_threadpool(
        inserts.insert_all,
        wh,
        ref,
        rows,
        skip_invalid=body.get("skipInvalidRows") is True,
        ignore_unknown=body.get("ignoreUnknownValues") is True,
    )
    out: dict[str, Any] = {"kind": "bigquery#tableDataInsertAllResponse"}
    if errors:
        out["insertErrors"] = errors
    return json(out)


@_bigquery_errors
async def table_data(request: Request) -> Response:
    """tabledata.list: rows of a table in insertion order, a page at a time."""
    wh, p = _warehouse(request), request.path_params
    ref = TableRef(p["project"], p["dataset"], p["table"])
    start = _start(request)
    count = _int_param(request, "maxResults") or results.MAX_PAGE_ROWS
    selected = [c.strip() for c in request.query_params.get("selectedFields", "").split(",") if c.strip()]
    fields, page, total = await run_in_threadpool(wh.read_rows, ref, start, count, selected or None)
    page = page.slice(0, results.page_rows(page))
    out: dict[str, Any] = {"kind": "bigquery#tableDataList", "etag": f'"{total}"', "totalRows": str(total)}
    if page.num_rows:
        out["rows"] = await run_in_threadpool(results.rows_json, page, fields, _timestamps(request.query_params))
        if start + page.num_rows < total:
            out["pageToken"] = str(start + page.num_rows)
    return json(out)


# ---- jobs -------------------------------------------------------------------------------------


def _default_dataset(value: Any, project: str) -> tuple[str, str] | None:
    if not value:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("datasetId"), str) or not value["datasetId"]:
        raise InvalidArgument("defaultDataset must be {projectId, datasetId}")
    return str(value.get("projectId") or project), str(value["datasetId"])


def _check_standard_sql(config: dict[str, Any]) -> None:
    if config.get("useLegacySql") is True:
        raise InvalidArgument(
            "legacy SQL is not supported: send useLegacySql: false and write the query in GoogleSQL (Standard SQL)"
        )
    if config.get("queryParameters"):
        raise InvalidArgument("query parameters are not supported yet: put the values in the query text")


def job_resource(job: jobs.Job) -> dict[str, Any]:
    """The Job resource of jobs.get, jobs.insert and jobs.cancel."""
    config: dict[str, Any] = {"query": job.query, "useLegacySql": False, "priority": "INTERACTIVE"}
    jobconfig: dict[str, Any] = {"jobType": "QUERY", "query": config}
    if job.timeout_ms is not None:
        jobconfig["jobTimeoutMs"] = str(job.timeout_ms)
    if job.default_dataset:
        config["defaultDataset"] = {"projectId": job.default_dataset[0], "datasetId": job.default_dataset[1]}
    statistics: dict[str, Any] = {"creationTime": str(job.created_ms), "startTime": str(job.started_ms)}
    status: dict[str, Any] = {"state": job.state}
    if job.done:
        statistics["endTime"] = str(job.ended_ms)
        statistics["totalBytesProcessed"] = "0"
        statistics["query"] = {"totalBytesProcessed": "0", "totalBytesBilled": "0", "cacheHit": False}
        if job.statement_type:
            statistics["query"]["statementType"] = job.statement_type
        if job.affected_rows is not None:
            statistics["query"]["numDmlAffectedRows"] = str(job.affected_rows)
    if job.error:
        status["errorResult"] = _error_proto(job.error)
        status["errors"] = [_error_proto(job.error)]
    return {
        "kind": "bigquery#job",
        "etag": f'"{job.job_id}-{job.state}"',
        "id": f"{job.project}:{job.location}.{job.job_id}",
        "jobReference": _job_reference(job),
        "configuration": jobconfig,
        "statistics": statistics,
        "status": status,
    }


def _job_reference(job: jobs.Job) -> dict[str, str]:
    return {"projectId": job.project, "jobId": job.job_id, "location": job.location}


def _error_proto(error: dict[str, Any]) -> dict[str, str]:
    return {"reason": error["reason"], "message": error["message"]}


def _query_response(
    wh: AnyWarehouse,
    job: jobs.Job,
    *,
    start: int = 0,
    max_rows: int | None = None,
    timestamps: str = results.TimestampFormat.FLOAT_SECONDS,
    kind: str = "bigquery#getQueryResultsResponse",
) -> dict[str, Any]:
    """The QueryResponse / GetQueryResultsResponse for a page of a job's rows: `jobComplete: false` while it runs;
    the job's own error when it failed."""
    response: dict[str, Any] = {"kind": kind, "jobReference": _job_reference(job), "jobComplete": job.done}
    if not job.done:
        return response
    if job.error:
        raise jobs.JobFailed(job.error)
    response.update(totalBytesProcessed="0", cacheHit=False)
    if job.affected_rows is not None:
        response["numDmlAffectedRows"] = str(job.affected_rows)
    if not job.fields:
        response["totalRows"] = "0"
        return response
    response["schema"] = {"fields": job.fields}
    response["totalRows"] = str(job.total_rows)
    if max_rows == 0:
        return response
    fields, page, total = jobs.page(wh, job, start, max_rows)
    if page.num_rows:
        response["rows"] = results.rows_json(page, fields, timestamps)
        following = start + page.num_rows
        if following < total:
            response["pageToken"] = str(following)
    return response


@_bigquery_errors
async def queries_collection(request: Request) -> Response:
    """jobs.query: run a query and answer with its first page, if it ends within timeoutMs."""
    wh, project = _warehouse(request), request.path_params["project"]
    body = body_json(await request.body())
    _check_standard_sql(body)
    default_dataset = _default_dataset(body.get("defaultDataset"), project)
    location = _text(body, "location") or embedded.DEFAULT_LOCATION
    sql = _text(body, "query")
    if body.get("dryRun"):
        fields = await run_in_threadpool(jobs.dry_run, wh, project, sql, default_dataset)
        return json(
            {
                "kind": "bigquery#queryResponse",
                "schema": {"fields": fields},
                "jobReference": {"projectId": project, "location": location},
                "totalBytesProcessed": "0",
                "jobComplete": True,
                "cacheHit": False,
            }
        )
    timeout_ms, max_rows = _body_int(body, "timeoutMs", DEFAULT_TIMEOUT_MS), _body_int(body, "maxResults")
    formats = _object(body, "formatOptions")
    job = await run_in_threadpool(
        lambda: jobs.start(
            wh,
            project,
            sql,
            location=location,
            default_dataset=default_dataset,
            timeout_ms=_body_int(body, "jobTimeoutMs"),
        )
    )
    job = await _wait(wh, job, timeout_ms)
    response = await run_in_threadpool(
        lambda: _query_response(
            wh,
            job,
            max_rows=max_rows,
            timestamps=_timestamps(formats),
            kind="bigquery#queryResponse",
        )
    )
    return json(response)


@_bigquery_errors
async def query_results(request: Request) -> Response:
    """jobs.getQueryResults: wait up to timeoutMs for a job, then a page of its rows."""
    wh, p = _warehouse(request), request.path_params
    job = await run_in_threadpool(jobs.get, wh, p["project"], p["job"])
    timeout_ms = _int_param(request, "timeoutMs", DEFAULT_TIMEOUT_MS)
    job = await _wait(wh, job, timeout_ms)
    start, max_rows = _start(request), _int_param(request, "maxResults")
    timestamps = _timestamps(request.query_params)
    response = await run_in_threadpool(
        lambda: _query_response(wh, job, start=start, max_rows=max_rows, timestamps=timestamps)
    )
    return json(response)


@_bigquery_errors
async def jobs_collection(request: Request) -> Response:
    """jobs.insert, for query jobs: accepted at once, run in the background."""
    wh, project = _warehouse(request), request.path_params["project"]
    body = body_json(await request.body())
    configuration = _object(body, "configuration")
    config = configuration.get("query")
    if not isinstance(config, dict):
        raise InvalidArgument("only query jobs are supported: configuration.query is required")
    _check_standard_sql(config)
    if config.get("destinationTable"):
        raise InvalidArgument("query jobs with a destinationTable are not supported: use CREATE TABLE ... AS SELECT")
    reference = _object(body, "jobReference")
    default_dataset = _default_dataset(config.get("defaultDataset"), project)
    location = _text(reference, "location") or embedded.DEFAULT_LOCATION
    sql, job_id = _text(config, "query"), _text(reference, "jobId") or None
    job_timeout_ms = _body_int(configuration, "jobTimeoutMs")
    if configuration.get("dryRun"):
        fields = await run_in_threadpool(jobs.dry_run, wh, project, sql, default_dataset)
        statistics = {"totalBytesProcessed": "0", "query": {"totalBytesProcessed": "0", "schema": {"fields": fields}}}
        return json(
            {
                "kind": "bigquery#job",
                "jobReference": {"projectId": project, "location": location},
                "configuration": {"jobType": "QUERY", "dryRun": True, "query": config},
                "statistics": statistics,
                "status": {"state": "DONE"},
            }
        )
    job = await run_in_threadpool(
        lambda: jobs.start(
            wh,
            project,
            sql,
            job_id=job_id,
            location=location,
            default_dataset=default_dataset,
            timeout_ms=job_timeout_ms,
        )
    )
    return json(job_resource(job))


@_bigquery_errors
async def job_item(request: Request) -> Response:
    wh, p = _warehouse(request), request.path_params
    job = await run_in_threadpool(jobs.get, wh, p["project"], p["job"])
    return json(job_resource(job))


@_bigquery_errors
async def job_cancel(request: Request) -> Response:
    """jobs.cancel: the job is asked to stop (it does within a fraction of a second); the answer is the job as it
    is now, as BigQuery's."""
    wh, p = _warehouse(request), request.path_params
    job = await run_in_threadpool(jobs.cancel, wh, p["project"], p["job"])
    return json({"kind": "bigquery#jobCancelResponse", "job": job_resource(job)})


def routes() -> list[BaseRoute]:
    tables = PREFIX + "/datasets/{dataset}/tables"
    return [
        Route(PREFIX + "/datasets", datasets_collection, methods=["GET", "POST"]),
        Route(PREFIX + "/datasets/{dataset}", dataset_item, methods=["GET", "DELETE"]),
        Route(tables, tables_collection, methods=["GET", "POST"]),
        Route(tables + "/{table}", table_item, methods=["GET", "PATCH", "PUT", "DELETE"]),
        Route(tables + "/{table}/data", table_data, methods=["GET"]),
        Route(tables + "/{table}/insertAll", table_insert_all, methods=["POST"]),
        Route(PREFIX + "/queries", queries_collection, methods=["POST"]),
        Route(PREFIX + "/queries/{job}", query_results, methods=["GET"]),
        Route(PREFIX + "/jobs", jobs_collection, methods=["POST"]),
        Route(PREFIX + "/jobs/{job}", job_item, methods=["GET"]),
        Route(PREFIX + "/jobs/{job}/cancel", job_cancel, methods=["POST"]),
    ]
