#!/usr/bin/env bash
# Installs the BigQuery emulator that tests/operations/test_bigquery_destination.py sends rows to (PyPI's
# local-bigquery, pinned) into its own venv under .cache/bigquery-emulator/<version>/, beside the project's
# rather than in it: local-bigquery needs Python 3.13 (the project's venv is 3.11), and its DuckDB runs on
# the extensions PyPI ships (icu, ducklake, spatial), which exist for DuckDB 1.5.5 only, where the project has 2.x.
# Those extensions go into a DuckDB extension directory inside the venv, so the emulator never downloads one
# at run time. Quick when already there; without Python 3.13 or the registry it says so and exits 0, and the
# emulator's tests skip.
set -euo pipefail
version=0.4.0
duckdb=1.5.5
root="$(cd "$(dirname "$0")/.." && pwd)/.cache/bigquery-emulator"
target="$root/$version"
[[ -f "$target/ready" ]] && exit 0
python="$(command -v python3.13 2>/dev/null || true)"
if [[ -z "$python" ]] || ! "$python" -c pass 2>/dev/null; then # a pyenv shim that has no 3.13 behind it
  python="$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.13*/bin/python3.13 2>/dev/null | tail -n1 || true)"
fi
if [[ -z "$python" ]]; then
  echo "note: no Python 3.13 for local-bigquery $version; the tests against the BigQuery emulator will skip" >&2
  exit 0
fi
mkdir -p "$root"
work="$(mktemp -d "$root/.install.XXXXXX")" # beside the target: the venv is made where it stays
trap 'rm -rf "$work"' EXIT
rm -rf "$target"
"$python" -m venv "$target"
pip=("$target/bin/python" -m pip install --quiet --disable-pip-version-check)
# Two steps: local-bigquery asks for DuckDB 2, the extensions on PyPI for 1.5.5 (the emulator's calls the
# tests make all run on 1.5.5; pip says so, and installs).
if ! "${pip[@]}" "local-bigquery==$version" 2>"$work/pip.log" ||
  ! "${pip[@]}" "duckdb==$duckdb" "duckdb-extension-icu==$duckdb" "duckdb-extension-ducklake==$duckdb" \
    "duckdb-extension-spatial==$duckdb" 2>>"$work/pip.log"; then
  echo "note: could not install local-bigquery $version ($(grep -m1 ERROR "$work/pip.log")); the tests against the BigQuery emulator will skip" >&2
  rm -rf "$target"
  exit 0
fi
mkdir "$target/home"
HOME="$target/home" "$target/bin/python" - <<'EOF'
import glob, os
import duckdb, duckdb_extension_ducklake, duckdb_extension_icu, duckdb_extension_spatial

connection = duckdb.connect()
for package in (duckdb_extension_icu, duckdb_extension_ducklake, duckdb_extension_spatial):
    (path,) = glob.glob(os.path.join(os.path.dirname(package.__file__), "extensions", "*", "*.duckdb_extension"))
    connection.execute(f"INSTALL '{path}'")
EOF
touch "$target/ready"
echo "installed local-bigquery $version in $target" >&2
