#!/usr/bin/env bash
# Unpacks the published OHIF viewer build (npm package @ohif/app, pinned) into .cache/ohif/<version>/
# for tests/web/test_ohif.py. Only the tarball is fetched: its dist/ is a finished static site, so none
# of the package's build dependencies are needed. Quick when already there; without npm or the
# registry it says so and exits 0, and the test skips.
set -euo pipefail
version=3.13.2
root="$(cd "$(dirname "$0")/.." && pwd)/.cache/ohif"
target="$root/$version"
[[ -f "$target/dist/index.html" ]] && exit 0
if ! command -v npm >/dev/null; then
  echo "note: npm is not installed; the OHIF browser test will skip" >&2
  exit 0
fi
mkdir -p "$root"
work="$(mktemp -d "$root/.unpack.XXXXXX")" # beside the target, so the final rename stays on one file system
trap 'rm -rf "$work"' EXIT
if ! tarball="$(cd "$work" && timeout 300 npm pack --loglevel=error "@ohif/app@$version" 2>"$work/npm.log")"; then
  echo "note: could not fetch @ohif/app@$version from the npm registry ($(head -n1 "$work/npm.log")); the OHIF browser test will skip" >&2
  exit 0
fi
tar -xzf "$work/$tarball" -C "$work"
# The tarball holds package/dist; move it into place in one rename so a half-unpacked copy is never used.
rm -rf "$target"
mv "$work/package" "$target"
echo "installed OHIF $version in $target" >&2
