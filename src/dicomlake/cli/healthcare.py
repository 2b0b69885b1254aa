"""`dicomlake datasets|dicom-stores|operations|logs`: the GA commands of `gcloud healthcare` (and
`gcloud logging read`), with gcloud's flags and output, against a running dicomlake server."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from dicomlake.cli.client import ApiError, Client, pass_client
from dicomlake.cli.common import fail
from dicomlake.cli.output import Column, ProgressBar, render, render_list, scope

# Per level of a resource name: what it is called, what stands for it, and how to give it when missing.
_LEVELS = {
    "projects": ("project", "PROJECT", "--project=PROJECT or set DICOMLAKE_PROJECT"),
    "locations": ("location", "LOCATION", "--location=LOCATION or set DICOMLAKE_LOCATION"),
    "datasets": ("dataset", "DATASET", "--dataset=DATASET"),
    "dicomStores": ("DICOM store", "DICOM_STORE", "DICOM_STORE"),
    "operations": ("operation", "OPERATION", "OPERATION"),
}
STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")


def resource_name(*levels: tuple[str, str | None]) -> str:
    """`projects/P/locations/L/...` from (collection, flag value) pairs, outermost first. A value may be a
    full name itself (as gcloud allows), standing for its own level and every level above it."""
    below: list[str] = []
    for depth in range(len(levels) - 1, -1, -1):
        collection, value = levels[depth]
        what, _, how = _LEVELS[collection]
        if value and value.startswith("projects/"):
            collections = [c for c, _ in levels[: depth + 1]]
            parts = value.split("/")
            if parts[0::2] != collections or len(parts) != 2 * len(collections) or not all(parts[1::2]):
                expected = "/".join(f"{c}/{_LEVELS[c][1]}" for c in collections)
                fail(f"{value!r} is not a valid {what} name: expected {expected}")
            return "/".join([value, *below])
        if not value:
            fail(f"no {what} given: pass {how}")
        if "/" in value:
            fail(f"invalid {what} id {value!r}: an id has no '/' (or give the full name projects/...)")
        below.insert(0, f"{collection}/{value}")
    return "/".join(below)


def status(message: str) -> None:
    """gcloud's status lines go to stderr, so stdout holds only the resources."""
    click.echo(message, err=True)


def show(text: str) -> None:
    click.echo(text, nl=False)


def confirm(message: str, quiet: bool) -> None:
    """gcloud's prompt: asked on a terminal only and never under --quiet; a no aborts with exit code 1."""
    if quiet or not sys.stdin.isatty():
        return
    status(f"{message}\n")
    click.confirm("Do you want to continue", default=True, abort=True, err=True)


def list_all(client: Client, path: str, field: str, page_size: int | None) -> list[dict[str, Any]]:
    """Every item of a list method, following nextPageToken."""
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = client.get(path, {"pageSize": page_size, "pageToken": token})
        items += page.get(field, [])
        token = page.get("nextPageToken")
        if not token:
            return items


def show_list(items: list[dict[str, Any]], format_: str, columns: list[Column]) -> None:
    if not items and format_ == "table":
        status("Listed 0 items.")
    show(render_list(items, format_, columns))


# ---- flags -------------------------------------------------------------------------------------


def location_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--location", envvar="DICOMLAKE_LOCATION", help="Location (env DICOMLAKE_LOCATION).")(
        command
    )
    return click.option("--project", envvar="DICOMLAKE_PROJECT", help="Project (env DICOMLAKE_PROJECT).")(command)


def dataset_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    command = location_flags(command)
    return click.option("--dataset", help="Dataset id, or its full name projects/P/locations/L/datasets/D.")(command)


def format_flag(*choices: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--format", "format_", type=click.Choice(choices), default=choices[0], show_default=True, help="Output format."
    )


quiet_flag = click.option("--quiet", "-q", is_flag=True, help="Do not ask for confirmation.")
async_flag = click.option(
    "--async", "async_", is_flag=True, help="Return at once, printing the operation, instead of waiting for it."
)
page_size_flag = click.option("--page-size", type=click.IntRange(1, 1000), help="Items per request to the server.")


def store_name(store: str, dataset: str | None, location: str | None, project: str | None) -> str:
    return resource_name(("projects", project), ("locations", location), ("datasets", dataset), ("dicomStores", store))


def dataset_name(dataset: str | None, location: str | None, project: str | None) -> str:
    return resource_name(("projects", project), ("locations", location), ("datasets", dataset))


# ---- long-running operations -------------------------------------------------------------------


def counts(operation: dict[str, Any]) -> tuple[int, int, int]:
    """(done, total, failed) units from the operation's counter: done = success + failure, total = done + pending."""
    counter = operation.get("metadata", {}).get("counter", {})
    failed = int(counter.get("failure", 0))
    done = int(counter.get("success", 0)) + failed
    return done, done + int(counter.get("pending", 0)), failed


def wait(client: Client, operation: dict[str, Any], unit: str) -> dict[str, Any]:
    """Poll the operation until it is done, with a progress bar when stderr is a terminal; its final JSON."""
    name = operation["name"]
    message = f"Waiting for operation [{name}] to complete..."
    bar = ProgressBar(sys.stderr, unit) if sys.stderr.isatty() else None
    if bar is None:
        click.echo(message, nl=False, err=True)
    interval = 0.5
    while not operation.get("done"):
        if bar is not None:
            bar.draw(*counts(operation)[:2])
        time.sleep(interval)
        interval = min(interval * 1.5, 2.0)
        try:
            operation = client.call("GET", name)
        except ApiError as exc:
            # End the waiting line (or bar) first, so the error stands on a line of its own.
            if bar is not None:
                bar.clear()
            else:
                click.echo(err=True)
            fail(str(exc))
    if bar is not None:
        bar.clear()
        click.echo(message, nl=False, err=True)
    click.echo("failed." if "error" in operation else "done.", err=True)
    return operation


def finish(operation: dict[str, Any], unit: str, verb: str) -> None:
    """Say how many units failed and where to read why; an operation that ended in error exits 1, as in gcloud."""
    done, _, failed = counts(operation)
    name = operation["name"]
    if failed:
        project = name.split("/")[1]
        status(
            f"WARNING: {failed} of {done} {unit} failed to {verb}; see why with: "
            f"dicomlake logs read --project={project} --filter 'operation.id=\"{name}\"'"
        )
    if "error" in operation:
        command = ".".join(["dicomlake", *command_names(click.get_current_context())])
        status(f"ERROR: ({command}) {json.dumps(operation['error'], indent=2, sort_keys=True)}")
        sys.exit(1)


def command_names(ctx: click.Context) -> list[str]:
    """`["dicom-stores", "import", "gcs"]`: the subcommands, without the program however it was started."""
    return [*command_names(ctx.parent), ctx.info_name or ""] if ctx.parent else []


def follow(client: Client, operation: dict[str, Any], async_: bool, format_: str, unit: str, verb: str) -> bool:
    """After a request started `operation`: under --async, say where to check it and print it as started
    (False); otherwise wait for it and say how it went (True)."""
    if async_:
        status(f"Check operation [{operation['name']}] for status.")
        show(render(operation, format_))
        return False
    finish(wait(client, operation, unit), unit, verb)
    return True


# ---- datasets ----------------------------------------------------------------------------------


@click.group()
def datasets() -> None:
    """Manage datasets."""


@datasets.command("create")
@click.argument("dataset")
@location_flags
@async_flag
@format_flag("yaml", "json")
@pass_client
def create_dataset(
    client: Client, dataset: str, location: str | None, project: str | None, async_: bool, format_: str
) -> None:
    """Create a dataset."""
    parent, _, dataset_id = dataset_name(dataset, location, project).rpartition("/datasets/")
    operation = client.post(f"{parent}/datasets", params={"datasetId": dataset_id})
    status(f"Create request issued for: [{dataset_id}]")
    if follow(client, operation, async_, format_, "datasets", "create"):
        status(f"Created dataset [{dataset_id}].")


@datasets.command("describe")
@click.argument("dataset")
@location_flags
@format_flag("yaml", "json")
@pass_client
def describe_dataset(client: Client, dataset: str, location: str | None, project: str | None, format_: str) -> None:
    """Show a dataset."""
    show(render(client.get(dataset_name(dataset, location, project)), format_))


@datasets.command("list")
@location_flags
@page_size_flag
@format_flag("table", "yaml", "json")
@pass_client
def list_datasets(
    client: Client, location: str | None, project: str | None, page_size: int | None, format_: str
) -> None:
    """List the datasets of a location."""
    parent = resource_name(("projects", project), ("locations", location))
    columns: list[Column] = [
        ("ID", lambda d: scope(d["name"], "datasets")),
        ("LOCATION", lambda d: d["name"].split("/")[3]),
        ("TIMEZONE", lambda d: d.get("timeZone")),
    ]
    show_list(list_all(client, f"{parent}/datasets", "datasets", page_size), format_, columns)


@datasets.command("delete")
@click.argument("dataset")
@location_flags
@quiet_flag
@pass_client
def delete_dataset(client: Client, dataset: str, location: str | None, project: str | None, quiet: bool) -> None:
    """Delete a dataset with its DICOM stores and every instance in them."""
    name = dataset_name(dataset, location, project)
    dataset_id = name.rsplit("/", 1)[-1]
    confirm(f"You are about to delete dataset [{dataset_id}] and everything in it", quiet)
    client.delete(name)
    status(f"Deleted dataset [{dataset_id}].")


# ---- DICOM stores ------------------------------------------------------------------------------


@click.group("dicom-stores")
def dicom_stores() -> None:
    """Manage DICOM stores, import and export."""


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` as gcloud's --labels; a key alone has the empty value."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        labels[key] = value
    return labels


def parse_stream_configs(text: str) -> list[dict[str, Any]]:
    """`bq://P.D.T,bq://P.D.U` as gcloud's --stream-configs; empty clears them."""
    return [{"bigqueryDestination": {"tableUri": uri.strip()}} for uri in text.split(",") if uri.strip()]


def notification_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--stream-configs",
        metavar="bq://PROJECT.DATASET.TABLE,...",
        help="BigQuery tables every stored instance is streamed to (an empty value removes them).",
    )(command)
    command = click.option(
        "--send-for-bulk-import/--no-send-for-bulk-import",
        default=None,
        help="Also publish a notification for each instance stored by an import.",
    )(command)
    return click.option("--pubsub-topic", help="Pub/Sub topic told of each stored instance (empty removes it).")(
        command
    )


@dicom_stores.command("create")
@click.argument("dicom_store", metavar="DICOM_STORE")
@dataset_flags
@notification_flags
@click.option("--labels", metavar="KEY=VALUE,...", help="Labels of the new store.")
@pass_client
def create_store(
    client: Client,
    dicom_store: str,
    dataset: str | None,
    location: str | None,
    project: str | None,
    pubsub_topic: str | None,
    send_for_bulk_import: bool | None,
    stream_configs: str | None,
    labels: str | None,
) -> None:
    """Create a DICOM store."""
    parent, _, store_id = store_name(dicom_store, dataset, location, project).rpartition("/dicomStores/")
    body: dict[str, Any] = {}
    # Unset, empty and false are all left out, as proto3 JSON leaves out defaults.
    notification = {"pubsubTopic": pubsub_topic, "sendForBulkImport": send_for_bulk_import}
    notification = {k: v for k, v in notification.items() if v not in (None, "", False)}
    if notification:
        body["notificationConfig"] = notification
    if stream_configs:
        body["streamConfigs"] = parse_stream_configs(stream_configs)
    if labels:
        body["labels"] = parse_labels(labels)
    client.post(f"{parent}/dicomStores", body, {"dicomStoreId": store_id})
    status(f"Created dicomStore [{store_id}].")


@dicom_stores.command("update")
@click.argument("dicom_store", metavar="DICOM_STORE")
@dataset_flags
@notification_flags
@click.option("--update-labels", metavar="KEY=VALUE,...", help="Labels to add or change.")
@click.option("--remove-labels", metavar="KEY,...", help="Labels to remove.")
@click.option("--clear-labels", is_flag=True, help="Remove every label (before --update-labels).")
@format_flag("yaml", "json")
@pass_client
def update_store(
    client: Client,
    dicom_store: str,
    dataset: str | None,
    location: str | None,
    project: str | None,
    pubsub_topic: str | None,
    send_for_bulk_import: bool | None,
    stream_configs: str | None,
    update_labels: str | None,
    remove_labels: str | None,
    clear_labels: bool,
    format_: str,
) -> None:
    """Change a DICOM store: the fields the flags name, the others as they are (updateMask from the flags)."""
    name = store_name(dicom_store, dataset, location, project)
    flags = (pubsub_topic, send_for_bulk_import, stream_configs, update_labels, remove_labels)
    if all(flag is None for flag in flags) and not clear_labels:
        fail(
            "nothing to update: pass --pubsub-topic, --send-for-bulk-import, --stream-configs, "
            "--update-labels, --remove-labels or --clear-labels"
        )
    # Read, modify, write: a flag changes its own part of a field and keeps the rest of it
    # (--send-for-bulk-import keeps the topic), and the updateMask names the fields sent.
    current = client.get(name)
    body: dict[str, Any] = {}
    if pubsub_topic is not None or send_for_bulk_import is not None:
        notification = dict(current.get("notificationConfig", {}))
        if pubsub_topic is not None:
            notification["pubsubTopic"] = pubsub_topic
        if send_for_bulk_import is not None:
            notification["sendForBulkImport"] = send_for_bulk_import
        body["notificationConfig"] = {k: v for k, v in notification.items() if v not in ("", False)}
    if stream_configs is not None:
        body["streamConfigs"] = parse_stream_configs(stream_configs)
    if update_labels is not None or remove_labels is not None or clear_labels:
        labels = {} if clear_labels else dict(current.get("labels", {}))
        labels.update(parse_labels(update_labels or ""))
        for key in parse_labels(remove_labels or ""):
            labels.pop(key, None)
        body["labels"] = labels
    updated = client.patch(name, body, {"updateMask": ",".join(body)})
    status(f"Updated dicomStore [{name.rsplit('/', 1)[-1]}].")
    show(render(updated, format_))


@dicom_stores.command("describe")
@click.argument("dicom_store", metavar="DICOM_STORE")
@dataset_flags
@format_flag("yaml", "json")
@pass_client
def describe_store(
    client: Client, dicom_store: str, dataset: str | None, location: str | None, project: str | None, format_: str
) -> None:
    """Show a DICOM store."""
    show(render(client.get(store_name(dicom_store, dataset, location, project)), format_))


@dicom_stores.command("list")
@dataset_flags
@page_size_flag
@format_flag("table", "yaml", "json")
@pass_client
def list_stores(
    client: Client,
    dataset: str | None,
    location: str | None,
    project: str | None,
    page_size: int | None,
    format_: str,
) -> None:
    """List the DICOM stores of a dataset."""
    parent = dataset_name(dataset, location, project)
    columns: list[Column] = [
        ("ID", lambda s: scope(s["name"], "dicomStores")),
        ("LOCATION", lambda s: s["name"].split("/")[3]),
        ("TOPIC", lambda s: s.get("notificationConfig", {}).get("pubsubTopic")),
        ("BULKIMPORT", lambda s: s.get("notificationConfig", {}).get("sendForBulkImport")),
        ("BQDESTINATION", lambda s: [c["bigqueryDestination"]["tableUri"] for c in s.get("streamConfigs", [])]),
    ]
    show_list(list_all(client, f"{parent}/dicomStores", "dicomStores", page_size), format_, columns)


@dicom_stores.command("delete")
@click.argument("dicom_store", metavar="DICOM_STORE")
@dataset_flags
@quiet_flag
@pass_client
def delete_store(
    client: Client, dicom_store: str, dataset: str | None, location: str | None, project: str | None, quiet: bool
) -> None:
    """Delete a DICOM store and every instance in it."""
    name = store_name(dicom_store, dataset, location, project)
    store_id = name.rsplit("/", 1)[-1]
    confirm(f"You are about to delete dicomStore [{store_id}] and every instance in it", quiet)
    client.delete(name)
    status(f"Deleted dicomStore [{store_id}].")


@dicom_stores.group("import")
def import_() -> None:
    """Import DICOM files into a DICOM store."""


@import_.command("gcs")
@click.argument("dicom_store", metavar="DICOM_STORE")
@dataset_flags
@click.option(
    "--gcs-uri",
    required=True,
    help="Files to import: gs://BUCKET/PATH with * (within a folder), ? (one character) or a final ** (any depth).",
)
@click.option(
    "--blob-storage-class",
    type=click.Choice(STORAGE_CLASSES, case_sensitive=False),
    help="Storage class of the imported instances (default STANDARD).",
)
@async_flag
@format_flag("yaml", "json")
@pass_client
def import_gcs(
    client: Client,
    dicom_store: str,
    dataset: str | None,
    location: str | None,
    project: str | None,
    gcs_uri: str,
    blob_storage_class: str | None,
    async_: bool,
    format_: str,
) -> None:
    """Import DICOM files from a bucket (gs://NAME is <data dir>/buckets/NAME on the embedded defaults)."""
    name = store_name(dicom_store, dataset, location, project)
    body: dict[str, Any] = {"gcsSource": {"uri": gcs_uri}}
    if blob_storage_class:
        body["blobStorageSettings"] = {"blobStorageClass": blob_storage_class.upper()}
    operation = client.post(f"{name}:import", body)
    status(f"Request issued for: [{name.rsplit('/', 1)[-1]}]")
    if follow(client, operation, async_, format_, "files", "import"):
        # As gcloud: once the operation is done, the store it worked on.
        show(render(client.get(name), format_))


@dicom_stores.group("export")
def export() -> None:
    """Export the instances of a DICOM store."""


@export.command("gcs")
@click.argument("dicom_store", metavar="DICOM_STORE")
@dataset_flags
@click.option(
    "--gcs-uri-prefix",
    required=True,
    help="Where to write: gs://BUCKET/PATH; objects are named PATH/STUDY/SERIES/INSTANCE[/FRAME].EXT.",
)
@click.option(
    "--mime-type",
    help="e.g. 'application/dicom; transfer-syntax=1.2.840.10008.1.2.1', image/jpeg, image/png (default: as stored).",
)
@click.option(
    "--filter-config-gcs-uri",
    help="A file of /studies/UID[/series/UID[/instances/UID]] lines naming what to export (default: everything).",
)
@async_flag
@format_flag("yaml", "json")
@pass_client
def export_gcs(
    client: Client,
    dicom_store: str,
    dataset: str | None,
    location: str | None,
    project: str | None,
    gcs_uri_prefix: str,
    mime_type: str | None,
    filter_config_gcs_uri: str | None,
    async_: bool,
    format_: str,
) -> None:
    """Export instances to a bucket (gs://NAME is <data dir>/buckets/NAME on the embedded defaults)."""
    name = store_name(dicom_store, dataset, location, project)
    destination = {"uriPrefix": gcs_uri_prefix} | ({"mimeType": mime_type} if mime_type else {})
    _export(client, name, {"gcsDestination": destination}, filter_config_gcs_uri, async_, format_)


@export.command("bq")
@click.argument("dicom_store", metavar="DICOM_STORE")
@dataset_flags
@click.option("--bq-table", required=True, help="The table: bq://PROJECT.DATASET.TABLE (the dataset must exist).")
@click.option(
    "--overwrite-table",
    is_flag=True,
    default=None,
    help="Replace the rows of an existing table (bigqueryDestination.force).",
)
@click.option(
    "--write-disposition",
    type=click.Choice(["write-empty", "write-truncate", "write-append"]),
    help="What to do with an existing table: only write an empty one, empty it first, or append to it.",
)
@click.option(
    "--filter-config-gcs-uri",
    help="A file of /studies/UID[/series/UID[/instances/UID]] lines naming what to export (default: everything).",
)
@async_flag
@format_flag("yaml", "json")
@pass_client
def export_bq(
    client: Client,
    dicom_store: str,
    dataset: str | None,
    location: str | None,
    project: str | None,
    bq_table: str,
    overwrite_table: bool | None,
    write_disposition: str | None,
    filter_config_gcs_uri: str | None,
    async_: bool,
    format_: str,
) -> None:
    """Export the metadata of every instance to a table, one row each (bq://P.D.T is the embedded warehouse)."""
    name = store_name(dicom_store, dataset, location, project)
    destination: dict[str, Any] = {"tableUri": bq_table}
    if overwrite_table is not None:
        destination["force"] = overwrite_table
    if write_disposition:
        destination["writeDisposition"] = write_disposition.upper().replace("-", "_")
    _export(client, name, {"bigqueryDestination": destination}, filter_config_gcs_uri, async_, format_)


def _export(
    client: Client, name: str, body: dict[str, Any], filter_uri: str | None, async_: bool, format_: str
) -> None:
    if filter_uri:
        body["filterConfig"] = {"resourcePathsGcsUri": filter_uri}
    operation = client.post(f"{name}:export", body)
    status(f"Request issued for: [{name.rsplit('/', 1)[-1]}]")
    if follow(client, operation, async_, format_, "instances", "export"):
        # As gcloud: once the operation is done, the store it worked on.
        show(render(client.get(name), format_))


# ---- operations --------------------------------------------------------------------------------


@click.group()
def operations() -> None:
    """Describe, list and cancel operations."""


def operation_name(operation: str, dataset: str | None, location: str | None, project: str | None) -> str:
    return resource_name(
        ("projects", project), ("locations", location), ("datasets", dataset), ("operations", operation)
    )


@operations.command("describe")
@click.argument("operation")
@dataset_flags
@format_flag("yaml", "json")
@pass_client
def describe_operation(
    client: Client, operation: str, dataset: str | None, location: str | None, project: str | None, format_: str
) -> None:
    """Show an operation (OPERATION is its id or full name)."""
    show(render(client.get(operation_name(operation, dataset, location, project)), format_))


@operations.command("list")
@dataset_flags
@page_size_flag
@format_flag("table", "yaml", "json")
@pass_client
def list_operations(
    client: Client,
    dataset: str | None,
    location: str | None,
    project: str | None,
    page_size: int | None,
    format_: str,
) -> None:
    """List the operations of a dataset."""
    parent = dataset_name(dataset, location, project)
    columns: list[Column] = [
        ("ID", lambda o: scope(o["name"], "operations")),
        ("LOCATION", lambda o: o["name"].split("/")[3]),
        ("DONE", lambda o: o.get("done")),
    ]
    show_list(list_all(client, f"{parent}/operations", "operations", page_size), format_, columns)


@operations.command("cancel")
@click.argument("operation")
@dataset_flags
@quiet_flag
@pass_client
def cancel_operation(
    client: Client, operation: str, dataset: str | None, location: str | None, project: str | None, quiet: bool
) -> None:
    """Ask a running operation to stop: it ends with error CANCELLED once the work in hand is done."""
    name = operation_name(operation, dataset, location, project)
    confirm(f"You are about to cancel [{name}]", quiet)
    client.post(f"{name}:cancel")
    status(f"Cancel request issued for [{name}].")


# ---- logs --------------------------------------------------------------------------------------


@click.group()
def logs() -> None:
    """Read the log entries of operations."""


@logs.command("read")
@click.argument("log_filter", required=False)
@click.option("--filter", "filter_", help='e.g. operation.id="projects/P/.../operations/7", terms joined by AND.')
@click.option("--project", envvar="DICOMLAKE_PROJECT", help="Project (env DICOMLAKE_PROJECT).")
@click.option("--limit", type=click.IntRange(min=1), help="Print at most this many entries.")
@click.option(
    "--order", type=click.Choice(["desc", "asc"]), default="desc", show_default=True, help="Newest or oldest first."
)
@format_flag("yaml", "json")
@pass_client
def read_logs(
    client: Client,
    log_filter: str | None,
    filter_: str | None,
    project: str | None,
    limit: int | None,
    order: str,
    format_: str,
) -> None:
    """Print log entries as `gcloud logging read` does (LOG_FILTER or --filter: logName="..." and
    operation.id="..." terms joined by AND)."""
    if log_filter and filter_:
        fail("give the filter once: as LOG_FILTER or with --filter")
    name = resource_name(("projects", project))
    entries = client.get(f"{name}/logs", {"filter": log_filter or filter_}).get("entries", [])
    if order == "desc":
        entries.reverse()
    show(render_list(entries[:limit], format_))


def register(group: click.Group) -> None:
    for command in (datasets, dicom_stores, operations, logs):
        group.add_command(command)
