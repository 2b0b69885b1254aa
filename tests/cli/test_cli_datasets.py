"""`dicomlake datasets ...` against a real server, and what every command shares: flags from the
environment, full resource names, and the server's errors as one line with exit code 2."""

from __future__ import annotations

import re
import uuid

import requests
import yaml
from cli_helpers import new_store, run, run_on_terminal, sqlite_server

from conftest import Server

pytestmark = sqlite_server


def location_flags(project: str) -> list[str]:
    return ["--project", project, "--location", "eu-west4"]


def new_project() -> str:
    return f"project-{uuid.uuid4().hex[:10]}"


def test_create_dataset_waits_for_its_operation_and_says_created(server: Server) -> None:
    project = new_project()

    result = run(server, "datasets", "create", "hospital", *location_flags(project))

    assert result.code == 0 and result.stdout == ""
    name = f"projects/{project}/locations/eu-west4/datasets/hospital"
    assert re.fullmatch(
        rf"Create request issued for: \[hospital\]\n"
        rf"Waiting for operation \[{name}/operations/\d+\] to complete\.\.\.done\.\n"
        rf"Created dataset \[hospital\]\.\n",
        result.stderr,
    )
    assert requests.get(server.api(name), timeout=30).json() == {"name": name}


def test_create_dataset_async_prints_the_operation(server: Server) -> None:
    project = new_project()

    result = run(server, "datasets", "create", "hospital", *location_flags(project), "--async")

    assert result.code == 0
    operation = yaml.safe_load(result.stdout)
    name = f"projects/{project}/locations/eu-west4/datasets/hospital"
    assert operation["done"] is True
    assert operation["response"]["name"] == name
    assert (
        result.stderr == f"Create request issued for: [hospital]\nCheck operation [{operation['name']}] for status.\n"
    )


def test_describe_dataset_as_yaml_and_json(server: Server) -> None:
    store = new_store(server)
    flags = ["--project", store.project, "--location", store.location]

    as_yaml = run(server, "datasets", "describe", store.dataset, *flags)
    as_json = run(server, "datasets", "describe", store.dataset, *flags, "--format=json")

    assert as_yaml.code == 0 and as_yaml.stdout == f"name: {store.dataset_name}\n"
    assert as_json.code == 0 and as_json.stdout == f'{{\n  "name": "{store.dataset_name}"\n}}\n'


def test_list_datasets_is_a_table_of_every_page(server: Server) -> None:
    project = new_project()
    base = server.api(f"projects/{project}/locations/eu-west4/datasets")
    for dataset in ("alpha", "beta", "gamma"):
        requests.post(f"{base}?datasetId={dataset}", timeout=30).raise_for_status()

    result = run(server, "datasets", "list", *location_flags(project), "--page-size=2")

    assert result.code == 0
    assert result.stdout == ("ID     LOCATION  TIMEZONE\nalpha  eu-west4\nbeta   eu-west4\ngamma  eu-west4\n")


def test_empty_list_says_listed_0_items(server: Server) -> None:
    result = run(server, "datasets", "list", *location_flags(new_project()))

    assert result.code == 0 and result.stdout == "" and result.stderr == "Listed 0 items.\n"


def test_delete_dataset_from_a_script_asks_nothing(server: Server) -> None:
    store = new_store(server)
    flags = ["--project", store.project, "--location", store.location]

    result = run(server, "datasets", "delete", store.dataset, *flags)

    assert result.code == 0 and result.stderr == f"Deleted dataset [{store.dataset}].\n"
    assert requests.get(store.server.api(store.dataset_name), timeout=30).status_code == 404


def test_delete_on_a_terminal_asks_first_and_a_no_keeps_the_dataset(server: Server) -> None:
    store = new_store(server)
    flags = ["--project", store.project, "--location", store.location]

    kept = run_on_terminal(server, "datasets", "delete", store.dataset, *flags, typed="n\n")
    deleted = run_on_terminal(server, "datasets", "delete", store.dataset, *flags, typed="y\n")

    assert kept.code == 1
    assert f"You are about to delete dataset [{store.dataset}] and everything in it\n" in kept.stderr
    assert "Do you want to continue [Y/n]: " in kept.stderr and "Aborted!" in kept.stderr
    assert deleted.code == 0 and f"Deleted dataset [{store.dataset}]." in deleted.stderr
    assert requests.get(store.server.api(store.dataset_name), timeout=30).status_code == 404


def test_quiet_delete_asks_nothing_even_on_a_terminal(server: Server) -> None:
    store = new_store(server)
    flags = ["--project", store.project, "--location", store.location]

    result = run_on_terminal(server, "datasets", "delete", store.dataset, *flags, "-q")

    assert result.code == 0 and result.stderr == f"Deleted dataset [{store.dataset}].\n"


# ---- what every command shares -----------------------------------------------------------------


def test_project_location_and_endpoint_come_from_the_environment(server: Server) -> None:
    store = new_store(server)

    result = run(
        server,
        "dicom-stores",
        "describe",
        store.store,
        "--dataset",
        store.dataset,
        DICOMLAKE_PROJECT=store.project,
        DICOMLAKE_LOCATION=store.location,
    )

    assert result.code == 0 and yaml.safe_load(result.stdout) == {"name": store.name}


def test_a_full_resource_name_needs_no_other_flags(server: Server) -> None:
    store = new_store(server)

    by_store = run(server, "dicom-stores", "describe", store.name)
    by_dataset = run(server, "dicom-stores", "describe", store.store, "--dataset", store.dataset_name)
    dataset = run(server, "datasets", "describe", store.dataset_name)

    assert yaml.safe_load(by_store.stdout) == yaml.safe_load(by_dataset.stdout) == {"name": store.name}
    assert dataset.stdout == f"name: {store.dataset_name}\n"


def test_server_errors_are_one_line_with_their_status_and_exit_code_2(server: Server) -> None:
    store = new_store(server)
    flags = ["--project", store.project, "--location", store.location]

    missing = run(server, "datasets", "describe", "nothing-here", *flags)
    existing = run(server, "datasets", "create", store.dataset, *flags)

    assert missing.code == 2 and missing.stdout == ""
    assert missing.stderr == (
        f"dicomlake: error: NOT_FOUND: dataset projects/{store.project}/locations/{store.location}"
        "/datasets/nothing-here not found\n"
    )
    assert existing.code == 2
    assert existing.stderr == f"dicomlake: error: ALREADY_EXISTS: dataset {store.dataset_name} already exists\n"
