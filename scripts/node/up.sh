#!/usr/bin/env bash
# up.sh BINDIR RUNDIR
#   Starts a real single Kubernetes node against an EXISTING control plane: a private
#   containerd (Debian's 1.6) in a private mount namespace, a real kubelet registered as
#   $NODE_NAME, kube-scheduler and kube-controller-manager. Everything lives in RUNDIR
#   (created; must be missing or empty). Stop with down.sh RUNDIR, which also undoes every
#   host change (processes, mounts, cgroups, the CNI bridge, net.ipv4.ip_forward).
#
# Contract:
#   * stdout carries only `export NAME=VALUE` lines describing the node (also written to
#     RUNDIR/env): eval "$(scripts/node/up.sh BIN RUN)". Progress goes to stderr, daemon logs
#     to RUNDIR/logs/.
#   * It returns once the node is Ready and the controllers are healthy. On failure it prints
#     the log tails, stops what it started (down.sh, keeping RUNDIR) and exits non-zero.
#   * One node at a time is assumed: fixed default ports, bridge and pod CIDR. A busy port or
#     an existing bridge is refused, naming the variable to change.
#
# BINDIR: kubelet, kube-scheduler, kube-controller-manager (scripts/node/build.sh).
# Needs:  root; containerd, ctr and runc (apt: containerd); CNI plugins (apt:
#         containernetworking-plugins); openssl, curl, unshare/nsenter (util-linux), ip (iproute2).
# The apiserver must run with (test/internal/k8s: Options.Kubelet):
#   --authorization-mode=Node (the kubelet's identity system:node:NAME) plus RBAC,
#   --enable-admission-plugins=NodeRestriction,
#   --kubelet-preferred-address-types=Hostname,InternalIP (NODE_NAME must resolve to 127.0.0.1:
#     the kubelet refuses a loopback --node-ip, so InternalIP is an address nothing listens on),
#   --kubelet-client-certificate/--kubelet-client-key (a client cert of the cluster CA that RBAC
#     lets use nodes/proxy, e.g. the admin's) and --kubelet-certificate-authority=the cluster CA.
#
# Env, the control plane (required):
#   K8S_API_URL     https://127.0.0.1:PORT
#   K8S_CA_FILE     cluster CA certificate (PEM); K8S_CA_KEY its key: signs the node's client
#                   and serving certificates, and the KCM's CSR signer
#   K8S_KUBECONFIG  an admin kubeconfig (kube-scheduler, kube-controller-manager)
#   K8S_SA_KEY      the service-account signing key (kube-controller-manager)
# Env, the node (optional):
#   NODE_NAME (localhost)  KUBELET_PORT (10250)  KUBELET_HEALTHZ_PORT (10248)
#   KCM_PORT (10257)  SCHEDULER_PORT (10259)  POD_CIDR (10.244.250.0/24)  CNI_BRIDGE (tally-node0)
#   PAUSE_TAR     the sandbox image tarball (required unless PAUSE_IMAGE is imported by NODE_IMAGES)
#   PAUSE_IMAGE   its reference (localhost/tally-test/pause:1)
#   NODE_IMAGES   more image tarballs (space-separated) to import into containerd's k8s.io namespace
#   NODE_CGROUP_ROOT  (cgroup v1: <caller's memory cgroup>/kubelet-<RUNDIR name>, so pods stay in
#                     the caller's memory accounting; pure cgroup v2: /)
#   NODE_CONTROLLERS (1; 0: no scheduler/KCM)  NODE_READY_TIMEOUT (180 s)  KUBELET_V (2)
#   KUBELET_EXTRA_FLAGS  CNI_BIN_DIR (/usr/lib/cni)  CONTAINERD_BIN  RUNC_BIN
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "${1:?usage: up.sh BINDIR RUNDIR}" && pwd)
RUN=${2:?usage: up.sh BINDIR RUNDIR}
: "${K8S_API_URL:?set K8S_API_URL}" "${K8S_CA_FILE:?set K8S_CA_FILE}" "${K8S_CA_KEY:?set K8S_CA_KEY}"
NODE_NAME=${NODE_NAME:-localhost}
KUBELET_PORT=${KUBELET_PORT:-10250}
HEALTHZ_PORT=${KUBELET_HEALTHZ_PORT:-10248}
KCM_PORT=${KCM_PORT:-10257}
SCHEDULER_PORT=${SCHEDULER_PORT:-10259}
POD_CIDR=${POD_CIDR:-10.244.250.0/24}
CNI_BRIDGE=${CNI_BRIDGE:-tally-node0}
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/tally-test/pause:1}
CONTROLLERS=${NODE_CONTROLLERS:-1}
CONTAINERD_BIN=${CONTAINERD_BIN:-$(command -v containerd || true)}
RUNC_BIN=${RUNC_BIN:-$(command -v runc || true)}
log() { echo "[node-up] $*" >&2; }
die() { log "$*"; exit 1; }

# ---- preconditions: refused before anything is started ----
[ "$(id -u)" = 0 ] || die "needs root"
for b in kubelet kube-scheduler kube-controller-manager; do
  [ "$CONTROLLERS" = 1 ] || [ $b = kubelet ] || continue
  [ -x "$BIN/$b" ] || die "no $b in $BIN (run scripts/node/build.sh)"
done
if ! { [ -x "$CONTAINERD_BIN" ] && [ -x "$RUNC_BIN" ] && command -v ctr >/dev/null; }; then
  die "need containerd, ctr and runc (apt-get install containerd)"
fi
if ! { [ -x "$CNI_BIN_DIR/bridge" ] && [ -x "$CNI_BIN_DIR/host-local" ]; }; then
  die "no CNI plugins in $CNI_BIN_DIR (apt-get install containernetworking-plugins)"
fi
for b in openssl curl unshare nsenter ip; do command -v $b >/dev/null || die "need $b"; done
if [ "$CONTROLLERS" = 1 ]; then
  : "${K8S_KUBECONFIG:?set K8S_KUBECONFIG (or NODE_CONTROLLERS=0)}" "${K8S_SA_KEY:?set K8S_SA_KEY (or NODE_CONTROLLERS=0)}"
fi
case $RUN in *[[:space:]]*) die "RUNDIR must not contain whitespace: $RUN";; esac
mkdir -p "$RUN"; RUN=$(cd "$RUN" && pwd)
[ -z "$(ls -A "$RUN")" ] || die "$RUN is not empty"
ports=("KUBELET_PORT=$KUBELET_PORT" "KUBELET_HEALTHZ_PORT=$HEALTHZ_PORT")
[ "$CONTROLLERS" = 1 ] && ports+=("KCM_PORT=$KCM_PORT" "SCHEDULER_PORT=$SCHEDULER_PORT")
for p in "${ports[@]}"; do
  # a successful connect means someone listens (another node? set a free port in ${p%=*})
  if (exec 3<>"/dev/tcp/127.0.0.1/${p#*=}") 2>/dev/null; then die "port ${p#*=} on 127.0.0.1 is in use (${p%=*}): is another node running?"; fi
done
if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then die "network interface $CNI_BRIDGE exists already (CNI_BRIDGE): is another node running?"; fi

T0=$(date +%s.%N)
elapsed() { awk -v a="${1:-$T0}" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'; }
DONE=
on_exit() {
  [ -n "$DONE" ] && return
  log "FAILED; log tails:"
  for f in "$RUN"/logs/*.log; do
    [ -s "$f" ] && { echo "--- $f" >&2; tail -15 "$f" >&2; }
  done
  NODE_KEEP_RUN_DIR=1 "$HERE/down.sh" "$RUN" >&2 || true
  log "logs kept in $RUN/logs"
}
trap on_exit EXIT

mkdir -p "$RUN"/{pki,logs,containerd/root,containerd/state,cni/net.d,cni-ipam,kubelet,pod-logs,volume-plugins,sysctl}
chmod 700 "$RUN"
# what down.sh needs to undo, recorded before it is changed
echo "$CNI_BRIDGE" > "$RUN/cni-bridge"
# the bridge plugin (isGateway) turns net.ipv4.ip_forward on
cat /proc/sys/net/ipv4/ip_forward > "$RUN/ip_forward.orig"

# ---- PKI: the node's client cert (the Node authorizer's identity) and the kubelet's serving
#      cert, both from the cluster CA ----
P=$RUN/pki
cp "$K8S_CA_FILE" "$P/ca.crt"
sign() { # sign NAME SUBJECT EXTENSIONS
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$P/$1.key" \
    -out "$P/$1.csr" -subj "$2" 2>/dev/null
  printf '%b' "$3" > "$P/$1.ext"
  openssl x509 -req -in "$P/$1.csr" -CA "$K8S_CA_FILE" -CAkey "$K8S_CA_KEY" \
    -set_serial "0x$(openssl rand -hex 12)" -days 30 -extfile "$P/$1.ext" -out "$P/$1.crt" 2>/dev/null
  rm -f "$P/$1.csr" "$P/$1.ext"
}
sign node "/O=system:nodes/CN=system:node:$NODE_NAME" 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n'
sign kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:$NODE_NAME\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n"
cat > "$RUN/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$K8S_API_URL", certificate-authority: "$P/ca.crt"}
users:
- name: node
  user: {client-certificate: "$P/node.crt", client-key: "$P/node.key"}
contexts:
- name: local
  context: {cluster: local, user: node}
current-context: local
EOF
log "pki ready ($(elapsed)s)"

# ---- cgroup root, created in every hierarchy: the kubelet refuses a cgroupRoot missing in any
#      of cpu/cpuacct/cpuset/memory/pids/systemd, and runc also uses the hybrid cgroup2 mount ----
: > "$RUN/cgroup-created"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  CGROUP_ROOT=${NODE_CGROUP_ROOT:-/}   # pure cgroup v2 (untested)
else
  base=$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup); [ "$base" = / ] && base=
  CGROUP_ROOT=${NODE_CGROUP_ROOT:-$base/kubelet-$(basename "$RUN")}
fi
echo "$CGROUP_ROOT" > "$RUN/cgroup-root"
if [ "$CGROUP_ROOT" != / ]; then
  # every cgroup v1 and cgroup2 mount point
  mapfile -t hierarchies < <(awk '{for(i=7;i<=NF;i++) if($i=="-"){if($(i+1)=="cgroup"||$(i+1)=="cgroup2") print $5; break}}' /proc/self/mountinfo)
  for h in "${hierarchies[@]}"; do
    d=$h
    IFS=/ read -ra parts <<< "${CGROUP_ROOT#/}"
    for part in "${parts[@]}"; do
      [ -n "$part" ] || continue
      parent=$d; d=$d/$part
      if [ ! -d "$d" ]; then mkdir "$d"; echo "$d" >> "$RUN/cgroup-created"; fi
      if [ -f "$d/cpuset.cpus" ]; then   # a new v1 cpuset group starts with no cpus/mems
        [ -n "$(cat "$d/cpuset.cpus")" ] || cat "$parent/cpuset.cpus" > "$d/cpuset.cpus"
        [ -n "$(cat "$d/cpuset.mems")" ] || cat "$parent/cpuset.mems" > "$d/cpuset.mems"
      fi
    done
  done
fi
log "cgroup root $CGROUP_ROOT"

# ---- private mount namespace for containerd and the kubelet, held by `sleep infinity` ----
# * tmpfs over the paths they hard-code: /run/containerd (1.6's shim sockets in s/, ctr's
#   fifos), /var/lib/kubelet (device-plugin socket and checkpoints), /var/log/containers (the
#   kubelet's log symlinks). The containers' overlay and volume mounts live there too, and all
#   of them vanish with the namespace.
# * fake /proc/sys files for the kernel tunables the kubelet checks at start: where the host's
#   value differs it would rewrite it host-wide (vm.overcommit_memory=1, kernel.panic=10,
#   kernel.panic_on_oops=1); here it reads what it expects and writes nothing to the kernel.
: > "$RUN/dirs-created"
NS=$RUN/nodens.sh
echo 'set -e' > "$NS"
for d in /run/containerd /var/lib/kubelet /var/log/containers; do
  [ -d "$d" ] || { mkdir -p "$d"; echo "$d" >> "$RUN/dirs-created"; }
  echo "mount -t tmpfs -o mode=0755 tally-node $d" >> "$NS"
done
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
          kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  k=${kv%=*}; v=${kv#*=}
  if [ "$(cat "/proc/sys/$k")" != "$v" ]; then
    echo "$v" > "$RUN/sysctl/${k//\//.}"
    echo "mount --bind $RUN/sysctl/${k//\//.} /proc/sys/$k" >> "$NS"
  fi
done
echo 'echo ready' >> "$NS"
echo 'exec sleep infinity' >> "$NS"
# a plain `setsid cmd &` from a script: setsid then does not fork, so $! is the daemon's pid
# (unshare and sh exec in place); --propagation private: nothing mounted inside leaks out
setsid unshare -m --propagation private sh "$NS" > "$RUN/logs/nodens.log" 2>&1 < /dev/null &
NSPID=$!; echo "$NSPID" > "$RUN/nodens.pid"
for _ in $(seq 1 100); do grep -q ready "$RUN/logs/nodens.log" 2>/dev/null && break; sleep 0.05; done
grep -q ready "$RUN/logs/nodens.log" || die "mount namespace setup failed: $(cat "$RUN/logs/nodens.log")"
# recorded for down.sh, which kills whatever is left in this namespace
readlink "/proc/$NSPID/ns/mnt" > "$RUN/nodens.mnt"
[ "$(cat "$RUN/nodens.mnt")" != "$(readlink /proc/self/ns/mnt)" ] || die "unshare -m did not create a mount namespace"
IN_NS=(nsenter -m -t "$NSPID" --)
log "mount namespace holder pid $NSPID ($(elapsed)s)"

# ---- containerd ----
SOCK=$RUN/containerd/containerd.sock
sed -e "s#@ROOT@#$RUN/containerd/root#g; s#@STATE@#$RUN/containerd/state#g; s#@SOCK@#$SOCK#g" \
    -e "s#@SANDBOX_IMAGE@#$PAUSE_IMAGE#g; s#@RUNC@#$RUNC_BIN#g; s#@CNI_BIN_DIR@#$CNI_BIN_DIR#g" \
    -e "s#@CNI_CONF_DIR@#$RUN/cni/net.d#g" "$HERE/containerd.toml.in" > "$RUN/containerd/config.toml"
sed -e "s#@BRIDGE@#$CNI_BRIDGE#g; s#@POD_CIDR@#$POD_CIDR#g; s#@RUN@#$RUN#g" \
    "$HERE/cni.conflist.in" > "$RUN/cni/net.d/10-tally-node.conflist"
T1=$(date +%s.%N)
setsid "${IN_NS[@]}" "$CONTAINERD_BIN" --config "$RUN/containerd/config.toml" \
  > "$RUN/logs/containerd.log" 2>&1 < /dev/null &
echo $! > "$RUN/containerd.pid"
CTR=(ctr -a "$SOCK" -n k8s.io)
for _ in $(seq 1 200); do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.05; done
"${CTR[@]}" version >/dev/null 2>&1 || die "containerd did not come up"
log "containerd pid $(cat "$RUN/containerd.pid") up in $(elapsed "$T1")s"
# (word splitting of NODE_IMAGES is intended: a space-separated list)
# shellcheck disable=SC2086
for t in ${PAUSE_TAR:-} ${NODE_IMAGES:-}; do
  "${CTR[@]}" images import "$t" > /dev/null || die "ctr images import $t failed"
done
# (captured, not piped into grep -q: under pipefail an early-exiting grep fails the writer)
images=$("${CTR[@]}" images ls -q)
grep -qxF "$PAUSE_IMAGE" <<< "$images" || die "sandbox image $PAUSE_IMAGE is not in containerd (set PAUSE_TAR)"
log "images imported ($(elapsed)s)"

# ---- kubelet ----
sed -e "s#@KUBELET_PORT@#$KUBELET_PORT#g; s#@HEALTHZ_PORT@#$HEALTHZ_PORT#g; s#@PKI@#$P#g; s#@CA_FILE@#$P/ca.crt#g" \
    -e "s#@CONTAINERD_SOCK@#$SOCK#g; s#@CGROUP_ROOT@#$CGROUP_ROOT#g; s#@RUN@#$RUN#g" \
    "$HERE/kubelet-config.yaml.in" > "$RUN/kubelet-config.yaml"
T2=$(date +%s.%N)
# a Node object of this name may be left by an earlier node of the same cluster, still Ready:
# only a Ready condition this kubelet posted (heartbeat at or after its start) counts
KUBELET_START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# --hostname-override: the node's name (and the Hostname address the apiserver dials);
# --root-dir: pods' volumes in RUNDIR instead of /var/lib/kubelet;
# --cert-dir: would hold self-signed certs (unused: tlsCertFile is set)
# shellcheck disable=SC2086
setsid "${IN_NS[@]}" "$BIN/kubelet" --config="$RUN/kubelet-config.yaml" \
  --kubeconfig="$RUN/kubelet.kubeconfig" --hostname-override="$NODE_NAME" \
  --root-dir="$RUN/kubelet" --cert-dir="$P" --v="${KUBELET_V:-2}" ${KUBELET_EXTRA_FLAGS:-} \
  > "$RUN/logs/kubelet.log" 2>&1 < /dev/null &
echo $! > "$RUN/kubelet.pid"

# ---- kube-controller-manager and kube-scheduler (DaemonSets, the node-lifecycle controller
#      that lifts the not-ready taint, default ServiceAccounts, kube-root-ca.crt) ----
if [ "$CONTROLLERS" = 1 ]; then
  AK=$K8S_KUBECONFIG
  # admin kubeconfig for the API and for delegated authn/authz of its own secure port;
  # --leader-elect=false: a single instance; --use-service-account-credentials=false: every
  # controller as the admin (no per-controller RBAC needed); --root-ca-file: the CA put in
  # kube-root-ca.crt and SA token secrets; --cluster-signing-*: signs approved CSRs
  setsid "$BIN/kube-controller-manager" --kubeconfig="$AK" --authentication-kubeconfig="$AK" \
    --authorization-kubeconfig="$AK" --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --leader-elect=false --use-service-account-credentials=false \
    --root-ca-file="$K8S_CA_FILE" --service-account-private-key-file="$K8S_SA_KEY" \
    --cluster-signing-cert-file="$K8S_CA_FILE" --cluster-signing-key-file="$K8S_CA_KEY" \
    --cert-dir="$P/kcm" --profiling=false \
    > "$RUN/logs/kube-controller-manager.log" 2>&1 < /dev/null &
  echo $! > "$RUN/kube-controller-manager.pid"
  setsid "$BIN/kube-scheduler" --kubeconfig="$AK" --authentication-kubeconfig="$AK" \
    --authorization-kubeconfig="$AK" --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
    --leader-elect=false --cert-dir="$P/scheduler" --profiling=false \
    > "$RUN/logs/kube-scheduler.log" 2>&1 < /dev/null &
  echo $! > "$RUN/kube-scheduler.pid"
fi

# ---- wait: node Ready (read with the node's own identity), controllers healthy ----
alive() { kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null || die "$1 exited"; }
# ?pretty=false: the apiserver pretty-prints for a curl User-Agent; compact JSON (fields in
# the Go struct's order: type, status, lastHeartbeatTime) can be read with sed
NODE_GET=(curl -sf --cacert "$P/ca.crt" --cert "$P/node.crt" --key "$P/node.key"
          "$K8S_API_URL/api/v1/nodes/$NODE_NAME?pretty=false")
ready_since() { # the heartbeat of a True Ready condition, or nothing
  "${NODE_GET[@]}" 2>/dev/null | sed -n 's/.*"type":"Ready","status":"True","lastHeartbeatTime":"\([^"]*\)".*/\1/p'
}
DEADLINE=$(( $(date +%s) + ${NODE_READY_TIMEOUT:-180} ))
until hb=$(ready_since) && [ -n "$hb" ] && [[ ! $hb < $KUBELET_START ]]; do
  alive kubelet
  [ "$(date +%s)" -lt "$DEADLINE" ] || die "node $NODE_NAME not Ready after ${NODE_READY_TIMEOUT:-180}s"
  sleep 0.2
done
log "node $NODE_NAME Ready $(elapsed "$T2")s after the kubelet started (kubelet pid $(cat "$RUN/kubelet.pid"))"
if [ "$CONTROLLERS" = 1 ]; then
  for c in kube-controller-manager:$KCM_PORT kube-scheduler:$SCHEDULER_PORT; do
    n=${c%:*}
    # -k: their serving certs are self-signed; /healthz needs no authentication
    until [ "$(curl -sk "https://127.0.0.1:${c#*:}/healthz" 2>/dev/null)" = ok ]; do
      alive "$n"
      [ "$(date +%s)" -lt "$DEADLINE" ] || die "$n not healthy after ${NODE_READY_TIMEOUT:-180}s"
      sleep 0.2
    done
    log "$n pid $(cat "$RUN/$n.pid") healthy"
  done
fi

cat > "$RUN/env" <<EOF
export NODE_RUN_DIR=$RUN
export NODE_NAME=$NODE_NAME
export NODE_LOG_DIR=$RUN/logs
export KUBELET_URL=https://127.0.0.1:$KUBELET_PORT
export KUBELET_CA_FILE=$P/ca.crt
export KUBELET_NODE_CERT=$P/node.crt
export KUBELET_NODE_KEY=$P/node.key
export KUBELET_PID=$(cat "$RUN/kubelet.pid")
export CONTAINERD_ADDRESS=$SOCK
export CONTAINERD_PID=$(cat "$RUN/containerd.pid")
export NODE_NS_PID=$NSPID
export NODE_CGROUP_ROOT=$CGROUP_ROOT
export CNI_BRIDGE=$CNI_BRIDGE
export POD_CIDR=$POD_CIDR
export KUBE_SCHEDULER_PID=$(cat "$RUN/kube-scheduler.pid" 2>/dev/null || true)
export KUBE_CONTROLLER_MANAGER_PID=$(cat "$RUN/kube-controller-manager.pid" 2>/dev/null || true)
EOF
DONE=1
log "up in $(elapsed)s"
cat "$RUN/env"
