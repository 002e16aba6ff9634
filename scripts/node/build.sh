#!/usr/bin/env bash
# build.sh [OUTDIR]
#   Builds the node-side Kubernetes binaries Tally's node tests run -- kubelet,
#   kube-scheduler and kube-controller-manager -- from the Go module proxy (no git, no
#   downloads other than Go modules) into OUTDIR (default: <repo>/.cache/node, git-ignored).
#
# Contract (the same as scripts/k8s/build.sh):
#   * stdout carries exactly one line, the absolute bin dir (OUTDIR); all progress goes to
#     stderr. Callers do: BIN=$(scripts/node/build.sh | tail -1).
#   * Idempotent: a binary whose OUTDIR/<name>.version stamp matches is not rebuilt (~0.01 s).
#   * Concurrent callers serialize on OUTDIR/.lock (flock): the second one waits for the
#     first build and then finds the stamps up to date.
#   * Binaries and stamps are installed only after a successful build (built into a temp
#     dir, then renamed), so an interrupted build never leaves a stamp for a broken binary.
#
# Env: K8S_VERSION (default v1.37.2, the version of scripts/k8s/build.sh's kube-apiserver),
#      WORK (throwaway build module; default OUTDIR/.work).
# Cost: cold, all three in ONE go build (shared package graph, parallel links): ~6 min of
#       2 cores and ~3 GB RSS; ~1.1 GB of GOCACHE beyond what kube-apiserver already uses.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$REPO/.cache/node}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
BINS=(kubelet kube-scheduler kube-controller-manager)
export PATH=/usr/local/go/bin:$PATH
export GOFLAGS=${GOFLAGS:--buildvcs=false}
# the throwaway module below must never pick up a go.work from a parent directory
export GOWORK=off
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$OUT/.work}
mkdir -p "$WORK"
log() { echo "[node-build] $*" >&2; }

exec 9>"$OUT/.lock"
if ! flock -n 9; then
  log "another build holds $OUT/.lock; waiting"
  flock 9
fi

TODO=()
for b in "${BINS[@]}"; do
  if [ -x "$OUT/$b" ] && [ "$(cat "$OUT/$b.version" 2>/dev/null)" = "$K8S_VERSION" ]; then
    log "$b $K8S_VERSION up to date"
  else
    TODO+=("$b")
  fi
done
if [ ${#TODO[@]} -eq 0 ]; then echo "$OUT"; exit 0; fi

# The module: k8s.io/kubernetes requires every staging module (k8s.io/api, k8s.io/kubelet,
# ...) as v0.0.0 and replaces it with ./staging/...; outside its repo those replaces do not
# apply, so each one is replaced here by its published v0.X.Y tag, as scripts/k8s/build.sh does.
staging=v0.${K8S_VERSION#v1.} # v1.37.2 -> v0.37.2 (staging repos' tag)
m=$WORK/k8s-node-$K8S_VERSION
mkdir -p "$m"
if [ ! -f "$m/.ok" ]; then
  kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$kmod" ] || { log "cannot download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  {
    printf 'module k8snodebuild\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
    sed -n '/^require/,/^)/p' "$kmod" | awk -v v="$staging" '$2=="v0.0.0"{printf "\t%s => %s %s\n",$1,$1,v}'
    echo ")"
  } > "$m/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for b in "${BINS[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
    printf ')\n'
  } > "$m/tools.go"
  s=$(date +%s)
  # tidy of the throwaway build module only (never of Tally's go.mod)
  (cd "$m" && go mod tidy >&2) && touch "$m/.ok"
  log "go mod tidy: $(( $(date +%s) - s ))s"
fi

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
pkgs=(); for b in "${TODO[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
tmp=$OUT/.tmp.$$
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
log "${TODO[*]} $K8S_VERSION: building in one go build (cold: ~6 min) ..."
s=$(date +%s)
(cd "$m" && go build -trimpath -ldflags "$ld" -o "$tmp/" "${pkgs[@]}" >&2)
for b in "${TODO[@]}"; do
  mv -f "$tmp/$b" "$OUT/$b"
  echo "$K8S_VERSION" > "$OUT/$b.version.tmp"
  mv -f "$OUT/$b.version.tmp" "$OUT/$b.version"
done
log "${TODO[*]} done in $(( $(date +%s) - s ))s"
echo "$OUT"
