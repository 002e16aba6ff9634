#!/usr/bin/env bash
# Build step-ca (smallstep/certificates, the upstream CA Tally's tests run)
# from the Go module proxy, in a throwaway module.
#
# Usage: scripts/stepca/build.sh [OUTDIR]     (default OUTDIR: <repo>/.cache/step-ca)
# Result: OUTDIR/step-ca; prints OUTDIR on its last line.
#
# Idempotent like scripts/spire/build.sh: OUTDIR/.version records the built
# version; concurrent callers serialise on OUTDIR/.lock. The Go build cache
# makes a rebuild in a fresh clone quick.
set -euo pipefail

STEPCA_VERSION=v0.30.2
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUTDIR=${1:-$REPO/.cache/step-ca}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

have() {
  [ -x "$OUTDIR/step-ca" ] && [ "$(cat "$OUTDIR/.version" 2>/dev/null)" = "$STEPCA_VERSION" ]
}

if have; then echo "$OUTDIR"; exit 0; fi

exec 9>"$OUTDIR/.lock"
flock 9
if have; then echo "$OUTDIR"; exit 0; fi

echo "building step-ca $STEPCA_VERSION into $OUTDIR" >&2
rm -f "$OUTDIR/.version"
BUILD_DIR=$OUTDIR/build
rm -rf "$BUILD_DIR"; mkdir -p "$BUILD_DIR"; cd "$BUILD_DIR"
# CGO_ENABLED=0: without cgo the YubiKey KMS (libpcsclite) is left out; step-ca needs none of it here.
export GOWORK=off GOBIN=$OUTDIR GOFLAGS=-buildvcs=false CGO_ENABLED=0
start=$(date +%s)
{
  go mod init x
  go get -tool "github.com/smallstep/certificates/cmd/step-ca@$STEPCA_VERSION"
  go install github.com/smallstep/certificates/cmd/step-ca
} >&2
"$OUTDIR/step-ca" version >&2 2>&1 || true
echo "$STEPCA_VERSION" > "$OUTDIR/.version"
echo "built step-ca $STEPCA_VERSION in $(( $(date +%s) - start )) s" >&2
echo "$OUTDIR"
