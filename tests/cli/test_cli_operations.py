"""`dicomlake operations describe|list|cancel` against a real server, and a waited import that is
cancelled from another shell."""

from __future__ import annotations

import json

import requests
import yaml
from cli_helpers import (
    bucket_with_files,
    dataset_operations,
    new_store,
    run,
    run_on_terminal,
    sqlite_server,
    store_flags,
)

from conftest import Server, Store, wait_done

pytestmark = sqlite_server


def imported(store: Store) -> dict:
    """A finished import of two files; its final operation JSON."""
    bucket, _ = bucket_with_files(store.server)
    started = requests.post(f"{store.url}:import", json={"gcsSource": {"uri": f"gs://{bucket}/dir/*"}}, timeout=30)
    return wait_done(store.server, started.json())


def test_describe_operation_by_id_or_full_name(server: Server) -> None:
    store = new_store(server)
    operation = imported(store)
    operation_id = operation["name"].rsplit("/", 1)[1]

    by_id = run(server, "operations", "describe", operation_id, *store_flags(store))
    by_name = run(server, "operations", "describe", operation["name"], "--format=json")

    assert by_id.code == by_name.code == 0
    assert yaml.safe_load(by_id.stdout) == json.loads(by_name.stdout) == operation
    assert by_id.stdout.startswith("done: true\nmetadata:\n  '@type': type.googleapis.com/google.cloud.healthcare.v1")
    assert "    success: '2'\n" in by_id.stdout


def test_list_operations_is_a_table_of_every_page(server: Server) -> None:
    store = new_store(server)
    imported(store)
    imported(store)
    ids = [o["name"].rsplit("/", 1)[1] for o in dataset_operations(store)]

    result = run(server, "operations", "list", *store_flags(store), "--page-size=1")

    assert len(ids) == 3  # the dataset's creation and two imports
    width = max(len(i) for i in ["ID", *ids])
    assert result.code == 0
    assert result.stdout == f"{'ID':<{width}}  LOCATION     DONE\n" + "".join(
        f"{i:<{width}}  us-central1  True\n" for i in ids
    )


def test_list_operations_as_yaml_documents(server: Server) -> None:
    store = new_store(server)

    result = run(server, "operations", "list", *store_flags(store), "--format=yaml")

    assert list(yaml.safe_load_all(result.stdout)) == dataset_operations(store)


def test_unknown_operation_is_not_found_with_one_line(server: Server) -> None:
    store = new_store(server)

    result = run(server, "operations", "describe", "987654321", *store_flags(store))

    assert result.code == 2
    assert result.stderr == (
        f"dicomlake: error: NOT_FOUND: operation {store.dataset_name}/operations/987654321 not found\n"
    )


def test_cancel_on_a_terminal_asks_first_and_a_no_sends_nothing(server: Server) -> None:
    store = new_store(server)
    name = dataset_operations(store)[0]["name"]

    result = run_on_terminal(server, "operations", "cancel", name, typed="n\n")

    assert result.code == 1
    assert f"You are about to cancel [{name}]\n" in result.stderr
    assert "Aborted!" in result.stderr and "Cancel request issued" not in result.stderr
