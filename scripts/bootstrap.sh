#!/usr/bin/env bash
# Install what comux and its tests need on a Debian or Ubuntu machine (a JDK and Maven for the
# local Kafka, FerretDB for the registry tests), then the package itself into .venv.
# Idempotent: each step runs only when its tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || apt_install python3
"$PYTHON" - <<'PY' || { echo "comux needs Python 3.11 or newer" >&2; exit 1; }
import sys
sys.exit(sys.version_info < (3, 11))
PY
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || apt_install python3-venv
command -v cc >/dev/null || apt_install gcc libc6-dev
py_include=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
[ -f "$py_include/Python.h" ] || apt_install python3-dev

java_major() {
    java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -n1
}
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then
    if apt-cache show openjdk-17-jre-headless >/dev/null 2>&1; then
        apt_install openjdk-17-jre-headless
    else
        apt_install default-jre-headless
    fi
fi
command -v mvn >/dev/null || apt_install maven
# FerretDB (MongoDB wire protocol over SQLite) for the camera-registry tests; needs Go >= 1.24.
bash scripts/install-ferretdb.sh >/dev/null

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
