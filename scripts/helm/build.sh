#!/usr/bin/env bash
# Build helm (Helm v3.22.0, which renders and lints deploy/helm/tally) from the
# Go module proxy, in a throwaway module.
#
# Usage: scripts/helm/build.sh [OUTDIR]     (default OUTDIR: <repo>/.cache/helm)
# Result: OUTDIR/helm; prints OUTDIR on its last line.
#
# Idempotent: OUTDIR/.version records the built version; if it matches and the
# binary exists, the script returns at once. Concurrent callers serialise on
# OUTDIR/.lock. Built with CGO_ENABLED=0; `go install` does not apply the
# release ldflags, so `helm version` does not report v3.22.0.
set -euo pipefail

HELM_VERSION=v3.22.0
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUTDIR=${1:-$REPO/.cache/helm}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

have() {
  [ -x "$OUTDIR/helm" ] && [ "$(cat "$OUTDIR/.version" 2>/dev/null)" = "$HELM_VERSION" ]
}

if have; then echo "$OUTDIR"; exit 0; fi

exec 9>"$OUTDIR/.lock"
flock 9
if have; then echo "$OUTDIR"; exit 0; fi   # another caller built it while we waited

echo "building helm $HELM_VERSION into $OUTDIR" >&2
rm -f "$OUTDIR/.version"
BUILD_DIR=$OUTDIR/build
rm -rf "$BUILD_DIR"; mkdir -p "$BUILD_DIR"; cd "$BUILD_DIR"
export GOWORK=off GOBIN=$OUTDIR GOFLAGS=-buildvcs=false CGO_ENABLED=0
start=$(date +%s)
{
  go mod init x
  go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  go install helm.sh/helm/v3/cmd/helm
} >&2
"$OUTDIR/helm" version >&2 2>&1 || true
echo "$HELM_VERSION" > "$OUTDIR/.version"
echo "built helm $HELM_VERSION in $(( $(date +%s) - start )) s" >&2
echo "$OUTDIR"
