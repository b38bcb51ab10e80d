#!/usr/bin/env bash
# Install the Debian packages ribnode's demo and tests use, when missing.
# Usage: ensure-system.sh [test]   (with "test", also the servers the test suite talks to)
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have Orthanc || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || ls /usr/share/orthanc/plugins/*DicomWeb* >/dev/null 2>&1 || need+=(orthanc-dicomweb)
have storescu || need+=(dcmtk)
have dciodvfy || need+=(dicom3tools)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
have redis-server || need+=(redis-server)  # the broker of a site deployment (the demo needs none)
if [ "${1:-}" = "test" ]; then
  have pg_ctlcluster || need+=(postgresql)
  have socat || need+=(socat)  # TLS in front of Orthanc for the STOW-over-HTTPS test
  # the QA console's browser test: Debian's Chromium and its chromedriver (nothing downloads a browser)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "ensure-system: installing ${need[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "ensure-system: need root to apt-get install ${need[*]}; run: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
