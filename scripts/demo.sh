#!/usr/bin/env bash
# Set up and run the demo: a local broker, synthetic cameras, a stand-in model, a live table.
# Extra arguments go to `comux demo` (see `comux demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo
exec .venv/bin/comux demo "$@"
