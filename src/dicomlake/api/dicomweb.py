"""DICOMweb under `{store}/dicomWeb/`: STOW-RS, QIDO-RS, WADO-RS (instances, metadata, frames,
rendered, bulk data) and DELETE, with Accept negotiation as the Cloud Healthcare conformance statement."""

from __future__ import annotations

import functools
import ipaddress
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from dicomlake.api.multipart import (
    IN_MEMORY_PART_BYTES,
    Part,
    parse_content_type,
    read_parts,
    read_single_part,
    write_parts,
)
from dicomlake.api.resources import VERSIONS, json, services, store_of
from dicomlake.dicom import bulkdata, pixels
from dicomlake.dicom.parse import BULKDATA_PREFIX, EXPLICIT_LE
from dicomlake.dicom.uids import InvalidUid, normalize_uid
from dicomlake.dicom.xml import to_xml
from dicomlake.errors import InvalidArgument, NotAcceptable, NotFound, UnsupportedMediaType
from dicomlake.operations import deleting
from dicomlake.store import frames as stored_pixels
from dicomlake.store import instances, lookup, search
from dicomlake.store.catalog import StoreRef
from dicomlake.store.instances import Failed, InstanceRow, Stored

# Transfer syntaxes a client may ask for (the conformance statement's list) besides "*".
RETRIEVABLE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.110",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.8.1",
    }
)


# ---- Accept negotiation -----------------------------------------------------------------------


def accepted(request: Request) -> list[tuple[str, dict[str, str]]]:
    """Media ranges of the Accept header, best first (q-values honoured, ties in header order)."""
    return [(media_type, dict(params)) for media_type, params in _media_ranges(request.headers.get("accept", ""))]


@functools.lru_cache(maxsize=256)
def _media_ranges(header: str) -> tuple[tuple[str, dict[str, str]], ...]:
    # A client sends the same few Accept headers again and again; parsing one takes 50 us (email.message).
    # Callers get copies of the parameters: the cached ones are never handed out.
    ranges = []
    for index, item in enumerate(_split_accept(header)):
        media_type, params = parse_content_type(item)
        if not media_type:
            continue
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append((-q, index, media_type, params))
    ranges.sort()
    return tuple((m, p) for _, _, m, p in ranges) or (("*/*", {}),)


def _split_accept(header: str) -> list[str]:
    # Commas separate media ranges, except inside quoted parameter values.
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


def _syntax(params: dict[str, str]) -> str:
    syntax = params.get("transfer-syntax", EXPLICIT_LE).strip()
    if syntax != "*" and syntax not in RETRIEVABLE_SYNTAXES:
        raise NotAcceptable(f"transfer syntax {syntax} is not supported for retrieval")
    return syntax


def choose_instance_media(request: Request, single_part_allowed: bool) -> tuple[bool, str]:
    """(multipart?, transfer syntax) for retrieving instances."""
    for media_type, params in accepted(request):
        if media_type == "multipart/related":
            part_type = params.get("type", "application/dicom").lower()
            if part_type in ("application/dicom", "*/*", "application/*"):
                return True, _syntax(params)
        elif media_type == "application/dicom" and single_part_allowed:
            return False, _syntax(params)
        elif media_type in ("*/*", "application/*"):
            return True, EXPLICIT_LE
    raise NotAcceptable(
        'cannot produce any accepted media type: ask for multipart/related; type="application/dicom"'
        + (" or application/dicom" if single_part_allowed else "")
    )


# ---- helpers ----------------------------------------------------------------------------------


def dicomweb_base(request: Request) -> str:
    """Absolute URL of the store's dicomWeb root, the base of RetrieveURLs and BulkDataURIs."""
    path = request.url.path
    return f"{request.url.scheme}://{_authority(request)}{path[: path.index('/dicomWeb') + len('/dicomWeb')]}"


def _authority(request: Request) -> str:
    url = request.url
    server = request.scope.get("server")
    default_port = 443 if url.scheme == "https" else 80
    if server is None or url.port is not None or server[1] in (None, default_port):
        return url.netloc
    # dicomweb-client sends "Host: <hostname>" without the port it connected to. When that name is the
    # address the connection reached, the port it left out is this server's, not the scheme's default;
    # a name a proxy forwards is left alone.
    if url.hostname == server[0] or (url.hostname == "localhost" and _is_loopback(server[0])):
        return f"{url.netloc}:{server[1]}"
    return url.netloc


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def instance_url(base: str, row: InstanceRow) -> str:
    return f"{base}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"


def _store(request: Request) -> StoreRef:
    return store_of(request, request.path_params["store"])


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    study = _path_uid(request, "study", "StudyInstanceUID")
    assert study is not None  # every route that reads UIDs has a study in its path
    return study, _path_uid(request, "series", "SeriesInstanceUID"), _path_uid(request, "instance", "SOPInstanceUID")


def _path_uid(request: Request, name: str, keyword: str) -> str | None:
    """The UID in the path segment `name`, if the route has one; InvalidArgument when it is not a UID."""
    value = request.path_params.get(name)
    if value is None:
        return None
    try:
        return normalize_uid(value, keyword)
    except InvalidUid as exc:
        raise InvalidArgument(f"invalid URL: {exc}") from None


def _one_instance(request: Request) -> InstanceRow:
    """The instance an instance route names (without its metadata): one indexed query on the lean path, the
    general lookup when it finds nothing, so that what is missing is named as on every other route."""
    try:
        study, series_uid, sop = _uids(request)
    except InvalidArgument:
        _store(request)  # a missing store is reported before a malformed UID, as everywhere else
        raise
    assert series_uid is not None and sop is not None  # the instance routes name all three
    p = request.path_params
    db = services(request).db
    row = lookup.instance_row(db, p["project"], p["location"], p["dataset"], p["store"], study, series_uid, sop)
    if row is None:
        row = instances.find(db, _store(request), study, series_uid, sop, with_metadata=False)[0]
    return row


def _convert(row: InstanceRow, data: bytes, wanted: str) -> bytes:
    try:
        return pixels.transcode(data, wanted)
    except pixels.PixelError as exc:
        raise NotAcceptable(f"cannot provide instance {row.sop_uid} in transfer syntax {wanted}: {exc}") from None


# ---- STOW-RS ----------------------------------------------------------------------------------


async def store_instances(request: Request) -> Response:
    svc = services(request)
    store = await run_in_threadpool(_store, request)
    expected = _path_uid(request, "study", "StudyInstanceUID")
    media_type, params = parse_content_type(request.headers.get("content-type", ""))
    results: list[Stored | Failed] = []
    if media_type == "application/dicom":
        part = await read_single_part(request.stream(), svc.scratch_dir)
        if not len(part.data):
            raise InvalidArgument("the request body is empty: send one DICOM instance as application/dicom")
        results.append(await _store_part(svc, store, part, expected))
    elif media_type == "multipart/related":
        part_type = params.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise UnsupportedMediaType(
                f'multipart type {part_type!r} is not supported: send type="application/dicom" parts'
            )
        batch = _Batch(svc, store, expected, results)
        try:
            async for part in read_parts(request.stream(), params.get("boundary", ""), svc.scratch_dir):
                part_media = parse_content_type(part.content_type)[0] if part.content_type else "application/dicom"
                if part_media != "application/dicom":
                    part.close()
                    await batch.flush()
                    results.append(
                        Failed(
                            None,
                            None,
                            instances.CANNOT_UNDERSTAND,
                            f"part of type {part_media!r} ignored: only application/dicom parts are stored",
                        )
                    )
                    continue
                await batch.add(part)
            await batch.flush()
        except InvalidArgument as exc:
            # The parts before the damage are stored; a bare 400 would hide them from the client.
            await batch.flush()
            if not results:
                raise
            results.append(Failed(None, None, instances.CANNOT_UNDERSTAND, exc.message))
        finally:
            batch.close()
    else:
        raise UnsupportedMediaType(
            'Content-Type must be multipart/related; type="application/dicom" or application/dicom, '
            f"got {request.headers.get('content-type', 'none')!r}"
        )
    if not results:
        raise InvalidArgument("the request body holds no DICOM instance")
    return _stow_response(request, results)


class _Batch:
    """Parts waiting to be stored together: one trip to a worker thread and two index transactions per
    batch instead of per instance. Bounded in count and bytes; a part that spilled to disk goes alone."""

    MAX_PARTS = 32
    MAX_BYTES = 16 * 1024 * 1024

    def __init__(self, svc: Any, store: StoreRef, expected: str | None, results: list[Stored | Failed]) -> None:
        self.svc, self.store, self.expected, self.results = svc, store, expected, results
        self.parts: list[Part] = []
        self.size = 0

    async def add(self, part: Part) -> None:
        self.parts.append(part)
        self.size += len(part.data)
        if len(self.parts) >= self.MAX_PARTS or self.size >= self.MAX_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if not self.parts:
            return
        try:
            self.results.extend(
                await run_in_threadpool(
                    instances.store_instances,
                    self.svc.db,
                    self.svc.blobs,
                    self.store,
                    [p.data for p in self.parts],
                    self.expected,
                )
            )
        finally:
            self.close()

    def close(self) -> None:
        for part in self.parts:
            part.close()
        self.parts, self.size = [], 0


async def _store_part(svc: Any, store: StoreRef, part: Part, expected: str | None) -> Stored | Failed:
    try:
        return await run_in_threadpool(instances.store_instance, svc.db, svc.blobs, store, part.data, expected)
    finally:
        part.close()


def _stow_response(request: Request, results: list[Stored | Failed]) -> Response:
    base = dicomweb_base(request)
    referenced, failed = [], []
    study_urls = set()
    for result in results:
        if isinstance(result, Stored):
            url = f"{base}/studies/{result.study_uid}/series/{result.series_uid}/instances/{result.sop_uid}"
            study_urls.add(f"{base}/studies/{result.study_uid}")
            referenced.append(
                {
                    "00081150": _ui(result.sop_class_uid),
                    "00081155": _ui(result.sop_uid),
                    "00081190": {"vr": "UR", "Value": [url]},
                }
            )
        else:
            failed.append(
                {
                    "00081150": _ui(result.sop_class_uid),
                    "00081155": _ui(result.sop_uid),
                    "00081197": {"vr": "US", "Value": [result.reason]},
                    "detail": result.detail,
                }
            )
    use_xml = _wants_xml(request)
    detail_key = "00090097" if use_xml else "00091097"
    for item in failed:
        item[detail_key] = {"vr": "LT", "Value": [item.pop("detail")]}
    dataset: dict[str, Any] = {}
    if len(study_urls) == 1:
        dataset["00081190"] = {"vr": "UR", "Value": [study_urls.pop()]}
    if failed:
        dataset["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        dataset["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 409 if failed else 200
    if use_xml:
        return Response(to_xml(dataset), status_code=status, media_type="application/dicom+xml")
    return Response(orjson.dumps(dataset), status_code=status, media_type="application/dicom+json")


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _wants_xml(request: Request) -> bool:
    for media_type, params in accepted(request):
        if media_type in ("application/dicom+json", "application/json"):
            return False
        if media_type == "application/dicom+xml" or (
            media_type == "multipart/related" and params.get("type", "").lower() == "application/dicom+xml"
        ):
            return True
    # Google's default for STOW responses.
    return True


# ---- QIDO-RS ----------------------------------------------------------------------------------


def _search(level: str) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        store = _store(request)
        query = search.parse_query(level, request.query_params.multi_items())
        study = _path_uid(request, "study", "StudyInstanceUID")
        results = search.search(
            services(request).db, store, query, study, _path_uid(request, "series", "SeriesInstanceUID")
        )
        if not results:
            return Response(status_code=204)
        for media_type, params_ in accepted(request):
            if media_type in ("application/dicom+json", "application/json", "*/*", "application/*"):
                return Response(orjson.dumps(results), media_type="application/dicom+json")
            if media_type == "multipart/related" and params_.get("type", "").lower() == "application/dicom+xml":
                boundary = uuid.uuid4().hex
                body = b"".join(write_parts(boundary, [("application/dicom+xml", to_xml(r)) for r in results]))
                media_type = f'multipart/related; type="application/dicom+xml"; boundary={boundary}'
                return Response(body, media_type=media_type)
        raise NotAcceptable(
            'search results are available as application/dicom+json or multipart/related; type="application/dicom+xml"'
        )

    return endpoint


# ---- WADO-RS ----------------------------------------------------------------------------------


def study_or_series(request: Request) -> Response:
    if request.method == "DELETE":
        return _delete(request)
    return _retrieve(request, single_part_allowed=False)


def instance(request: Request) -> Response:
    if request.method == "DELETE":
        return _delete(request)
    return _retrieve(request, single_part_allowed=True)


def _retrieve(request: Request, single_part_allowed: bool) -> Response:
    svc = services(request)
    multipart, syntax = choose_instance_media(request, single_part_allowed)
    if single_part_allowed:  # the instance route
        rows = [_one_instance(request)]
    else:
        rows = instances.find(svc.db, _store(request), *_uids(request), with_metadata=False)
    to_convert = [row for row in rows if syntax not in ("*", row.transfer_syntax_uid)]
    if not multipart:
        row = rows[0]
        if to_convert:
            return Response(
                _convert(row, svc.blobs.get(row.blob_key), syntax),
                media_type=f"application/dicom; transfer-syntax={syntax}",
            )
        media_type = f"application/dicom; transfer-syntax={row.transfer_syntax_uid}"
        if row.blob_size <= IN_MEMORY_PART_BYTES:
            return Response(svc.blobs.get(row.blob_key), media_type=media_type)
        return StreamingResponse(
            svc.blobs.stream(row.blob_key), headers={"Content-Length": str(row.blob_size)}, media_type=media_type
        )
    if len(rows) == 1 and not to_convert and rows[0].blob_size <= IN_MEMORY_PART_BYTES:
        # One small instance (what a viewer asks for): one body in memory, not a stream whose every chunk
        # is a trip between threads; a lost blob is a 404 from the read itself.
        row, boundary = rows[0], uuid.uuid4().hex
        part = (f"application/dicom; transfer-syntax={row.transfer_syntax_uid}", svc.blobs.get(row.blob_key))
        return Response(b"".join(write_parts(boundary, [part])), media_type=_instances_media(boundary, syntax))
    svc.blobs.require(row.blob_key for row in rows)  # a lost blob: 404 now, not a body cut short
    # Every conversion runs before the answer starts, so an instance that cannot be converted is a clean 406
    # instead of a body cut short; the converted copies wait in a scratch file, the rest stream from storage.
    # Closed by bodies() once sent, so it outlives this function: no with block.
    spool = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY_PART_BYTES, dir=str(svc.scratch_dir))  # noqa: SIM115
    spans: dict[str, tuple[int, int]] = {}
    try:
        for row in to_convert:
            data = _convert(row, svc.blobs.get(row.blob_key), syntax)
            spans[row.blob_key] = (spool.tell(), len(data))
            spool.write(data)
    except BaseException:
        spool.close()
        raise

    def bodies() -> Iterator[tuple[str, bytes | Iterable[bytes]]]:
        try:
            for row in rows:
                span = spans.get(row.blob_key)
                if span is None:
                    content_type = f"application/dicom; transfer-syntax={row.transfer_syntax_uid}"
                    # One read for the usual small instance; a large one streams in chunks.
                    small = row.blob_size <= IN_MEMORY_PART_BYTES
                    yield content_type, svc.blobs.get(row.blob_key) if small else svc.blobs.stream(row.blob_key)
                else:
                    yield f"application/dicom; transfer-syntax={syntax}", _read_span(spool, *span)
        finally:
            spool.close()

    boundary = uuid.uuid4().hex
    return StreamingResponse(write_parts(boundary, bodies()), media_type=_instances_media(boundary, syntax))


def _instances_media(boundary: str, syntax: str) -> str:
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return media if syntax == "*" else f"{media}; transfer-syntax={syntax}"


def _read_span(file: IO[bytes], start: int, length: int, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    file.seek(start)
    while length > 0:
        chunk = file.read(min(chunk_size, length))
        length -= len(chunk)
        yield chunk


def metadata(request: Request) -> Response:
    svc = services(request)
    for media_type, params in accepted(request):
        if media_type in ("application/dicom+json", "application/json", "*/*", "application/*"):
            break
        if media_type == "multipart/related" and params.get("type", "").lower() == "application/dicom+xml":
            break
    else:
        raise NotAcceptable(
            'metadata is available as application/dicom+json or multipart/related; type="application/dicom+xml"'
        )
    rows = instances.find(svc.db, _store(request), *_uids(request))
    base = dicomweb_base(request)
    documents = [row.metadata.replace(BULKDATA_PREFIX, instance_url(base, row) + "/bulkdata/") for row in rows]
    if media_type == "multipart/related":
        boundary = uuid.uuid4().hex
        body = b"".join(write_parts(boundary, [("application/dicom+xml", to_xml(orjson.loads(d))) for d in documents]))
        return Response(body, media_type=f'multipart/related; type="application/dicom+xml"; boundary={boundary}')
    return Response(("[" + ",".join(documents) + "]").encode(), media_type="application/dicom+json")


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise InvalidArgument(f"frame list {text!r} must be comma-separated frame numbers") from None
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > 100_000:
        raise InvalidArgument(f"frame list {text!r} must hold frame numbers starting at 1")
    return numbers


def frames(request: Request) -> Response:
    svc = services(request)
    numbers = _frame_numbers(request.path_params["frames"])
    row = _one_instance(request)
    multipart, syntax, part_type = _choose_frame_media(request, row.transfer_syntax_uid)
    try:
        payloads = stored_pixels.stored_frames(svc.blobs, row, numbers, syntax)
    except pixels.PixelError as exc:
        raise InvalidArgument(f"cannot retrieve frames {request.path_params['frames']}: {exc}") from None
    if syntax != "*":
        actual = syntax
    elif row.transfer_syntax_uid in pixels.NATIVE_SYNTAXES:
        actual = EXPLICIT_LE  # native frames are raw little-endian pixels, whatever the stored encoding
    else:
        actual = row.transfer_syntax_uid
    content_type = f"{part_type}; transfer-syntax={actual}"
    if not multipart:
        if len(payloads) != 1:
            raise NotAcceptable("a single-part response holds one frame: ask for multipart/related for several")
        return Response(payloads[0], media_type=content_type)
    boundary = uuid.uuid4().hex
    body = b"".join(write_parts(boundary, [(content_type, p) for p in payloads]))  # the frames are in memory already
    return Response(body, media_type=f'multipart/related; type="{part_type}"; boundary={boundary}')


_COMPRESSED_FRAME_TYPES = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/jxl": ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
}


def _choose_frame_media(request: Request, stored: str) -> tuple[bool, str, str]:
    """(multipart?, transfer syntax or '*', part media type) for frame retrieval."""
    for media_type, params in accepted(request):
        multipart = media_type == "multipart/related"
        part_type = params.get("type", "application/octet-stream").lower() if multipart else media_type
        syntax = params.get("transfer-syntax")
        if part_type in ("*/*", "application/*"):
            # A wildcard leaves the media type to the server: octet-stream, as stored when asked with "*".
            if syntax not in (None, "*", EXPLICIT_LE, stored):
                continue
            as_stored = syntax in ("*", stored)
            return multipart or part_type == "*/*", "*" if as_stored else EXPLICIT_LE, "application/octet-stream"
        if part_type == "application/octet-stream":
            if syntax not in (None, "*", EXPLICIT_LE):
                continue
            return multipart, syntax or EXPLICIT_LE, part_type
        if (
            part_type in _COMPRESSED_FRAME_TYPES
            and stored in _COMPRESSED_FRAME_TYPES[part_type]
            and syntax in (None, "*", stored)
        ):
            return multipart, "*", part_type
    raise NotAcceptable(
        "cannot produce the frames in any accepted media type: ask for multipart/related; "
        'type="application/octet-stream" (transfer-syntax 1.2.840.10008.1.2.1 or *)'
    )


def rendered(request: Request) -> Response:
    svc = services(request)
    multipart, media_type = _choose_rendered_media(request)
    size = _viewport(request.query_params.get("viewport"))
    quality = _quality(request.query_params.get("quality"))
    frame_list = request.path_params.get("frames")
    numbers = _frame_numbers(frame_list) if frame_list else [1]
    row = _one_instance(request)
    try:
        images = stored_pixels.render_frames(
            svc.blobs, row, numbers, stored_pixels.Rendering(media_type, size, quality)
        )
    except pixels.PixelError as exc:
        raise InvalidArgument(f"cannot render this instance: {exc}") from None
    if len(images) == 1 and not multipart:
        return Response(images[0], media_type=media_type)
    boundary = uuid.uuid4().hex
    body = b"".join(write_parts(boundary, [(media_type, i) for i in images]))
    return Response(body, media_type=f'multipart/related; type="{media_type}"; boundary={boundary}')


def _choose_rendered_media(request: Request) -> tuple[bool, str]:
    """(multipart?, image media type); several frames are always sent as multipart."""
    for media_type, params in accepted(request):
        multipart = media_type == "multipart/related"
        part_type = params.get("type", "image/jpeg").lower() if multipart else media_type
        if part_type in ("image/jpeg", "image/png"):
            return multipart, part_type
        if part_type in ("*/*", "image/*"):
            return multipart, "image/jpeg"
    raise NotAcceptable("rendered images are available as image/jpeg or image/png")


def _viewport(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        return pixels.parse_viewport(value)
    except pixels.PixelError as exc:
        raise InvalidArgument(str(exc)) from None


def _quality(value: str | None) -> int:
    if value is None:
        return 90
    try:
        quality = int(value)
    except ValueError:
        quality = -1
    if not 1 <= quality <= 100:
        raise InvalidArgument(f"quality must be an integer from 1 to 100, got {value!r}")
    return quality


def bulk(request: Request) -> Response:
    svc = services(request)
    row = _one_instance(request)
    for media_type, params in accepted(request):
        multipart = media_type == "multipart/related"
        part_type = params.get("type", "application/octet-stream").lower() if multipart else media_type
        if part_type in ("application/octet-stream", "application/*", "*/*"):
            # Bare wildcards get the standard's multipart answer.
            multipart = multipart or media_type != "application/octet-stream"
            break
    else:
        raise NotAcceptable('bulk data is available as multipart/related; type="application/octet-stream"')
    try:
        value = bulkdata.extract(svc.blobs.get(row.blob_key), request.path_params["path"])
    except bulkdata.BulkDataError as exc:
        raise NotFound(str(exc)) from None
    except pixels.PixelError as exc:
        raise NotAcceptable(f"cannot provide the pixel data uncompressed: {exc}") from None
    if not multipart:
        return Response(value, media_type="application/octet-stream")
    boundary = uuid.uuid4().hex
    body = b"".join(write_parts(boundary, [("application/octet-stream", value)]))
    return Response(body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


# ---- DELETE -----------------------------------------------------------------------------------


def _delete(request: Request) -> Response:
    svc = services(request)
    store = _store(request)
    study, series_uid, sop = _uids(request)
    if sop is None:
        return json(deleting.start(svc, store, study, series_uid))
    instances.delete(svc.db, svc.blobs, store, study, series_uid, sop)
    return json({})


def routes() -> list[BaseRoute]:
    instance_path = "/studies/{study}/series/{series}/instances/{instance}"
    dicomweb = [
        Route("/studies", store_instances, methods=["POST"]),
        Route("/studies", _search("study"), methods=["GET"]),
        Route("/series", _search("series"), methods=["GET"]),
        Route("/instances", _search("instance"), methods=["GET"]),
        Route("/studies/{study}", store_instances, methods=["POST"]),
        Route("/studies/{study}", study_or_series, methods=["GET", "DELETE"]),
        Route("/studies/{study}/metadata", metadata, methods=["GET"]),
        Route("/studies/{study}/series", _search("series"), methods=["GET"]),
        Route("/studies/{study}/instances", _search("instance"), methods=["GET"]),
        Route("/studies/{study}/series/{series}", study_or_series, methods=["GET", "DELETE"]),
        Route("/studies/{study}/series/{series}/metadata", metadata, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances", _search("instance"), methods=["GET"]),
        Route(instance_path, instance, methods=["GET", "DELETE"]),
        Route(instance_path + "/metadata", metadata, methods=["GET"]),
        Route(instance_path + "/rendered", rendered, methods=["GET"]),
        Route(instance_path + "/frames/{frames}", frames, methods=["GET"]),
        Route(instance_path + "/frames/{frames}/rendered", rendered, methods=["GET"]),
        Route(instance_path + "/bulkdata/{path:path}", bulk, methods=["GET"]),
    ]
    store_path = "/projects/{project}/locations/{location}/datasets/{dataset}/dicomStores/{store}/dicomWeb"
    return [Mount(f"/{version}{store_path}", routes=dicomweb) for version in VERSIONS]
