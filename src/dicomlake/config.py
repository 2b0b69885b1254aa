"""Settings for a dicomlake process: command-line flags win over DICOMLAKE_* environment variables,
which win over the embedded defaults (everything inside one data directory)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


class ConfigError(ValueError):
    """A setting that cannot be used; the message is shown to the user as is."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./dicomlake-data")
    # Empty means: a SQLite file in the data dir.
    database_url: str = ""
    # Empty means: a local directory in the data dir. Otherwise file://, s3://, gs:// or memory://.
    blob_url: str = ""
    auth_tokens: frozenset[str] = field(default_factory=frozenset)
    auth_tokens_file: Path | None = None
    insecure: bool = False
    workers: int = 1
    log_level: str = "info"
    # Threads per process that run long-running operations (`serve` and `worker`).
    operation_threads: int = 2
    # A shard or planner whose worker sent no heartbeat for this long is taken over by another worker.
    operation_lease_seconds: float = 60.0
    # The only folders `file://` URIs of imports and exports may name; none by default.
    file_roots: tuple[Path, ...] = ()
    # "full": a success (STOW 200, an imported file) means the blob and the index commit are on stable
    # storage. "relaxed" skips the syncs: faster, but a power cut or kernel crash can lose acknowledged data.
    durability: str = "full"
    # BigQuery query jobs: wall-clock limit per query, memory limit per DuckDB instance (each project's file and
    # each query on no file or several), and queries a process runs at once (see docs/security.md).
    query_timeout_seconds: float = 300.0
    query_memory_mb: int = 256
    query_concurrency: int = 2
    # DIMSE listener of `dicomlake serve` (off when 0) and the file of peers (`AE_TITLE host port` per line).
    dimse_port: int = 0
    dimse_peers: Path | None = None
    # Origins whose pages may call the APIs from a browser (CORS), e.g. a viewer served elsewhere; "*" for
    # any (development). None by default.
    cors_origins: tuple[str, ...] = ()
    # Where `bq://` destinations of exports and streams go: empty for the embedded tables, else the base URL of a
    # BigQuery API (https://bigquery.googleapis.com for Google's; an emulator's; another dicomlake's).
    bigquery_url: str = ""
    # Where the tables live (the BigQuery API's, and `bq://` destinations unless bigquery_url is set): Iceberg
    # tables in the index database's catalog with their files under this URL (file://, s3://, gs://), or
    # "duckdb" for one DuckDB file per project in the data dir. Empty means `<data dir>/tables`.
    warehouse_url: str = ""
    # Proxies (addresses or networks, or "*") whose Forwarded / X-Forwarded-* headers are believed.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def resolved_blob_url(self) -> str:
        if self.blob_url:
            return self.blob_url
        return (self.data_dir / "blobs").resolve().as_uri()

    @property
    def resolved_warehouse_url(self) -> str:
        if self.warehouse_url:
            return self.warehouse_url
        return (self.data_dir / "tables").resolve().as_uri()

    @property
    def tokens(self) -> frozenset[str]:
        tokens = set(self.auth_tokens)
        if self.auth_tokens_file is not None:
            try:
                text = self.auth_tokens_file.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read auth tokens file {self.auth_tokens_file}: {exc.strerror}") from exc
            tokens.update(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
        return frozenset(tokens)

    def check_bind(self) -> None:
        """Refuse to expose an unauthenticated store beyond this machine."""
        if self.tokens or self.insecure or _is_loopback(self.host):
            return
        raise ConfigError(
            f"refusing to listen on {self.host} without access tokens: set DICOMLAKE_AUTH_TOKENS or "
            "--auth-tokens-file, or pass --insecure to serve without authentication"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def convert(name: str, raw: str) -> object:
    """The value of setting `name` from its text (an environment variable or a flag that takes a list)."""
    if name in ("operation_lease_seconds", "query_timeout_seconds"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"DICOMLAKE_{name.upper()} must be a number, got {raw!r}") from None
    if name in ("port", "workers", "operation_threads", "query_memory_mb", "query_concurrency", "dimse_port"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"DICOMLAKE_{name.upper()} must be an integer, got {raw!r}") from None
    if name in ("data_dir", "auth_tokens_file", "dimse_peers"):
        return Path(raw)
    if name == "insecure":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name == "file_roots":
        roots = tuple(Path(p) for p in raw.split(":") if p)
        relative = [str(p) for p in roots if not p.is_absolute()]
        if relative:
            raise ConfigError(f"DICOMLAKE_FILE_ROOTS takes absolute paths separated by ':', got {relative[0]!r}")
        return roots
    if name == "cors_origins":
        return tuple(_origin(o) for o in raw.split(",") if o.strip())
    if name == "forwarded_allow_ips":
        return tuple(_network(a) for a in raw.split(",") if a.strip())
    if name == "bigquery_url":
        return _base_url(raw, "DICOMLAKE_BIGQUERY_URL", "https://bigquery.googleapis.com")
    if name == "warehouse_url":
        return _warehouse_url(raw)
    if name == "auth_tokens":
        return frozenset(t.strip() for t in raw.split(",") if t.strip())
    return raw


def _warehouse_url(raw: str) -> str:
    text = raw.strip().rstrip("/")
    if text in ("", "duckdb"):
        return text
    url = urlparse(text)
    if url.scheme not in ("file", "s3", "gs") or (url.scheme != "file" and not url.netloc) or url.query:
        raise ConfigError(
            f"DICOMLAKE_WAREHOUSE_URL must be file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or duckdb, "
            f"got {raw!r}"
        )
    return text


def _base_url(raw: str, setting: str, example: str) -> str:
    """An http(s) base URL without query or fragment, and without a trailing slash; empty stays empty."""
    text = raw.strip()
    if not text:
        return ""
    url = urlparse(text)
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise ConfigError(f"{setting} takes a base URL like {example}, got {raw!r}")
    return text.rstrip("/")


def _origin(raw: str) -> str:
    """An origin as browsers send it: scheme://host[:port], no path, no trailing slash."""
    origin = raw.strip()
    if origin == "*":
        return origin
    url = urlparse(origin)
    if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/") or url.query:
        raise ConfigError(f"DICOMLAKE_CORS_ORIGINS takes origins like https://viewer.example.org or *, got {raw!r}")
    return f"{url.scheme}://{url.netloc.lower()}"


def _network(raw: str) -> str:
    address = raw.strip()
    if address == "*":
        return address
    try:
        ipaddress.ip_network(address, strict=False)
    except ValueError:
        raise ConfigError(f"DICOMLAKE_FORWARDED_ALLOW_IPS takes addresses, networks or *, got {raw!r}") from None
    return address


def load(**overrides: object) -> Settings:
    """Settings from the environment, then `overrides` (flags); None means "not given"."""
    values: dict[str, Any] = {}  # each field's own type, which `convert` and the flags give
    for f in fields(Settings):
        raw = os.environ.get(f"DICOMLAKE_{f.name.upper()}")
        if raw is not None and raw != "":
            values[f.name] = convert(f.name, raw)
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    settings = replace(Settings(), **values)
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port must be between 1 and 65535, got {settings.port}")
    if not 0 <= settings.dimse_port < 65536:
        raise ConfigError(f"DIMSE port must be between 1 and 65535 (or 0 for none), got {settings.dimse_port}")
    if settings.dimse_port and settings.dimse_port == settings.port:
        raise ConfigError(f"the DIMSE port and the HTTP port must differ, both are {settings.port}")
    if settings.workers < 1:
        raise ConfigError(f"workers must be at least 1, got {settings.workers}")
    if not settings.query_timeout_seconds > 0:
        raise ConfigError(f"query timeout must be more than 0 seconds, got {settings.query_timeout_seconds}")
    if settings.query_memory_mb < 64:
        raise ConfigError(f"query memory must be at least 64 MB, got {settings.query_memory_mb}")
    if settings.query_concurrency < 1:
        raise ConfigError(f"query concurrency must be at least 1, got {settings.query_concurrency}")
    if settings.durability not in ("full", "relaxed"):
        raise ConfigError(f"durability must be full or relaxed, got {settings.durability!r}")
    _check_file_roots(settings)
    if settings.bigquery_url and importlib.util.find_spec("google.cloud.bigquery") is None:
        raise ConfigError("DICOMLAKE_BIGQUERY_URL needs google-cloud-bigquery: pip install 'dicomlake[bigquery]'")
    return settings


def _check_file_roots(settings: Settings) -> None:
    """A file root must not overlap the data dir or the blob folder: imports and exports would reach them."""
    own = {"the data dir": settings.data_dir.resolve()}
    blob_url = urlparse(settings.resolved_blob_url)
    if blob_url.scheme == "file":
        own["the blob folder"] = Path(unquote(blob_url.path)).resolve()
    for root in settings.file_roots:
        resolved = root.resolve()
        for what, path in own.items():
            if resolved.is_relative_to(path) or path.is_relative_to(resolved):
                raise ConfigError(f"DICOMLAKE_FILE_ROOTS: {root} overlaps {what} {path}; list folders outside it")
