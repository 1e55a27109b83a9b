#!/usr/bin/env bash
# A real Kubernetes node for the local control plane (hack/cluster.sh, CLUSTER_NODE=real):
# containerd + runc + the CNI bridge, kubelet and kube-proxy (iptables), all in a network
# namespace of their own (like kind's node container) reached from the host over a veth, plus
# kube-scheduler on the host. Nothing is pulled: images are imported into containerd.
# ../shared/research/real-node.md has the measured facts behind each setting.
#
# Usage (normally through hack/cluster.sh, which sets the variables below):
#   hack/real-node.sh net-up     the namespace, the veth, host routes and the FORWARD guard
#                                (before kube-apiserver: it listens on the host end)
#   hack/real-node.sh up         certificates, containerd (+ pause image), kubelet, kube-proxy,
#                                kube-scheduler; waits until the Node is Ready; then CoreDNS and
#                                metrics-server (hack/node-addons.yaml, images from
#                                hack/build-node-addons.sh) unless REAL_NODE_ADDONS=0
#   hack/real-node.sh import TAG...  copy images from buildah's storage into the node
#   hack/real-node.sh stop       stop the node's daemons and pods (the network stays)
#   hack/real-node.sh down       stop everything by recorded PIDs, kill what runs in the pods'
#                                cgroups, unmount, remove the namespace, veth, routes, rules,
#                                cgroups and state, and put back the sysctls kubelet changed
#   hack/real-node.sh status
#
# Address plan (never 10/8, 172.16/12, 192.168/16; no default route out of the node):
#   veth 198.19.255.0/30: host end 198.19.255.1 (kube-apiserver listens there), node end .2
#   pods 198.18.0.0/24 (cluster CIDR 198.18.0.0/16), Services CLUSTER_SERVICE_CIDR
#   (198.19.0.0/20: kubernetes 198.19.0.1, DNS 198.19.0.10)
#
# Environment: CLUSTER_STATE_DIR (required), BIN (kubelet, kube-proxy, kube-scheduler),
# CLUSTER_APISERVER_PORT, CLUSTER_SERVICE_CIDR, CLUSTER_NODE_NAME (default inference-node),
# CLUSTER_SCHEDULER_PORT (20259), CLUSTER_START_TIMEOUT, CONTAINERS_CONF (buildah's storage).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
S=${CLUSTER_STATE_DIR:?CLUSTER_STATE_DIR is required}
R=$S/real-node
API_PORT=${CLUSTER_APISERVER_PORT:-16443}
SERVICE_CIDR=${CLUSTER_SERVICE_CIDR:-198.19.0.0/20}
NODE_NAME=${CLUSTER_NODE_NAME:-inference-node}
SCHED_PORT=${CLUSTER_SCHEDULER_PORT:-20259}
START_TIMEOUT=${CLUSTER_START_TIMEOUT:-180}
STOP_TIMEOUT=${CLUSTER_STOP_TIMEOUT:-15}
NS=inference-node
HOST_IF=inode-host
HOST_IP=198.19.255.1
NODE_IP=198.19.255.2
POD_SUBNET=198.18.0.0/24
POD_GW=198.18.0.1
CLUSTER_CIDR=198.18.0.0/16
DNS_IP=198.19.0.10
CGROUP_ROOT=inference-node
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
RULE_TAG=inference-real-node
# kubelet sets these VM-wide (protectKernelDefaults: false); down puts the old values back.
KUBELET_SYSCTLS=(vm/overcommit_memory kernel/panic kernel/panic_on_oops vm/panic_on_oom)
N=(nsenter "--net=/run/netns/$NS" --)
# Which cluster's state dir owns the node's fixed names (namespace, veth, routes): one per machine.
OWNER=/run/inference-node.owner

log() { echo "real-node: $*" >&2; }
die() { echo "real-node: error: $*" >&2; exit 1; }

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
pid_of() { recorded_pid "$R/run" "$1"; } # component -> pid if it still runs that binary

start_bg() { # component in-netns(0|1) binary args...
  local comp=$1 innet=$2 bin=$3 pid i; shift 3
  if (( innet )); then
    setsid "${N[@]}" "$bin" "$@" >>"$R/logs/$comp.log" 2>&1 </dev/null &
  else
    setsid "$bin" "$@" >>"$R/logs/$comp.log" 2>&1 </dev/null &
  fi
  pid=$!
  # nsenter execs the daemon in place: the recorded PID is the daemon's once it has exec'd.
  echo "$pid" >"$R/run/$comp.pid"
  STARTED_PID[$comp]=$pid
  for ((i = 0; i < 250; i++)); do pid_of "$comp" >/dev/null && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  log "started $comp (pid $pid), log $R/logs/$comp.log"
}

wait_for() { # description component command...
  local what=$1 comp=$2 t0=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    if ! component_alive "$R/run" "$comp"; then
      tail -n 40 "$R/logs/$comp.log" >&2 || true
      die "$comp exited while waiting for $what; log: $R/logs/$comp.log"
    fi
    (( SECONDS - t0 < START_TIMEOUT )) || die "timed out after ${START_TIMEOUT}s waiting for $what; logs under $R/logs/"
    sleep 0.5
  done
  log "$what ok after $((SECONDS - t0))s"
}

kubectl_get() { # path
  curl -fsS --max-time 5 --cacert "$S/pki/ca.crt" --cert "$S/pki/admin.crt" --key "$S/pki/admin.key" \
    "https://$HOST_IP:$API_PORT$1"
}

# ------------------------------------------------------------------------------ network
cmd_net_up() {
  local owner t0=$SECONDS
  owner=$(cat "$OWNER" 2>/dev/null || true)
  # A test binary's cluster is torn down by its watchdog after the process exits, while the
  # next binary may already start: give a teardown in progress time to finish.
  while [[ -e /run/netns/$NS && -n $owner && $owner != "$S" && -d $owner/real-node ]] && (( SECONDS - t0 < 90 )); do
    (( SECONDS - t0 == 0 )) && log "waiting for the real node of $owner to go (one per machine)"
    sleep 1
    owner=$(cat "$OWNER" 2>/dev/null || true)
  done
  if [[ -e /run/netns/$NS && $owner != "$S" ]]; then
    if [[ -n $owner && -d $owner/real-node ]]; then
      die "the real node of another cluster runs here ($owner); one per machine: stop that one first (CLUSTER_STATE_DIR=$owner hack/cluster.sh down)"
    fi
    log "removing a leftover real node network (owner ${owner:-unknown} is gone)"
    cmd_down_network
  fi
  mkdir -p "$R/run" "$R/logs"
  echo "$S" >"$OWNER"
  [[ -e /run/netns/$NS ]] || ip netns add "$NS"
  if [[ ! -e /sys/class/net/$HOST_IF ]]; then
    ip link add "$HOST_IF" type veth peer name eth0 netns "$NS"
    ip addr add "$HOST_IP/30" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    ip -n "$NS" addr add "$NODE_IP/30" dev eth0
    ip -n "$NS" link set lo up
    ip -n "$NS" link set eth0 up
  fi
  # Host -> pods and ClusterIPs (DNAT happens in the node's namespace). No route back out.
  ip route replace "$CLUSTER_CIDR" via "$NODE_IP" dev "$HOST_IF"
  ip route replace "$SERVICE_CIDR" via "$NODE_IP" dev "$HOST_IF"
  # The host forwards (ip_forward=1): never pass node or pod traffic on to anything else.
  iptables -C FORWARD -i "$HOST_IF" -m comment --comment "$RULE_TAG" -j DROP 2>/dev/null ||
    iptables -I FORWARD -i "$HOST_IF" -m comment --comment "$RULE_TAG" -j DROP
  iptables -C FORWARD -o "$HOST_IF" -m comment --comment "$RULE_TAG" -j DROP 2>/dev/null ||
    iptables -I FORWARD -o "$HOST_IF" -m comment --comment "$RULE_TAG" -j DROP
  "${N[@]}" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  log "network namespace $NS, veth $HOST_IF $HOST_IP <-> eth0 $NODE_IP"
}

# ------------------------------------------------------------------------------ certificates
leaf_cert() { # name subject extensions
  local P=$R/pki
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$P/$1.key" -out "$P/$1.csr" -subj "$2"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$3" >"$P/$1.ext"
  openssl x509 -req -in "$P/$1.csr" -CA "$S/pki/ca.crt" -CAkey "$S/pki/ca.key" -CAcreateserial -days 3650 -sha256 \
    -extfile "$P/$1.ext" -out "$P/$1.crt"
  rm -f "$P/$1.csr" "$P/$1.ext"
}

kubeconfig() { # file user cert-name
  local b64="base64 -w0"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$HOST_IP:$API_PORT
    certificate-authority-data: $($b64 <"$S/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$R/pki/$3.crt")
    client-key-data: $($b64 <"$R/pki/$3.key")
contexts:
- name: local
  context: {cluster: local, user: $2}
current-context: local
EOF
  chmod 600 "$1"
}

gen_node_certs() {
  [[ -f "$R/pki/.done" ]] && return
  mkdir -p "$R/pki"
  (
    leaf_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
    leaf_cert kubelet-serving "/CN=$NODE_NAME" "extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
    leaf_cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
    leaf_cert kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  ) 2>"$R/logs/openssl.log" || { cat "$R/logs/openssl.log" >&2; die "openssl failed"; }
  chmod 600 "$R"/pki/*.key
  kubeconfig "$R/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
  kubeconfig "$R/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  kubeconfig "$R/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  touch "$R/pki/.done"
}

# ------------------------------------------------------------------------------ configs
write_configs() {
  mkdir -p "$R/cni/net.d" "$R/cni/ipam" "$R/containerd/root" "$R/containerd/state" "$R/kubelet"
  cat >"$R/containerd/config.toml" <<EOF
version = 2
root = "$R/containerd/root"
state = "$R/containerd/state"
[grpc]
  address = "$R/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$R/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # hugetlb v1 is not mounted here; the sandbox cannot lower oom_score_adj (no CAP_SYS_RESOURCE):
  # containerd clamps the value the kubelet asks for instead of runc failing the pod.
  disable_hugetlb_controller = true
  restrict_oom_score_adj = true
  # exec/logs/port-forward are proxied by the kubelet, which shares this network namespace.
  stream_server_address = "127.0.0.1"
  # Pod network namespaces under our state dir, so teardown finds every one of them.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$R/cni/net.d"
EOF
  cat >"$R/cni/net.d/10-inference-node.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "inference-node", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$R/cni/ipam",
            "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$POD_GW"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  cat >"$R/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 on this kernel; no systemd (PID 1 is the VM's init): cgroupfs.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupRoot: /$CGROUP_ROOT
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
containerRuntimeEndpoint: unix://$R/containerd/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $R/pki/kubelet-serving.crt
tlsPrivateKeyFile: $R/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $S/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
# Pods never see the machine's resolver (a 10.x address): cluster DNS only.
resolvConf: ""
podCIDR: $POD_SUBNET
# Images cannot be pulled again here, and containerd 1.6 does not pin the pause image.
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
rotateCertificates: false
serializeImagePulls: false
staticPodPath: ""
EOF
  cat >"$R/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $R/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
mode: iptables
clusterCIDR: $CLUSTER_CIDR
# A network namespace may not write nf_conntrack_max: kube-proxy would exit.
conntrack: {maxPerCore: 0}
iptables: {minSyncPeriod: 1s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
}

# ------------------------------------------------------------------------------ images
ctr_() { ctr --address "$R/containerd/containerd.sock" --namespace k8s.io "$@"; }

# The pause image from pause.c in the same k8s.io/kubernetes module the binaries come from,
# built once per module version into the binary cache.
pause_archive() {
  local cache=$BIN/../images out src
  out=$cache/pause-3.10.1.tar
  if [[ ! -s $out ]]; then
    mkdir -p "$cache"
    src=$(cd "$here/control-plane" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
    [[ -f $src ]] || die "pause.c not found at $src"
    gcc -Os -Wall -Werror -static -DVERSION=v3.10.1-local -o "$R/pause" "$src"
    local c
    c=$(buildah from scratch)
    buildah copy "$c" "$R/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah commit --quiet "$c" "$PAUSE_IMAGE" >/dev/null
    buildah rm "$c" >/dev/null
    buildah push --quiet "$PAUSE_IMAGE" "docker-archive:$out.tmp:$PAUSE_IMAGE"
    mv -f "$out.tmp" "$out"
  fi
  echo "$out"
}

cmd_import() { # tag...
  local tag file
  for tag in "$@"; do
    file=$R/images/$(echo "$tag" | tr '/:' '__').tar
    mkdir -p "$R/images"
    buildah push --quiet "$tag" "docker-archive:$file:$tag" || die "cannot export $tag from buildah's storage (make images)"
    ctr_ images import --no-unpack=false "$file" >/dev/null || die "ctr could not import $tag"
    rm -f "$file"
    log "imported $tag"
  done
}

# ------------------------------------------------------------------------------ up
node_ready() {
  kubectl_get "/api/v1/nodes/$NODE_NAME" 2>/dev/null | tr -d ' \n' | grep -q '"type":"Ready","status":"True"'
}

cmd_up() {
  [[ -f "$S/pki/ca.key" ]] || die "no control plane at $S (hack/cluster.sh up with CLUSTER_NODE=real)"
  local b
  for b in kubelet kube-proxy kube-scheduler kubectl; do [[ -x "$BIN/$b" ]] || die "missing $BIN/$b (hack/build-control-plane.sh)"; done
  for b in containerd containerd-shim-runc-v2 ctr runc nsenter iptables buildah gcc; do
    command -v "$b" >/dev/null || die "$b not found (make deps installs containerd, runc, buildah)"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || die "CNI plugins missing in /usr/lib/cni (containernetworking-plugins)"
  [[ -e /run/netns/$NS ]] || die "no network namespace $NS: run '$0 net-up' before kube-apiserver"
  mkdir -p "$R/run" "$R/logs"
  gen_node_certs
  write_configs
  # What kubelet will change VM-wide, recorded once so that down can put it back.
  if [[ ! -f $R/sysctls ]]; then
    for b in "${KUBELET_SYSCTLS[@]}"; do echo "$b $(cat "/proc/sys/$b")"; done >"$R/sysctls"
  fi
  local sub
  for sub in /sys/fs/cgroup/*/; do
    [[ -w $sub ]] && [[ $sub != */unified/ ]] && mkdir -p "$sub$CGROUP_ROOT"
  done

  if pid_of containerd >/dev/null; then log "containerd already running"; else
    start_bg containerd 1 "$(command -v containerd)" --config "$R/containerd/config.toml"
  fi
  wait_for "containerd" containerd ctr_ version
  ctr_ images ls -q | grep -qx "$PAUSE_IMAGE" || ctr_ images import "$(pause_archive)" >/dev/null
  if [[ -n ${REAL_NODE_IMAGES:-} ]]; then
    # shellcheck disable=SC2086 # a list of tags
    cmd_import $REAL_NODE_IMAGES
  fi

  if pid_of kubelet >/dev/null; then log "kubelet already running"; else
    start_bg kubelet 1 "$BIN/kubelet" --config "$R/kubelet.yaml" --kubeconfig "$R/kubelet.kubeconfig" \
      --root-dir "$R/kubelet" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --v=1
  fi
  if pid_of kube-proxy >/dev/null; then log "kube-proxy already running"; else
    start_bg kube-proxy 1 "$BIN/kube-proxy" --config "$R/kube-proxy.yaml" --v=1
  fi
  if pid_of kube-scheduler >/dev/null; then log "kube-scheduler already running"; else
    start_bg kube-scheduler 0 "$BIN/kube-scheduler" --kubeconfig "$R/kube-scheduler.kubeconfig" \
      --authentication-kubeconfig "$R/kube-scheduler.kubeconfig" --authorization-kubeconfig "$R/kube-scheduler.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false
  fi
  wait_for "node $NODE_NAME Ready" kubelet node_ready
  [[ ${REAL_NODE_ADDONS:-1} == 0 ]] || addons_up
}

kubectl_() { "$BIN/kubectl" --kubeconfig "$S/kubeconfig" "$@"; }

# CoreDNS (cluster DNS) and metrics-server (resource metrics for the HPA), as pods of images
# built here; waits until DNS answers and the metrics API serves.
addons_up() {
  local tags coredns metrics
  tags=$("$here/build-node-addons.sh") || die "the add-on images could not be built"
  coredns=$(grep /coredns: <<<"$tags") metrics=$(grep /metrics-server: <<<"$tags")
  # shellcheck disable=SC2086 # the add-ons and the client image (busybox), one tag a line
  cmd_import $tags
  sed -e "s|__COREDNS_IMAGE__|$coredns|" -e "s|__METRICS_SERVER_IMAGE__|$metrics|" -e "s|__DNS_IP__|$DNS_IP|" \
    "$here/node-addons.yaml" >"$R/node-addons.yaml"
  kubectl_ apply --server-side --force-conflicts --field-manager=inference-real-node -f "$R/node-addons.yaml" >/dev/null
  local t0=$SECONDS
  local d
  for d in coredns metrics-server; do
    kubectl_ -n kube-system rollout status "deployment/$d" --timeout="${START_TIMEOUT}s" >/dev/null \
      || die "$d did not become ready; kubectl -n kube-system describe pods -l k8s-app"
  done
  kubectl_ wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout="${START_TIMEOUT}s" >/dev/null \
    || die "the metrics API (metrics-server) is not Available"
  log "CoreDNS ($DNS_IP) and metrics-server ready after $((SECONDS - t0))s"
}

# ------------------------------------------------------------------------------ down
# Every process in the pods' cgroups (containers, pause) and containerd's shims for our socket.
kill_pod_processes() {
  local round pids f
  for round in 1 2 3 4 5; do
    pids=()
    for f in /sys/fs/cgroup/pids/$CGROUP_ROOT /sys/fs/cgroup/memory/$CGROUP_ROOT; do
      [[ -d $f ]] && while read -r p; do pids+=("$p"); done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null)
    done
    while read -r p; do pids+=("$p"); done < <(pgrep -f -- "containerd-shim-runc-v2 .*-address $R/containerd/containerd.sock" || true)
    (( ${#pids[@]} )) || return 0
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.3
  done
}

# The node's processes and the pods' (their network stays: kube-apiserver listens on the veth,
# and it stops in 2 s while the veth is there but waits ~20 s for connections severed by
# deleting it; hack/cluster.sh stops the control plane between stop and down).
cmd_stop() { # [mine: 1 = kill what runs in the pods' cgroups too]
  local c pid mine=${1:-1} owner
  owner=$(cat "$OWNER" 2>/dev/null || true)
  [[ -n $owner && $owner != "$S" ]] && mine=0
  for c in kube-scheduler kube-proxy kubelet; do
    if pid=$(pid_of "$c"); then stop_pid "$c" "$pid"; fi
  done
  (( mine )) && kill_pod_processes
  if pid=$(pid_of containerd); then stop_pid containerd "$pid"; fi
  (( mine )) && kill_pod_processes
  return 0
}

cmd_down() {
  local c pid owner mine=1
  owner=$(cat "$OWNER" 2>/dev/null || true)
  # The node's names and cgroups are fixed: if another cluster owns them now, touch only ours.
  if [[ -n $owner && $owner != "$S" ]]; then
    mine=0
    log "the node's network and cgroups belong to another cluster now ($owner): left alone"
  fi
  cmd_stop "$mine"
  # kubelet's volume mounts, containerd's rootfs and netns mounts: deepest first.
  if [[ -d $R ]]; then
    local m
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(awk -v r="$R" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  fi
  if (( mine )); then
    cmd_down_network
    # The pods' cgroups, deepest first.
    local sub
    for sub in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
      [[ -d $sub ]] && find "$sub" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    if [[ -f $R/sysctls ]]; then
      local key val
      while read -r key val; do echo "$val" >"/proc/sys/$key" 2>/dev/null || true; done <"$R/sysctls"
      log "restored ${KUBELET_SYSCTLS[*]}"
    fi
  fi
  rm -rf "$R"
}

# The namespace (and with it cni0, the pods' veths and the node's iptables rules), the veth,
# the host routes and FORWARD rules, the owner mark.
cmd_down_network() {
  if [[ -e /sys/class/net/$HOST_IF ]]; then ip link del "$HOST_IF" && log "removed veth $HOST_IF"; fi
  if [[ -e /run/netns/$NS ]]; then ip netns del "$NS" && log "removed network namespace $NS"; fi
  ip route del "$CLUSTER_CIDR" via "$NODE_IP" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" via "$NODE_IP" 2>/dev/null || true
  while iptables -D FORWARD -i "$HOST_IF" -m comment --comment "$RULE_TAG" -j DROP 2>/dev/null; do :; done
  while iptables -D FORWARD -o "$HOST_IF" -m comment --comment "$RULE_TAG" -j DROP 2>/dev/null; do :; done
  rm -f "$OWNER"
}

cmd_status() {
  local c pid rc=0
  for c in containerd kubelet kube-proxy kube-scheduler; do
    if pid=$(pid_of "$c"); then printf '%-24s running  pid %s\n' "$c" "$pid"
    else printf '%-24s stopped\n' "$c"; rc=3; fi
  done
  return $rc
}

case "${1:-}" in
  net-up) cmd_net_up ;;
  up) cmd_up ;;
  import) shift; cmd_import "$@" ;;
  stop) cmd_stop ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) sed -n '2,28p' "$0" >&2; exit 2 ;;
esac
