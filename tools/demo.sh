#!/usr/bin/env bash
# make demo: control plane + local node + operator, an InferenceService, a real prediction.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
weights=$root/$1
state=$root/.state/demo
mkdir -p "$state"
step() { printf '\n==> %s\n' "$*"; }

step "control plane + local node (hack/cluster.sh up; the first run builds it from Go modules, ~20 min)"
LOCAL_NODE_BIN=$root/target/release/local-node INFERENCE_SERVER_BIN=$root/target/release/inference-server hack/cluster.sh up
eval "$(hack/cluster.sh env)"

step "CRD (server-side apply from crds/)"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/inferenceservices.serving.inference-server.dev >/dev/null

step "operator (log: .state/demo/operator.log)"
if [[ -f $state/operator.pid ]] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
  echo "already running (pid $(cat "$state/operator.pid"))"
else
  nohup target/release/inference-operator --leader-election false --log-format text --listen 127.0.0.1:18081 \
    > "$state/operator.log" 2>&1 &
  echo $! > "$state/operator.pid"
fi

step "InferenceService demo/resnet50 (examples/resnet50-local.yaml)"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
sed "s|__MODEL_PATH__|$weights|" examples/resnet50-local.yaml | kubectl apply --server-side -f -
kubectl -n demo wait --for condition=Ready --timeout=300s inferenceservice/resnet50
kubectl -n demo get inferenceservice,deployment,service,pdb,pods -o wide

step "prediction through the Service's endpoints"
addr=$(kubectl -n demo get endpointslices -l kubernetes.io/service-name=resnet50 \
  -o jsonpath='{.items[0].endpoints[0].addresses[0]}')
port=$(kubectl -n demo get endpointslices -l kubernetes.io/service-name=resnet50 \
  -o jsonpath='{.items[0].ports[0].port}')
echo "POST http://$addr:$port/predict  (inference/tests/fixtures/images/cat.jpg)"
curl -sS --fail-with-body -F file=@inference/tests/fixtures/images/cat.jpg "http://$addr:$port/predict"
echo
echo
echo "(The demo serves generated random weights: the classes are meaningless. See README 'Model weights'.)"
echo "Try:    export KUBECONFIG=$KUBECONFIG; kubectl -n demo get infsvc"
echo "Stop:   make cluster-down"
