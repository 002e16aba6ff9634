#!/usr/bin/env bash
# build.sh [OUTDIR]
#   Builds the two binaries Tally's Kubernetes tests run -- kube-apiserver and etcd -- from
#   the Go module proxy (no git, no downloads other than Go modules) into OUTDIR
#   (default: <repo>/.cache/k8s, git-ignored).
#
# Contract:
#   * stdout carries exactly one line, the absolute bin dir (OUTDIR); all progress goes to
#     stderr. Callers do: BIN=$(scripts/k8s/build.sh | tail -1).
#   * Idempotent: a binary whose OUTDIR/<name>.version stamp matches is not rebuilt (~0.01 s).
#   * Concurrent callers serialize on OUTDIR/.lock (flock): the second one waits for the
#     first build and then finds the stamps up to date.
#   * A binary and its stamp are installed only after a successful build (write to a temp
#     name, then rename), so an interrupted build never leaves a stamp for a broken binary.
#
# Env: K8S_VERSION (default v1.37.2), ETCD_VERSION (default v3.7.0, what k8s 1.37.2's go.mod
#      requires), WORK (throwaway build modules; default OUTDIR/.work).
# Cost: cold kube-apiserver build is ~10 min of 2 cores and ~2.4 GB RSS; etcd ~1 min.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$REPO/.cache/k8s}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.0}
export PATH=/usr/local/go/bin:$PATH
export GOFLAGS=${GOFLAGS:--buildvcs=false}
# the throwaway modules below must never pick up a go.work from a parent directory
export GOWORK=off
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$OUT/.work}
mkdir -p "$WORK"
log() { echo "[k8s-build] $*" >&2; }

exec 9>"$OUT/.lock"
if ! flock -n 9; then
  log "another build holds $OUT/.lock; waiting"
  flock 9
fi

uptodate() { # uptodate NAME VERSION
  [ -x "$OUT/$1" ] && [ "$(cat "$OUT/$1.version" 2>/dev/null)" = "$2" ]
}

install_bin() { # install_bin NAME VERSION TMPFILE
  mv -f "$3" "$OUT/$1"
  echo "$2" > "$OUT/$1.version.tmp"
  mv -f "$OUT/$1.version.tmp" "$OUT/$1.version"
}

build_apiserver() {
  local staging kmod m minor ld s p
  staging=v0.${K8S_VERSION#v1.} # v1.37.2 -> v0.37.2 (staging repos' tag)
  kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$kmod" ] || { log "cannot download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  m=$WORK/k8s-$K8S_VERSION
  mkdir -p "$m"
  if [ ! -f "$m/.ok" ]; then
    {
      printf 'module k8sbuild\n\ngo 1.26\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
      # every staging module k8s.io/kubernetes requires as v0.0.0 -> its published v0.X.Y tag
      sed -n '/^require/,/^)/p' "$kmod" | awk -v v="$staging" '$2=="v0.0.0"{printf "\t%s => %s %s\n",$1,$1,v}'
      echo ")"
    } > "$m/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' > "$m/tools.go"
    # tidy of the throwaway build module only (never of Tally's go.mod)
    (cd "$m" && go mod tidy >&2) && touch "$m/.ok"
  fi
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  log "kube-apiserver $K8S_VERSION: building (cold: ~10 min) ..."
  s=$(date +%s)
  (cd "$m" && go build -trimpath -ldflags "$ld" -o "$OUT/.kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver >&2)
  install_bin kube-apiserver "$K8S_VERSION" "$OUT/.kube-apiserver.tmp"
  log "kube-apiserver done in $(( $(date +%s) - s ))s"
}

build_etcd() {
  local m s
  m=$WORK/etcd-$ETCD_VERSION
  mkdir -p "$m"
  if [ ! -f "$m/.ok" ]; then
    printf 'module etcdbuild\n\ngo 1.26\n' > "$m/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$m/tools.go"
    (cd "$m" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 && go mod tidy >&2) && touch "$m/.ok"
  fi
  log "etcd $ETCD_VERSION: building ..."
  s=$(date +%s)
  # go.etcd.io/etcd/server/v3 is etcd's main package
  (cd "$m" && go build -trimpath -ldflags "-s -w" -o "$OUT/.etcd.tmp" go.etcd.io/etcd/server/v3 >&2)
  install_bin etcd "$ETCD_VERSION" "$OUT/.etcd.tmp"
  log "etcd done in $(( $(date +%s) - s ))s"
}

if uptodate kube-apiserver "$K8S_VERSION"; then log "kube-apiserver $K8S_VERSION up to date"; else build_apiserver; fi
if uptodate etcd "$ETCD_VERSION"; then log "etcd $ETCD_VERSION up to date"; else build_etcd; fi
echo "$OUT"
