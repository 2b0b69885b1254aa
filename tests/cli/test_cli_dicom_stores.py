"""`dicomlake dicom-stores create|describe|list|update|delete` against a real server: gcloud's flags,
the body and updateMask they become, and gcloud's output."""

from __future__ import annotations

import json

import requests
import yaml
from cli_helpers import new_store, run, run_on_terminal, sqlite_server, store_flags

from conftest import Server, Store

pytestmark = sqlite_server

CONFIG = {
    "labels": {"site": "north", "tier": "silver"},
    "notificationConfig": {"pubsubTopic": "projects/p/topics/dicom"},
    "streamConfigs": [{"bigqueryDestination": {"tableUri": "bq://p.d.t"}}],
}


def stored(store: Store) -> dict:
    response = requests.get(store.url, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_create_store_sends_labels_notification_and_stream_configs(server: Server) -> None:
    existing = new_store(server)
    flags = store_flags(existing)

    result = run(
        server,
        "dicom-stores",
        "create",
        "ct",
        *flags,
        "--labels=site=north,tier=gold",
        "--pubsub-topic=projects/p/topics/dicom",
        "--send-for-bulk-import",
        "--stream-configs=bq://p.d.t,bq://p.d.u",
    )

    assert result.code == 0 and result.stdout == ""
    assert result.stderr == "Created dicomStore [ct].\n"
    created = requests.get(f"{existing.server.api(existing.dataset_name)}/dicomStores/ct", timeout=30).json()
    assert created == {
        "name": f"{existing.dataset_name}/dicomStores/ct",
        "labels": {"site": "north", "tier": "gold"},
        "notificationConfig": {"pubsubTopic": "projects/p/topics/dicom", "sendForBulkImport": True},
        "streamConfigs": [
            {"bigqueryDestination": {"tableUri": "bq://p.d.t"}},
            {"bigqueryDestination": {"tableUri": "bq://p.d.u"}},
        ],
    }


def test_create_store_with_no_flags_is_an_empty_store(server: Server) -> None:
    existing = new_store(server)

    result = run(server, "dicom-stores", "create", "plain", *store_flags(existing))

    assert result.code == 0
    plain = requests.get(f"{existing.server.api(existing.dataset_name)}/dicomStores/plain", timeout=30).json()
    assert plain == {"name": f"{existing.dataset_name}/dicomStores/plain"}


def test_invalid_stream_config_is_refused_by_the_server_with_one_line(server: Server) -> None:
    existing = new_store(server)

    result = run(server, "dicom-stores", "create", "ct", *store_flags(existing), "--stream-configs=bq://nodots")

    assert result.code == 2
    assert result.stderr == (
        "dicomlake: error: INVALID_ARGUMENT: invalid streamConfigs tableUri 'bq://nodots': "
        "expected bq://PROJECT_ID.DATASET_ID.TABLE_ID\n"
    )


def test_describe_store_as_yaml_and_json(server: Server) -> None:
    store = new_store(server, **CONFIG)

    as_yaml = run(server, "dicom-stores", "describe", store.store, *store_flags(store))
    as_json = run(server, "dicom-stores", "describe", store.store, *store_flags(store), "--format", "json")

    assert as_yaml.stdout == (
        "labels:\n"
        "  site: north\n"
        "  tier: silver\n"
        f"name: {store.name}\n"
        "notificationConfig:\n"
        "  pubsubTopic: projects/p/topics/dicom\n"
        "streamConfigs:\n"
        "- bigqueryDestination:\n"
        "    tableUri: bq://p.d.t\n"
    )
    assert json.loads(as_json.stdout) == stored(store)


def test_unknown_store_is_not_found_with_one_line(server: Server) -> None:
    store = new_store(server)

    result = run(server, "dicom-stores", "describe", "missing", *store_flags(store))

    assert result.code == 2 and result.stdout == ""
    assert (
        result.stderr
        == f"dicomlake: error: NOT_FOUND: DICOM store {store.dataset_name}/dicomStores/missing not found\n"
    )


def test_list_stores_is_gcloud_table(server: Server) -> None:
    store = new_store(server)
    base = f"{server.api(store.dataset_name)}/dicomStores"
    two_tables = {
        "notificationConfig": {"pubsubTopic": "projects/p/topics/t", "sendForBulkImport": True},
        "streamConfigs": [
            {"bigqueryDestination": {"tableUri": "bq://p.d.a"}},
            {"bigqueryDestination": {"tableUri": "bq://p.d.b"}},
        ],
    }
    requests.post(f"{base}?dicomStoreId=zz-streamed", json=two_tables, timeout=30).raise_for_status()

    result = run(server, "dicom-stores", "list", *store_flags(store))

    assert result.code == 0
    width = len(store.store)  # longer than zz-streamed
    assert result.stdout == (
        f"{'ID':<{width}}  LOCATION     TOPIC                BULKIMPORT  BQDESTINATION\n"
        f"{store.store}  us-central1\n"
        f"{'zz-streamed':<{width}}  us-central1  projects/p/topics/t  True        bq://p.d.a,bq://p.d.b\n"
    )


def test_list_stores_as_json_is_every_store(server: Server) -> None:
    store = new_store(server, **CONFIG)

    result = run(server, "dicom-stores", "list", *store_flags(store), "--format=json", "--page-size=1")

    assert json.loads(result.stdout) == [stored(store)]


def test_update_changes_the_flagged_fields_and_keeps_the_rest(server: Server) -> None:
    store = new_store(server, **CONFIG)

    result = run(
        server,
        "dicom-stores",
        "update",
        store.store,
        *store_flags(store),
        "--send-for-bulk-import",
        "--update-labels=tier=gold,owner=radiology",
        "--remove-labels=site",
    )

    assert result.code == 0
    assert result.stderr == f"Updated dicomStore [{store.store}].\n"
    expected = {
        "name": store.name,
        "labels": {"tier": "gold", "owner": "radiology"},
        "notificationConfig": {"pubsubTopic": "projects/p/topics/dicom", "sendForBulkImport": True},
        "streamConfigs": CONFIG["streamConfigs"],
    }
    assert stored(store) == expected
    assert yaml.safe_load(result.stdout) == expected


def test_update_with_empty_values_clears_fields(server: Server) -> None:
    store = new_store(server, **CONFIG)

    result = run(
        server,
        "dicom-stores",
        "update",
        store.store,
        *store_flags(store),
        "--pubsub-topic=",
        "--stream-configs=",
        "--clear-labels",
        "--format=json",
    )

    assert result.code == 0
    assert json.loads(result.stdout) == stored(store) == {"name": store.name}


def test_update_replaces_stream_configs(server: Server) -> None:
    store = new_store(server, **CONFIG)

    result = run(server, "dicom-stores", "update", store.store, *store_flags(store), "--stream-configs=bq://q.r.s")

    assert result.code == 0
    assert stored(store) == CONFIG | {
        "name": store.name,
        "streamConfigs": [{"bigqueryDestination": {"tableUri": "bq://q.r.s"}}],
    }


def test_delete_store_says_deleted_and_removes_it(server: Server) -> None:
    store = new_store(server)

    result = run(server, "dicom-stores", "delete", store.store, *store_flags(store), "--quiet")

    assert result.code == 0 and result.stderr == f"Deleted dicomStore [{store.store}].\n"
    assert requests.get(store.url, timeout=30).status_code == 404


def test_delete_store_on_a_terminal_asks_first(server: Server) -> None:
    store = new_store(server)

    kept = run_on_terminal(server, "dicom-stores", "delete", store.store, *store_flags(store), typed="n\n")

    assert kept.code == 1
    assert f"You are about to delete dicomStore [{store.store}] and every instance in it\n" in kept.stderr
    assert requests.get(store.url, timeout=30).status_code == 200
