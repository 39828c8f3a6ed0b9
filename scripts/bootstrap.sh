#!/usr/bin/env bash
# Install what comux needs on a Debian or Ubuntu machine, then the package itself into .venv.
#
#   bash scripts/bootstrap.sh [unit|demo|all] [--dev]     (default: all)
#
# unit: Python, a C compiler and the package: all the fast test tier needs.
# demo: also a JDK and Maven, for the local Kafka broker.
# all:  also FerretDB (built with Go), for the registry integration tests.
# --dev: also the pinned linters, type checker and release tools (pyproject.toml's
#        [dependency-groups] lint and release: ruff, mypy, build, auditwheel), as CI runs them.
# Idempotent: each tool is installed only when it is missing, and the package is (re)installed
# only when its build inputs changed since the last install (a hash kept in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

tier=all
dev=""
for arg in "$@"; do
    case "$arg" in
        unit | demo | all) tier="$arg" ;;
        --dev) dev=1 ;;
        *) echo "usage: bash scripts/bootstrap.sh [unit|demo|all] [--dev]" >&2; exit 2 ;;
    esac
done

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

if [ "$tier" != unit ]; then
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
fi
if [ "$tier" = all ]; then
    # FerretDB (MongoDB wire protocol over SQLite) for the camera-registry tests; Go >= 1.24.
    bash scripts/install-ferretdb.sh >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

# What a (re)install depends on: the build configuration and the compiled core's sources
# (not the .c files Cython writes from a .pyx). Python sources need none: the install is
# editable.
build_inputs_hash() {
    {
        .venv/bin/python -VV
        cat pyproject.toml setup.py
        for f in comux/_ext/*.pyx comux/_ext/*.pxd comux/_ext/*.h comux/_ext/*.c; do
            [ -e "$f" ] || continue
            case "$f" in *.c) [ -e "${f%.c}.pyx" ] && continue ;; esac
            printf '%s\n' "$f"
            cat "$f"
        done
    } | sha256sum | cut -d' ' -f1
}
extensions_built() {
    local pyx
    for pyx in comux/_ext/*.pyx; do
        compgen -G "${pyx%.pyx}.*.so" >/dev/null || return 1
    done
}
# pip's and setuptools' notes (e.g. "Editable installation ...") are shown only on failure.
quietly() {
    local out
    if ! out="$("$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        return 1
    fi
}
stamp=.venv/.comux-build-inputs
if [ "$(cat "$stamp" 2>/dev/null)" != "$(build_inputs_hash)" ] || ! extensions_built; then
    echo "bootstrap: installing comux into .venv (its build inputs changed)" >&2
    quietly .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    quietly .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
    build_inputs_hash > "$stamp"
fi

if [ -n "$dev" ]; then
    # The dependency groups, installed without reinstalling comux; again only when they changed.
    dev_groups() {
        .venv/bin/python -VV
        .venv/bin/python -c 'import json, tomllib
groups = tomllib.load(open("pyproject.toml", "rb"))["dependency-groups"]
print(json.dumps({k: groups[k] for k in ("lint", "release")}, sort_keys=True))'
    }
    dev_stamp=.venv/.comux-dev-groups
    if [ "$(cat "$dev_stamp" 2>/dev/null)" != "$(dev_groups | sha256sum | cut -d' ' -f1)" ]; then
        echo "bootstrap: installing the lint and release tools into .venv" >&2
        # `pip install --group` needs pip >= 25.1 (help captured first: `grep -q` in a pipe
        # would SIGPIPE pip)
        pip_help="$(.venv/bin/python -m pip install --help)"
        grep -q -- '--group' <<<"$pip_help" \
            || quietly .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
        quietly .venv/bin/python -m pip install -q --disable-pip-version-check \
            --group lint --group release
        dev_groups | sha256sum | cut -d' ' -f1 > "$dev_stamp"
    fi
fi
