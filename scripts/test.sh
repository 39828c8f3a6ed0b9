#!/usr/bin/env bash
# Set up and run the test suite: unit tests, then integration tests against a real Apache Kafka
# (and FerretDB) that the tests start themselves. Extra arguments go to pytest. When every path
# among them is under tests/unit, only what the unit tier needs is set up (no JDK, no Go).
set -euo pipefail
cd "$(dirname "$0")/.."

tier=unit
paths=0
for arg in "$@"; do
    path="${arg%%::*}"
    case "$arg" in -*) continue ;; esac
    [ -e "$path" ] || continue
    paths=$((paths + 1))
    case "$(realpath -m --relative-to=. "$path")" in
        tests/unit | tests/unit/*) ;;
        *) tier=all ;;
    esac
done
[ "$paths" -gt 0 ] || tier=all
bash scripts/bootstrap.sh "$tier"
exec .venv/bin/python -m pytest "$@"
