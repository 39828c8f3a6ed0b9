#!/usr/bin/env bash
# The pool's race tests on a ThreadSanitizer build of the compiled core (tests/README.md).
#
#   bash scripts/tsan.sh [pytest arguments]     (default: tests/unit/test_batching.py
#                                                 tests/unit/test_batching_states.py
#                                                 tests/unit/test_ring.py)
#
# Copies the checkout to build/tsan/tree, builds comux/_ext there with -fsanitize=thread, and
# runs the tests from that copy (its comux comes first on sys.path) with libtsan preloaded.
# Fails on any ThreadSanitizer report. Needs .venv (scripts/bootstrap.sh unit) and gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
tree=build/tsan/tree
libtsan="$(cc -print-file-name=libtsan.so)"
[ -e "$libtsan" ] || { echo "tsan.sh: cc has no libtsan.so" >&2; exit 1; }

rm -rf "$tree"
mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard \
    | grep -zv '^comux/_ext/.*\.c$' | xargs -0 cp --parents -t "$tree"
.venv/bin/python -m pip install -q --disable-pip-version-check "setuptools>=77" "cython>=3.1"
(cd "$tree" && CFLAGS="-fsanitize=thread -g -O1" LDFLAGS="-fsanitize=thread" \
    "$root/.venv/bin/python" setup.py -q build_ext --inplace >/dev/null)

[ "$#" -gt 0 ] || set -- tests/unit/test_batching.py tests/unit/test_batching_states.py \
    tests/unit/test_ring.py
cd "$tree"
LD_PRELOAD="$libtsan" TSAN_OPTIONS="exitcode=66 halt_on_error=1" \
    "$root/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@" \
    -W "ignore::pytest.PytestUnraisableExceptionWarning"
