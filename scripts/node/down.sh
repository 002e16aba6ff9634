#!/usr/bin/env bash
# down.sh RUNDIR
#   Stops the node scripts/node/up.sh started in RUNDIR and undoes every host change, using
#   only what up.sh recorded there (so it also cleans up after a crashed test or a failed up):
#     controllers -> kubelet -> every container (ctr kill/delete) -> containerd -> leftover
#     shims of THIS containerd -> any process left in the node's cgroups or mount namespace ->
#     the namespace holder; then the CNI bridge, net.ipv4.ip_forward, the cgroups under the
#     node's cgroup root, the mount-point dirs up.sh created, and RUNDIR itself (kept with
#     NODE_KEEP_RUN_DIR=1, which up.sh uses on failure to keep the logs).
#   A missing RUNDIR is not an error (nothing to do). Exits 1 if something could not be undone.
#
# No `set -e` here on purpose: a step that fails must not stop the ones after it; every
# failure that leaves something behind is counted and reported instead.
set -uo pipefail
RUN=${1:?usage: down.sh RUNDIR}
[ -d "$RUN" ] || exit 0
RUN=$(cd "$RUN" && pwd)
log() { echo "[node-down] $*" >&2; }
PROBLEMS=0
problem() { log "WARNING: $*"; PROBLEMS=$((PROBLEMS + 1)); }
T0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# alive PID: exists and is not a zombie. setsid'd daemons are reparented to init, which may
# reap them only later, and kill -0 succeeds on a zombie.
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; }
wait_gone() { # wait_gone SECONDS PID...: true once none is alive
  local deadline=$(( $(date +%s) + $1 )) p left; shift
  while :; do
    left=; for p in "$@"; do alive "$p" && left=1; done
    [ -z "$left" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}
stop() { # stop NAME CMDLINE-PART: the process in RUN/NAME.pid, if it still is the one up.sh started
  local pid how=TERM t0
  pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 0
  [ -n "$pid" ] || return 0
  if alive "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"; then
    t0=$(date +%s.%N)
    kill -TERM "$pid" 2>/dev/null
    if ! wait_gone "${NODE_STOP_TIMEOUT:-10}" "$pid"; then
      how=KILL; kill -KILL "$pid" 2>/dev/null
      wait_gone 5 "$pid" || problem "$1 pid $pid survives SIGKILL"
    fi
    log "stopped $1 pid $pid ($how, $(elapsed "$t0")s)"
  fi
  rm -f "$RUN/$1.pid"
}
# hierarchies: every cgroup v1 and cgroup2 mount point
hierarchies() { awk '{for(i=7;i<=NF;i++) if($i=="-"){if($(i+1)=="cgroup"||$(i+1)=="cgroup2") print $5; break}}' /proc/self/mountinfo; }

stop kube-controller-manager kube-controller-manager
stop kube-scheduler kube-scheduler
stop kubelet kubelet

# containers, through containerd while it still runs: kill, delete the tasks, remove them
SOCK=$RUN/containerd/containerd.sock
if [ -S "$SOCK" ] && [ -f "$RUN/containerd.pid" ]; then
  for ns in $(ctr -a "$SOCK" namespaces ls -q 2>/dev/null); do
    CTR=(ctr -a "$SOCK" -n "$ns")
    for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
    for _ in $(seq 1 60); do
      [ -z "$("${CTR[@]}" tasks ls 2>/dev/null | awk 'NR>1 && $3!="STOPPED"')" ] && break
      sleep 0.05
    done
    for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks delete -f "$t" >/dev/null 2>&1; done
    n=0
    for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers rm "$c" >/dev/null 2>&1 && n=$((n + 1)); done
    [ "$n" -gt 0 ] && log "removed $n containers in containerd namespace $ns"
  done
fi
stop containerd containerd

# Safety nets for what a crashed containerd or test leaves: shims of this containerd (their
# command line names our socket), then every process still in the node's cgroups (containers
# whose shim died) or in its mount namespace (daemons whose pid file was lost).
victims=()
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  case $cmd in *containerd-shim*" -address $SOCK "*) victims+=("${p#/proc/}");; esac
done
# (only the pods' tree ROOT/kubepods: whatever NODE_CGROUP_ROOT was, nothing else lives there)
ROOT=$(cat "$RUN/cgroup-root" 2>/dev/null || true)
pods=${ROOT%/}/kubepods
if [ -n "$ROOT" ]; then
  for h in $(hierarchies); do
    [ -d "$h$pods" ] || continue
    mapfile -t -O "${#victims[@]}" victims < <(find "$h$pods" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
fi
NSPID=$(cat "$RUN/nodens.pid" 2>/dev/null || true)
MNTNS=$(cat "$RUN/nodens.mnt" 2>/dev/null || true)
# (never sweep the host's own mount namespace, should the record be wrong)
if [ -n "$MNTNS" ] && [ "$MNTNS" != "$(readlink /proc/self/ns/mnt)" ]; then
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$NSPID" ] && continue
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$MNTNS" ] && victims+=("$pid")
  done
fi
if [ ${#victims[@]} -gt 0 ]; then
  mapfile -t victims < <(printf '%s\n' "${victims[@]}" | sort -un)
  kill -KILL "${victims[@]}" 2>/dev/null
  log "killed ${#victims[@]} leftover processes: ${victims[*]}"
  wait_gone 5 "${victims[@]}" || problem "leftover processes survive SIGKILL: ${victims[*]}"
fi
# the holder last: the namespace (its tmpfs, overlay and volume mounts) goes with it
stop nodens sleep

# network: the bridge the CNI plugin made, the ip_forward it turned on
BR=$(cat "$RUN/cni-bridge" 2>/dev/null || true)
if [ -n "$BR" ] && ip -d link show "$BR" 2>/dev/null | grep -q ' bridge '; then
  if ip link del "$BR"; then log "deleted bridge $BR"; else problem "cannot delete bridge $BR"; fi
fi
if [ -f "$RUN/ip_forward.orig" ] && [ "$(cat /proc/sys/net/ipv4/ip_forward)" != "$(cat "$RUN/ip_forward.orig")" ]; then
  cat "$RUN/ip_forward.orig" > /proc/sys/net/ipv4/ip_forward && log "restored net.ipv4.ip_forward=$(cat "$RUN/ip_forward.orig")"
fi

# cgroups: everything under the node's cgroup root, leaf first, in every hierarchy (with root
# "/", only the kubepods tree); then the intermediate dirs up.sh created (e.g. cpu/<caller's
# path>), deepest first
if [ -n "$ROOT" ]; then
  sub=$ROOT; [ "$ROOT" = / ] && sub=/kubepods
  left=0
  for h in $(hierarchies); do
    [ -d "$h$sub" ] || continue
    while read -r d; do rmdir "$d" 2>/dev/null || left=$((left + 1)); done < <(find "$h$sub" -depth -type d)
  done
  [ -f "$RUN/cgroup-created" ] && tac "$RUN/cgroup-created" | while read -r d; do [ ! -d "$d" ] || rmdir "$d" 2>/dev/null; done
  if [ "$left" -eq 0 ]; then log "removed the cgroups under $sub"; else problem "$left cgroup dirs under $sub are still busy"; fi
fi
# mount-point dirs up.sh had to create on the host (empty: the tmpfs lived in the namespace)
[ -f "$RUN/dirs-created" ] && tac "$RUN/dirs-created" | while read -r d; do rmdir "$d" 2>/dev/null; done

left=$(grep -cF " $RUN/" /proc/self/mountinfo)
[ "$left" -eq 0 ] || problem "$left mounts under $RUN remain in the host's mount namespace"
if [ -z "${NODE_KEEP_RUN_DIR:-}" ] && [ "$left" -eq 0 ]; then
  rm -rf "$RUN" && log "removed $RUN"
fi
log "down in $(elapsed "$T0")s"
[ "$PROBLEMS" -eq 0 ]
