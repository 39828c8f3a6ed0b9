#!/usr/bin/env bash
# Build FerretDB (a MongoDB wire-protocol server; its SQLite backend needs no other service) for
# the registry integration tests, from the Go module proxy. Prints the binary's path as its
# last line of stdout (progress goes to stderr): BIN=$(bash scripts/install-ferretdb.sh)
#
# Idempotent: nothing is done when the binary at the install location already reports this
# version. Install location: $FERRETDB_BIN, else $(go env GOPATH)/bin/ferretdb.
# Needs Go >= 1.24 (FerretDB v1.24.2's go.mod says "go 1.24"); Go is installed with apt only
# when no `go` is found at all. A cold build takes about 2 minutes on 2 cores (about 650 MB of
# module cache and 350 MB of build cache); no C compiler is needed (CGO_ENABLED=0).
#
# Why not `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`: the binary it makes
# panics at start ("Invalid build/version/version.txt file content"), because the module zip
# lacks the generated build/version/version.txt. So the module is downloaded, copied, given
# that file, and built with `go build`.
set -euo pipefail

FERRETDB_VERSION="${FERRETDB_VERSION:-v1.24.2}"
MODULE="github.com/FerretDB/FerretDB"
GO_MIN_MINOR=24          # Go 1.24
FALLBACK_TOOLCHAIN="go1.24.3"   # the toolchain line of FerretDB's go.mod

say() { echo "install-ferretdb: $*" >&2; }

find_go() {
    local candidate
    for candidate in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go /usr/lib/go/bin/go; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    # Debian's versioned packages (golang-1.NN-go), newest first
    for candidate in $(ls -d /usr/lib/go-1.*/bin/go 2>/dev/null | sort -t. -k2,2nr); do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

reports_version() {
    # (output captured first: `grep -q` in a pipe would SIGPIPE the binary, failing pipefail)
    local out
    [ -x "$1" ] && out="$("$1" --version 2>/dev/null)" || return 1
    grep -qx "version: ${FERRETDB_VERSION}" <<<"$out"
}

# 1. Already there? (checked before Go is looked for, so a machine without Go can still skip)
GO="$(find_go || true)"
if [ -n "${FERRETDB_BIN:-}" ]; then
    BIN="$FERRETDB_BIN"
elif [ -n "$GO" ]; then
    BIN="$("$GO" env GOPATH | cut -d: -f1)/bin/ferretdb"
else
    BIN="${HOME}/go/bin/ferretdb"
fi
if reports_version "$BIN"; then
    say "FerretDB ${FERRETDB_VERSION} is already installed"
    echo "$BIN"
    exit 0
fi

# 2. Go
if [ -z "$GO" ]; then
    say "no Go found: installing golang-go with apt (Go >= 1.${GO_MIN_MINOR} is needed)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # Prefer the newest versioned package that is new enough (e.g. golang-1.24-go on Debian 13);
    # Debian 12's golang-go is Go 1.19, too old to build FerretDB.
    pkg="$(apt-cache pkgnames golang-1. 2>/dev/null | sed -nE 's/^golang-1\.([0-9]+)-go$/\1/p' \
        | sort -n | awk -v min="$GO_MIN_MINOR" '$1 >= min' | tail -n1)"
    if [ -n "$pkg" ]; then
        pkg="golang-1.${pkg}-go"
    else
        pkg="golang-go"
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "$pkg" ca-certificates >&2
    GO="$(find_go || true)"
    [ -n "$GO" ] || { say "apt installed $pkg but no go binary was found"; exit 1; }
    [ -n "${FERRETDB_BIN:-}" ] || BIN="$("$GO" env GOPATH | cut -d: -f1)/bin/ferretdb"
fi

go_minor="$("$GO" env GOVERSION | sed -nE 's/^go1\.([0-9]+).*/\1/p')"
if [ -z "$go_minor" ]; then
    say "cannot read the version of $GO"
    exit 1
fi
if [ "$go_minor" -lt "$GO_MIN_MINOR" ]; then
    if [ "$go_minor" -ge 21 ]; then
        # Go 1.21+ can fetch a newer toolchain itself, from the Go module proxy.
        export GOTOOLCHAIN="${FERRETDB_GOTOOLCHAIN:-$FALLBACK_TOOLCHAIN}"
        say "$("$GO" env GOVERSION) is older than go1.${GO_MIN_MINOR}: using GOTOOLCHAIN=$GOTOOLCHAIN"
    else
        say "$("$GO" env GOVERSION) at $GO is too old: FerretDB ${FERRETDB_VERSION} needs Go >= 1.${GO_MIN_MINOR}."
        say "install a newer Go (e.g. to /usr/local/go) and run this script again"
        exit 1
    fi
fi

# 3. Download the module, add the generated version file, build.
say "building FerretDB ${FERRETDB_VERSION} with $("$GO" env GOVERSION) (takes a few minutes)"
work="$(mktemp -d "${TMPDIR:-/tmp}/ferretdb-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
src="$(cd "$work" && GOFLAGS= "$GO" mod download -json "${MODULE}@${FERRETDB_VERSION}" \
    | sed -nE 's/^[[:space:]]*"Dir": "(.*)",?$/\1/p')"
if [ -z "$src" ] || [ ! -f "$src/go.mod" ]; then
    say "go mod download ${MODULE}@${FERRETDB_VERSION} gave no source folder"
    exit 1
fi
cp -R "$src" "$work/src"
chmod -R u+w "$work/src"
echo "${FERRETDB_VERSION}" > "$work/src/build/version/version.txt"
mkdir -p "$(dirname "$BIN")"
tmp_bin="$BIN.tmp.$$"
(
    cd "$work/src"
    CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
        "$GO" build -trimpath -o "$tmp_bin" ./cmd/ferretdb
)
if ! reports_version "$tmp_bin"; then
    rm -f "$tmp_bin"
    say "the built binary does not report version ${FERRETDB_VERSION}"
    exit 1
fi
mv -f "$tmp_bin" "$BIN"
say "installed FerretDB ${FERRETDB_VERSION}"
echo "$BIN"
