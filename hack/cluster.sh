#!/usr/bin/env bash
# A local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) built
# from source by hack/build-control-plane.sh. No scheduler and no kubelet: Pods stay Pending,
# unless CLUSTER_NODE=real adds the real node (hack/real-node.sh), which schedules and runs them.
#
# Usage: hack/cluster.sh up|down|status|env|import
#   up      build or reuse the binaries, create certs, start what is not running, wait for
#           /readyz and the default ServiceAccount, write $CLUSTER_STATE_DIR/kubeconfig.
#           With CLUSTER_NODE=real: a real node instead (hack/real-node.sh: containerd, kubelet,
#           kube-proxy in a network namespace, kube-scheduler); kube-apiserver then listens on
#           the host end of the node's veth, 198.19.255.1, not on 127.0.0.1.
#           If it fails, it stops what it started (not what was already running).
#   down    stop the real node's processes, then the control plane
#           (SIGTERM, SIGKILL after CLUSTER_STOP_TIMEOUT), and delete the state
#   status  show which processes run
#   env     print `export KUBECONFIG=...` (use: eval "$(hack/cluster.sh env)")
#   import TAG...  (CLUSTER_NODE=real) copy images from buildah's storage into the node
#
# Environment (defaults):
#   CLUSTER_STATE_DIR          <repo>/.state/cluster
#   CLUSTER_ETCD_PORT          23790   etcd client port (127.0.0.1)
#   CLUSTER_ETCD_PEER_PORT     23800   etcd peer port (127.0.0.1)
#   CLUSTER_APISERVER_PORT     16443   kube-apiserver secure port (127.0.0.1)
#   CLUSTER_KCM_PORT           20257   kube-controller-manager secure (healthz) port (127.0.0.1)
#   CLUSTER_SERVICE_CIDR       198.19.0.0/20  (never routed; ClusterIPs are bookkeeping only; the
#                                             address plan keeps pods in 198.18.0.0/16)
#   CLUSTER_WATCH_CACHE        true    kube-apiserver --watch-cache
#   CLUSTER_KCM_CONTROLLERS    see KCM_CONTROLLERS_DEFAULT below
#   CLUSTER_APISERVER_EXTRA_ARGS, CLUSTER_KCM_EXTRA_ARGS  appended flags (word-split)
#   CLUSTER_START_TIMEOUT      180     seconds to wait for each component
#   CLUSTER_STOP_TIMEOUT       15      seconds between SIGTERM and SIGKILL
#   CLUSTER_BIN_DIR            (from hack/build-control-plane.sh) use these binaries instead
#   CLUSTER_NODE               none (default: no node) or real
#   REAL_NODE_IMAGES           (CLUSTER_NODE=real) image tags imported into the node at up
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
S=${CLUSTER_STATE_DIR:-$repo/.state/cluster}
ETCD_PORT=${CLUSTER_ETCD_PORT:-23790}
ETCD_PEER_PORT=${CLUSTER_ETCD_PEER_PORT:-23800}
API_PORT=${CLUSTER_APISERVER_PORT:-16443}
KCM_PORT=${CLUSTER_KCM_PORT:-20257}
SERVICE_CIDR=${CLUSTER_SERVICE_CIDR:-198.19.0.0/20}
WATCH_CACHE=${CLUSTER_WATCH_CACHE:-true}
START_TIMEOUT=${CLUSTER_START_TIMEOUT:-180}
STOP_TIMEOUT=${CLUSTER_STOP_TIMEOUT:-15}
KCM_CONTROLLERS_DEFAULT=deployment-controller,replicaset-controller,garbage-collector-controller,horizontal-pod-autoscaler-controller,namespace-controller,endpointslice-controller,endpoints-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,service-cidr-controller,statefulset-controller,job-controller,disruption-controller,pod-garbage-collector-controller
KCM_CONTROLLERS=${CLUSTER_KCM_CONTROLLERS:-$KCM_CONTROLLERS_DEFAULT}
COMPONENTS=(etcd kube-apiserver kube-controller-manager)
MARKER=.inference-cluster-state
NODE_KIND=${CLUSTER_NODE:-none}
case "$NODE_KIND" in none|real) ;; *) echo "cluster: error: CLUSTER_NODE must be none or real, not '$NODE_KIND'" >&2; exit 2 ;; esac
# A real node reaches kube-apiserver over its veth (hack/real-node.sh); otherwise loopback only.
API_HOST=127.0.0.1
[[ $NODE_KIND == real ]] && API_HOST=198.19.255.1
REAL_NODE=$here/real-node.sh
# A kubelet registers its Node tainted not-ready until the node lifecycle controller lifts it.
[[ $NODE_KIND == real && ${CLUSTER_KCM_CONTROLLERS:-} == "" ]] && KCM_CONTROLLERS+=,node-lifecycle-controller
export CLUSTER_STATE_DIR=$S CLUSTER_APISERVER_PORT=$API_PORT CLUSTER_SERVICE_CIDR=$SERVICE_CIDR

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: error: $*" >&2; exit 1; }

# shellcheck source=hack/lib.sh
source "$here/lib.sh"
pid_of() { recorded_pid "$S/run" "$1"; } # component -> pid if its process runs, else nothing

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_free_port() { # component port
  if port_busy "$2"; then
    local who=""
    command -v ss >/dev/null && who=$(ss -Hltnp "sport = :$2" 2>/dev/null | head -1)
    die "port 127.0.0.1:$2 needed by $1 is already in use${who:+ ($who)}; stop that process or set the port variable (see $0 header)"
  fi
}

wait_for() { # description timeout-seconds component command...
  local what=$1 timeout=$2 comp=$3; shift 3
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! component_alive "$S/run" "$comp"; then
      tail -n 30 "$S/logs/$comp.log" >&2 || true
      die "$comp exited while waiting for $what; log: $S/logs/$comp.log"
    fi
    (( SECONDS - t0 < timeout )) || die "timed out after ${timeout}s waiting for $what; logs under $S/logs/"
    sleep 0.5
  done
  log "$what ok after $((SECONDS - t0))s"
}

STARTED=() # components this invocation started (stopped again if `up` fails)

# On a failed `up`: stop what this attempt started, newest first, so the next attempt does not
# trip over a half-started cluster (components that were already running are left alone).
stop_started_on_failure() {
  local rc=$? i c pid
  (( rc == 0 )) && return
  (( ${#STARTED[@]} )) || return "$rc"
  log "up failed: stopping what this attempt started (${STARTED[*]})"
  for (( i=${#STARTED[@]}-1; i>=0; i-- )); do
    c=${STARTED[i]}
    if [[ $c == real-node ]]; then "$REAL_NODE" down || true; continue; fi
    pid=${STARTED_PID[$c]:-}; [[ -n "$pid" ]] || pid=$(pid_of "$c") || continue
    stop_pid "$c" "$pid"
  done
  return "$rc"
}

# Until it execs, a background child is a copy of this shell, which pid_of (it checks the
# command line, against pid reuse) calls dead. Wait for the exec (≤ 5 s) before logging "started";
# the waits below ask component_alive (hack/lib.sh), which does not race with the exec.
wait_exec() { # pid check-command...
  local pid=$1 i; shift
  for ((i = 0; i < 250; i++)); do
    "$@" >/dev/null && break            # the binary runs
    kill -0 "$pid" 2>/dev/null || break # gone already: the caller's wait reports it, with its log
    sleep 0.02
  done
}

start_bg() { # component args...
  local comp=$1 pid; shift
  setsid "$BIN/$comp" "$@" >>"$S/logs/$comp.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$S/run/$comp.pid"
  STARTED+=("$comp")
  STARTED_PID[$comp]=$pid
  wait_exec "$pid" pid_of "$comp"
  log "started $comp (pid $pid), log $S/logs/$comp.log"
}

# ---------------------------------------------------------------------------------- certs
gen_certs() {
  local P="$S/pki"
  [[ -f "$P/.done" && -f "$P/apiserver-kubelet-client.crt" ]] && return
  log "generating certificates in $P"
  rm -rf "$P"; mkdir -p "$P"
  local svc_ip
  svc_ip=$(first_service_ip "$SERVICE_CIDR")
  (
    cd "$P"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -keyout ca.key -out ca.crt -subj "/CN=inference-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    leaf() { # name subject extensions
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
      printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
        -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    leaf apiserver "/CN=kube-apiserver" \
      "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:198.19.255.1,IP:$svc_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    leaf admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
    leaf kcm "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    # front-proxy (aggregation layer, e.g. a metrics API for the HPA): its own CA and client
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -keyout front-proxy-ca.key -out front-proxy-ca.crt -subj "/CN=inference-local-front-proxy-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout front-proxy-client.key \
      -out front-proxy-client.csr -subj "/CN=front-proxy-client"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" >front-proxy-client.ext
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
      -CAcreateserial -days 3650 -sha256 -extfile front-proxy-client.ext -out front-proxy-client.crt
    rm -f front-proxy-client.csr front-proxy-client.ext
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) 2>"$S/logs/openssl.log" || { cat "$S/logs/openssl.log" >&2; die "openssl failed"; }
  chmod 600 "$P"/*.key
  touch "$P/.done"
}

first_service_ip() { # a.b.c.d/n -> network address + 1
  local ip=${1%/*} bits=${1#*/} a b c d n
  IFS=. read -r a b c d <<<"$ip"
  n=$(( (a << 24 | b << 16 | c << 8 | d) & (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF ))
  n=$((n + 1))
  echo "$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))"
}

write_kubeconfig() { # file user cert-name
  local b64="base64 -w0"
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: inference-local
  cluster:
    server: https://$API_HOST:$API_PORT
    certificate-authority-data: $($b64 <"$S/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$S/pki/$3.crt")
    client-key-data: $($b64 <"$S/pki/$3.key")
contexts:
- name: inference-local
  context:
    cluster: inference-local
    user: $2
    namespace: default
current-context: inference-local
EOF
  chmod 600 "$1.tmp"
  mv -f "$1.tmp" "$1"
}

api_get() { # path
  curl -fsS --max-time 5 --cacert "$S/pki/ca.crt" --cert "$S/pki/admin.crt" --key "$S/pki/admin.key" \
    "https://$API_HOST:$API_PORT$1"
}

# ---------------------------------------------------------------------------------- commands
cmd_up() {
  local t_up=$SECONDS
  trap stop_started_on_failure EXIT
  if [[ -n "${CLUSTER_BIN_DIR:-}" ]]; then
    BIN=$CLUSTER_BIN_DIR
  else
    "$here/build-control-plane.sh" >&2
    BIN=$("$here/build-control-plane.sh" --print-bin-dir)
  fi
  local c
  for c in "${COMPONENTS[@]}"; do [[ -x "$BIN/$c" ]] || die "missing $BIN/$c"; done
  command -v openssl >/dev/null || die "openssl not found"
  command -v curl >/dev/null || die "curl not found"

  if [[ -d "$S" && ! -f "$S/$MARKER" && -n "$(ls -A "$S")" ]]; then
    die "$S exists and is not a cluster state dir (no $MARKER); refusing to use it"
  fi
  mkdir -p "$S/run" "$S/logs" "$S/etcd" "$S/kcm"
  touch "$S/$MARKER"
  # settings that must not change under a running cluster
  echo "ports etcd=$ETCD_PORT/$ETCD_PEER_PORT apiserver=$API_PORT kcm=$KCM_PORT cidr=$SERVICE_CIDR bin=$BIN node=$NODE_KIND" >"$S/run/settings.new"
  if [[ -f "$S/run/settings" ]] && ! cmp -s "$S/run/settings" "$S/run/settings.new"; then
    local running=0
    for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null && running=1; done
    (( running )) && die "the running cluster was started with other settings ($(cat "$S/run/settings")); run '$0 down' first"
    # The Service range is baked into the serving certificate and the objects in etcd; the
    # node kind decides the apiserver's address (and the Node objects in etcd).
    if [[ "$(grep -o 'cidr=[^ ]*' "$S/run/settings")" != "cidr=$SERVICE_CIDR" ||
          "$(grep -o 'node=[^ ]*' "$S/run/settings")" != "node=$NODE_KIND" ]]; then
      log "the Service range or node kind changed: starting from fresh certificates and etcd data"
      rm -rf "$S/pki" "$S/etcd"
      mkdir -p "$S/etcd"
    fi
  fi
  mv -f "$S/run/settings.new" "$S/run/settings"
  gen_certs
  write_kubeconfig "$S/kubeconfig" admin admin
  write_kubeconfig "$S/kcm.kubeconfig" system:kube-controller-manager kcm

  # Fail fast: every port we will listen on must be free unless our component holds it.
  pid_of etcd >/dev/null || { require_free_port etcd "$ETCD_PORT"; require_free_port etcd-peer "$ETCD_PEER_PORT"; }
  pid_of kube-apiserver >/dev/null || require_free_port kube-apiserver "$API_PORT"
  pid_of kube-controller-manager >/dev/null || require_free_port kube-controller-manager "$KCM_PORT"

  export GOMAXPROCS=${GOMAXPROCS:-2}
  if [[ $NODE_KIND == real ]]; then
    # The node's namespace and veth first: kube-apiserver listens on the veth's host end.
    [[ -e /run/netns/inference-node ]] || STARTED+=(real-node)
    "$REAL_NODE" net-up
  fi

  if pid_of etcd >/dev/null; then log "etcd already running"; else
    start_bg etcd --name=inference-local --data-dir="$S/etcd" \
      --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster="inference-local=http://127.0.0.1:$ETCD_PEER_PORT" \
      --unsafe-no-fsync=true --quota-backend-bytes=$((2 * 1024 * 1024 * 1024)) \
      --auto-compaction-mode=periodic --auto-compaction-retention=10m \
      --snapshot-count=10000 --log-level=warn
  fi
  wait_for "etcd /health" "$START_TIMEOUT" etcd curl -fsS --max-time 3 "http://127.0.0.1:$ETCD_PORT/health"

  if pid_of kube-apiserver >/dev/null; then log "kube-apiserver already running"; else
    # shellcheck disable=SC2086
    start_bg kube-apiserver \
      --etcd-servers="http://127.0.0.1:$ETCD_PORT" --etcd-prefix=/registry \
      --bind-address="$API_HOST" --secure-port="$API_PORT" \
      --advertise-address="$API_HOST" --endpoint-reconciler-type="$([[ $NODE_KIND == real ]] && echo lease || echo none)" \
      --kubelet-client-certificate="$S/pki/apiserver-kubelet-client.crt" --kubelet-client-key="$S/pki/apiserver-kubelet-client.key" \
      --kubelet-preferred-address-types=InternalIP \
      --tls-cert-file="$S/pki/apiserver.crt" --tls-private-key-file="$S/pki/apiserver.key" \
      --client-ca-file="$S/pki/ca.crt" \
      --requestheader-client-ca-file="$S/pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
      --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
      --requestheader-extra-headers-prefix=X-Remote-Extra- \
      --proxy-client-cert-file="$S/pki/front-proxy-client.crt" --proxy-client-key-file="$S/pki/front-proxy-client.key" \
      --authorization-mode=Node,RBAC --anonymous-auth=true \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$S/pki/sa.pub" --service-account-signing-key-file="$S/pki/sa.key" \
      --api-audiences=https://kubernetes.default.svc.cluster.local \
      --service-cluster-ip-range="$SERVICE_CIDR" \
      --enable-admission-plugins=NodeRestriction \
      --allow-privileged=true \
      --watch-cache="$WATCH_CACHE" \
      --profiling=false --event-ttl=30m \
      --max-requests-inflight=200 --max-mutating-requests-inflight=100 \
      ${CLUSTER_APISERVER_EXTRA_ARGS:-}
  fi
  wait_for "kube-apiserver /readyz" "$START_TIMEOUT" kube-apiserver api_get /readyz

  if pid_of kube-controller-manager >/dev/null; then log "kube-controller-manager already running"; else
    # shellcheck disable=SC2086
    start_bg kube-controller-manager \
      --kubeconfig="$S/kcm.kubeconfig" \
      --authentication-kubeconfig="$S/kcm.kubeconfig" --authorization-kubeconfig="$S/kcm.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$S/kcm" \
      --leader-elect=false \
      --controllers="$KCM_CONTROLLERS" \
      --use-service-account-credentials=true \
      --service-account-private-key-file="$S/pki/sa.key" --root-ca-file="$S/pki/ca.crt" \
      --service-cluster-ip-range="$SERVICE_CIDR" \
      --profiling=false \
      ${CLUSTER_KCM_EXTRA_ARGS:-}
  fi
  wait_for "kube-controller-manager /healthz" "$START_TIMEOUT" kube-controller-manager \
    curl -fsSk --max-time 3 "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for "ServiceAccount default/default" "$START_TIMEOUT" kube-controller-manager \
    api_get /api/v1/namespaces/default/serviceaccounts/default

  log "control plane up in $((SECONDS - t_up))s; binaries (incl. helm): $BIN"
  if [[ $NODE_KIND == real ]]; then
    [[ " ${STARTED[*]} " == *" real-node "* ]] || STARTED+=(real-node)
    BIN=$BIN "$REAL_NODE" up
  fi
  echo "export KUBECONFIG=$S/kubeconfig"
}

cmd_down() {
  if [[ ! -d "$S" ]]; then log "no state at $S; nothing to do"; return; fi
  [[ -f "$S/$MARKER" ]] || die "$S is not a cluster state dir (no $MARKER); not touching it"
  local c pid i
  # A real node (pods, containerd, kubelet, the namespace, routes, rules) before its apiserver:
  # only this cluster's (its state dir has real-node/ from net-up on). The namespace's name is
  # fixed: a test binary's watchdog tearing down its own cluster must not take down the real
  # node the next test binary has just started (it did: kube-apiserver could not bind).
  # Its processes first, its network after the control plane (kube-apiserver listens there).
  if [[ -d "$S/real-node" ]]; then "$REAL_NODE" stop || log "stopping the real node failed; going on"; fi
  for (( i=${#COMPONENTS[@]}-1; i>=0; i-- )); do
    c=${COMPONENTS[i]}
    if pid=$(pid_of "$c"); then stop_pid "$c" "$pid"; fi
  done
  if [[ -d "$S/real-node" ]]; then "$REAL_NODE" down; fi
  rm -rf "$S"
  log "removed $S"
}

cmd_status() {
  local c pid rc=0
  if [[ ! -f "$S/$MARKER" ]]; then echo "no cluster state at $S"; return 3; fi
  for c in "${COMPONENTS[@]}"; do
    if pid=$(pid_of "$c"); then printf '%-24s running  pid %s\n' "$c" "$pid"
    else printf '%-24s stopped\n' "$c"; rc=3; fi
  done
  if [[ -d "$S/real-node" ]]; then "$REAL_NODE" status || rc=3; fi
  if [[ -f "$S/pki/ca.crt" ]] && api_get /readyz >/dev/null 2>&1; then
    echo "apiserver /readyz        ok  https://$API_HOST:$API_PORT"
  else
    echo "apiserver /readyz        not ready"; rc=3
  fi
  echo "kubeconfig               $S/kubeconfig"
  return $rc
}

cmd_env() { echo "export KUBECONFIG=$S/kubeconfig"; }

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  import) shift; "$REAL_NODE" import "$@" ;;
  *) sed -n '2,48p' "$0" >&2; exit 2 ;;
esac
