#!/usr/bin/env bash
# Installs what the test-suite needs on a fresh Debian machine: the real DICOM peers
# (dcmtk, Orthanc), Redis for the scale-out queue, chromium (headless) for the dashboard,
# and medseg with its train+test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends dcmtk orthanc redis-server chromium >/dev/null
    # Orthanc's and Redis' own system services are not needed: the tests start private ones.
    $SUDO service orthanc stop >/dev/null 2>&1 || true
    $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
python3 -m pip install -q --upgrade pip >/dev/null
# torch is pinned in the [train] extra (a CPU build here); an unpinned torch pulls CUDA.
python3 -m pip install -q -e '.[train,test]'
