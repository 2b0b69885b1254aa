#!/usr/bin/env bash
# Installs the Debian packages the tests (DCMTK, dicom3tools, strace, Chromium for the browser tests) and benchmarks (Orthanc) use.
# Only as root and only what is missing; without root it says what to install and goes on,
# and the tests that need a tool skip with that reason.
set -euo pipefail
packages=(dcmtk dicom3tools strace chromium)
[[ "${1:-}" == "--orthanc" ]] && packages+=(orthanc orthanc-dicomweb)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "note: Debian packages ${missing[*]} are not installed (run as root: apt-get install ${missing[*]}); tests that need them will skip" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "note: could not install ${missing[*]}; tests that need them will skip" >&2
  exit 0
fi
if [[ " ${missing[*]} " == *" orthanc "* ]]; then
  # The package starts a system service listening on all interfaces; the benchmark runs its own.
  systemctl stop orthanc 2>/dev/null || service orthanc stop 2>/dev/null || pkill -x Orthanc || true
fi
