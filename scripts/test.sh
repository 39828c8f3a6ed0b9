#!/usr/bin/env bash
# Set up and run the whole test suite: unit tests, then integration tests against a real
# Apache Kafka that the tests start themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
