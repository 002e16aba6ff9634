#!/usr/bin/env bash
# Build spire-server and spire-agent (SPIRE v1.13.3, the reference implementation
# Tally is measured against) from the Go module proxy, in a throwaway module.
#
# Usage: scripts/spire/build.sh [OUTDIR]     (default OUTDIR: <repo>/.cache/spire)
# Result: OUTDIR/spire-server, OUTDIR/spire-agent; prints OUTDIR on its last line.
#
# Idempotent: OUTDIR/.version records the built version; if it matches and both
# binaries exist, the script returns at once. Concurrent callers serialise on
# OUTDIR/.lock. A cold build (empty module and build caches) takes ~20 minutes
# on 2 cores; `go install` does not apply the release ldflags, so the binaries
# report "1.13.3-dev-unk".
set -euo pipefail

SPIRE_VERSION=v1.13.3
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUTDIR=${1:-$REPO/.cache/spire}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

have() {
  [ -x "$OUTDIR/spire-server" ] && [ -x "$OUTDIR/spire-agent" ] &&
    [ "$(cat "$OUTDIR/.version" 2>/dev/null)" = "$SPIRE_VERSION" ]
}

if have; then echo "$OUTDIR"; exit 0; fi

exec 9>"$OUTDIR/.lock"
flock 9
if have; then echo "$OUTDIR"; exit 0; fi   # another caller built it while we waited

echo "building SPIRE $SPIRE_VERSION into $OUTDIR (cold: ~20 min)" >&2
rm -f "$OUTDIR/.version"
BUILD_DIR=$OUTDIR/build
rm -rf "$BUILD_DIR"; mkdir -p "$BUILD_DIR"; cd "$BUILD_DIR"
export GOWORK=off GOBIN=$OUTDIR GOFLAGS=-buildvcs=false
start=$(date +%s)
{
  go mod init x
  go get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION"
  go get -tool "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION"
  go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
} >&2
"$OUTDIR/spire-server" --version >&2 2>&1 || true
echo "$SPIRE_VERSION" > "$OUTDIR/.version"
echo "built SPIRE $SPIRE_VERSION in $(( $(date +%s) - start )) s" >&2
echo "$OUTDIR"
