"""`dicomlake query` and `dicomlake bq mk|ls|show|rm`: the everyday commands of BigQuery's `bq` tool, against the
BigQuery API (/bigquery/v2/) of a running dicomlake server."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import click

from dicomlake.cli.client import Client, error_line, pass_client
from dicomlake.cli.common import fail
from dicomlake.cli.output import table

# Rows asked for per request while reading a result.
PAGE_ROWS = 10_000
WAIT_MS = 10_000

project_flag = click.option("--project", envvar="DICOMLAKE_PROJECT", help="Project (env DICOMLAKE_PROJECT).")


def call(
    client: Client, method: str, path: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`method` on `{endpoint}/bigquery/v2/{path}`: the JSON answer, or fail() with the server's message."""
    url = f"{client.endpoint}/bigquery/v2/{urllib.parse.quote(path, safe='/:')}"
    query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
    if query:
        url += "?" + urllib.parse.urlencode(query)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if client.token:
        headers["Authorization"] = f"Bearer {client.token}"
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=client.timeout + WAIT_MS / 1000) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        fail(error_line(exc.code, exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(
            f"cannot reach the dicomlake server at {client.endpoint} ({reason}): start it with `dicomlake serve`, "
            "or name it with --api-endpoint or DICOMLAKE_API_ENDPOINT"
        )
    return json.loads(raw) if raw.strip() else {}


def split_name(text: str, project: str | None) -> tuple[str, str, str | None]:
    """(project, dataset, table or None) from `P:D.T`, `P:D`, `P.D.T`, `D.T` or `D`."""
    if ":" in text:
        project, _, rest = text.rpartition(":")
        dataset, _, table = rest.partition(".")
    else:
        parts = text.split(".")
        if len(parts) == 3:
            project, dataset, table = parts
        elif len(parts) in (1, 2):
            dataset, table = parts[0], (parts[1] if len(parts) == 2 else "")
        else:
            fail(f"invalid name {text!r}: expected [PROJECT:]DATASET[.TABLE]")
    if not project:
        fail(f"no project for {text!r}: write PROJECT:{text}, pass --project, or set DICOMLAKE_PROJECT")
    if not dataset:
        fail(f"invalid name {text!r}: expected [PROJECT:]DATASET[.TABLE]")
    return project, dataset, table or None


# ---- query ------------------------------------------------------------------------------------


@click.command()
@click.argument("sql")
@project_flag
@click.option(
    "--format",
    "format_",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option("--max-rows", type=click.IntRange(min=0), default=100, show_default=True, help="Rows to print at most.")
@click.option("--dataset", help="Default dataset for table names without one ([PROJECT:]DATASET).")
@pass_client
def query(sql: str, project: str | None, format_: str, max_rows: int, dataset: str | None, client: Client) -> None:
    """Run a GoogleSQL (BigQuery Standard SQL) query on the server's tables and print its rows."""
    if not project:
        fail("no project given: pass --project=PROJECT or set DICOMLAKE_PROJECT")
    body: dict[str, Any] = {
        "query": sql,
        "useLegacySql": False,
        "maxResults": min(max_rows, PAGE_ROWS),
        "timeoutMs": WAIT_MS,
        "formatOptions": {"useInt64Timestamp": True},
    }
    if dataset:
        default_project, default_dataset, _ = split_name(dataset, project)
        body["defaultDataset"] = {"projectId": default_project, "datasetId": default_dataset}
    response = call(client, "POST", f"projects/{project}/queries", body=body)
    job = response.get("jobReference", {})
    path = f"projects/{project}/queries/{job.get('jobId')}"
    while not response.get("jobComplete"):
        response = call(client, "GET", path, {"timeoutMs": WAIT_MS, "maxResults": min(max_rows, PAGE_ROWS)})
    if "numDmlAffectedRows" in response:
        click.echo(f"Number of affected rows: {response['numDmlAffectedRows']}")
        return
    fields = (response.get("schema") or {}).get("fields", [])
    if not fields:
        return
    rows = response.get("rows", [])
    while len(rows) < max_rows and response.get("pageToken"):
        params = {
            "pageToken": response["pageToken"],
            "maxResults": min(max_rows - len(rows), PAGE_ROWS),
            "formatOptions.useInt64Timestamp": "true",
        }
        response = call(client, "GET", path, params)
        rows += response.get("rows", [])
    values = [_record(fields, row) for row in rows[:max_rows]]
    click.echo(_render(fields, values, format_), nl=False)


def _record(fields: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    """A REST row as a plain object: scalars stay strings (as bq prints them), TIMESTAMPs become UTC text."""
    return {f["name"]: _value(f, cell["v"]) for f, cell in zip(fields, row["f"], strict=True)}


def _value(field: dict[str, Any], value: Any) -> Any:
    if value is None:
        return None
    if field.get("mode") == "REPEATED":
        return [_value({**field, "mode": "NULLABLE"}, item["v"]) for item in value]
    if field["type"] in ("RECORD", "STRUCT"):
        return _record(field["fields"], value)
    if field["type"] == "TIMESTAMP":
        when = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(value))
        return when.isoformat(sep=" ")
    return value


def _render(fields: list[dict[str, Any]], rows: list[dict[str, Any]], format_: str) -> str:
    names = [f["name"] for f in fields]
    if format_ == "json":
        return json.dumps(rows, ensure_ascii=False) + "\n"
    texts = [[_text(row[n]) for n in names] for row in rows]
    if format_ == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(texts)
        return out.getvalue()
    return table(names, texts) if texts else "  ".join(names) + "\n"


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ---- bq ---------------------------------------------------------------------------------------


@click.group()
def bq() -> None:
    """BigQuery datasets and tables of the server's warehouse, as the `bq` tool shows them."""


@bq.command()
@click.argument("name")
@project_flag
@click.option("--location", help="Dataset location (default US).")
@click.option("--description", help="Dataset description.")
@pass_client
def mk(name: str, project: str | None, location: str | None, description: str | None, client: Client) -> None:
    """Create the dataset NAME ([PROJECT:]DATASET)."""
    project, dataset, table_id = split_name(name, project)
    if table_id:
        fail(f"bq mk here creates datasets only; {name!r} names a table (tables are created by exports and streams)")
    body: dict[str, Any] = {"datasetReference": {"projectId": project, "datasetId": dataset}}
    if location:
        body["location"] = location
    if description:
        body["description"] = description
    call(client, "POST", f"projects/{project}/datasets", body=body)
    click.echo(f"Dataset '{project}:{dataset}' successfully created.")


@bq.command(name="ls")
@click.argument("name", required=False)
@project_flag
@click.option("--format", "format_", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_client
def ls(name: str | None, project: str | None, format_: str, client: Client) -> None:
    """List the datasets of the project, or the tables of the dataset NAME ([PROJECT:]DATASET)."""
    if name:
        project, dataset, table_id = split_name(name, project)
        if table_id:
            fail(f"bq ls lists datasets or the tables of one; {name!r} names a table (use bq show)")
        items = _list_all(client, f"projects/{project}/datasets/{dataset}/tables", "tables")
        columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
            ("tableId", lambda t: t["tableReference"]["tableId"]),
            ("Type", lambda t: t.get("type", "")),
        ]
    else:
        if not project:
            fail("no project given: pass --project=PROJECT or set DICOMLAKE_PROJECT")
        items = _list_all(client, f"projects/{project}/datasets", "datasets")
        columns = [("datasetId", lambda d: d["datasetReference"]["datasetId"]), ("location", lambda d: d["location"])]
    if format_ == "json":
        click.echo(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        click.echo(table([c for c, _ in columns], [[get(i) for _, get in columns] for i in items]), nl=False)


@bq.command()
@click.argument("name")
@project_flag
@click.option("--format", "format_", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--schema", "schema_only", is_flag=True, help="Show only the schema of a table.")
@pass_client
def show(name: str, project: str | None, format_: str, schema_only: bool, client: Client) -> None:
    """Show the dataset or table NAME ([PROJECT:]DATASET[.TABLE]) with its schema."""
    project, dataset, table_id = split_name(name, project)
    path = f"projects/{project}/datasets/{dataset}" + (f"/tables/{table_id}" if table_id else "")
    resource = call(client, "GET", path)
    fields = (resource.get("schema") or {}).get("fields", [])
    if format_ == "json":
        click.echo(json.dumps(fields if schema_only else resource, indent=2, ensure_ascii=False))
        return
    if schema_only:
        click.echo(_schema_tree(fields), nl=False)
        return
    label = f"{project}:{dataset}" + (f".{table_id}" if table_id else "")
    lines = [f"{'Table' if table_id else 'Dataset'} {label}", ""]
    lines.append(f"  Last modified: {_time(resource.get('lastModifiedTime'))}")
    if table_id:
        lines.append(f"  Type: {resource.get('type', 'TABLE')}")
        if "numRows" in resource:
            lines.append(f"  Total rows: {resource['numRows']}")
        if resource.get("view"):
            lines.append(f"  Query: {resource['view'].get('query', '')}")
        lines += ["", "  Schema:", *("  " + line for line in _schema_tree(fields).splitlines())]
    else:
        lines.append(f"  Location: {resource.get('location', '')}")
    click.echo("\n".join(lines))


@bq.command()
@click.argument("name")
@project_flag
@click.option("-r", "--recursive", is_flag=True, help="Remove a dataset with all its tables.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_client
def rm(name: str, project: str | None, recursive: bool, force: bool, client: Client) -> None:
    """Remove the dataset or table NAME ([PROJECT:]DATASET[.TABLE])."""
    project, dataset, table_id = split_name(name, project)
    what = f"table '{project}:{dataset}.{table_id}'" if table_id else f"dataset '{project}:{dataset}'"
    if not force and not click.confirm(f"rm: remove {what}?", default=False, err=True):
        return
    if table_id:
        call(client, "DELETE", f"projects/{project}/datasets/{dataset}/tables/{table_id}")
    else:
        params = {"deleteContents": "true" if recursive else None}
        call(client, "DELETE", f"projects/{project}/datasets/{dataset}", params)


def _list_all(client: Client, path: str, field: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = call(client, "GET", path, {"pageToken": token})
        items += page.get(field, [])
        token = page.get("nextPageToken")
        if not token:
            return items


def _schema_tree(fields: list[dict[str, Any]], indent: str = "") -> str:
    """bq's schema tree: `|- Name: type (mode)`, nested fields indented under their record."""
    lines = []
    for f in fields:
        mode = f.get("mode", "NULLABLE")
        lines.append(
            f"{indent}|- {f['name']}: {f['type'].lower()}" + (f" ({mode.lower()})" if mode != "NULLABLE" else "")
        )
        if f.get("fields"):
            lines.append(_schema_tree(f["fields"], indent + "|  ").rstrip("\n"))
    return "\n".join(lines) + "\n" if lines else ""


def _time(millis: str | None) -> str:
    if not millis:
        return ""
    return dt.datetime.fromtimestamp(int(millis) / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def register(group: click.Group) -> None:
    group.add_command(query)
    group.add_command(bq)
