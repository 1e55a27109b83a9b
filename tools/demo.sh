#!/usr/bin/env bash
# make demo: the whole system the way users run it, on this machine: the control plane and a
# real node (kubelet, containerd, kube-proxy, CoreDNS, metrics-server; hack/real-node.sh), the
# operator installed by its Helm chart (a pod under its own ServiceAccount), an InferenceService
# of the demo image, and predictions: from this machine to the Service's ClusterIP (kube-proxy)
# and from a client pod through the Service's DNS name (CoreDNS -> ClusterIP -> a server pod).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
step() { printf '\n==> %s\n' "$*"; }
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
repo=ghcr.io/inference-server
images="$repo/inference-server:$version $repo/inference-operator:$version $repo/resnet50-demo:$version"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/hack/containers/containers.conf}

step "control plane + real node (hack/cluster.sh up with CLUSTER_NODE=real; the first run builds it from Go modules)"
CLUSTER_NODE=real REAL_NODE_IMAGES="$images" hack/cluster.sh up
eval "$(CLUSTER_NODE=real hack/cluster.sh env)"
bin=$(hack/build-control-plane.sh --print-bin-dir)
kubectl() { "$bin/kubectl" "$@"; }
kubectl get nodes -o wide

step "operator: helm install charts/inference-operator (in-cluster, its own ServiceAccount)"
"$bin/helm" upgrade --install inference-operator charts/inference-operator \
  --namespace inference-system --create-namespace --wait --timeout 5m
kubectl -n inference-system get pods -o wide

step "InferenceService demo/resnet50 (examples/resnet50-demo.yaml)"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
sed "s|ghcr.io/inference-server/resnet50-demo:[^ ]*|$repo/resnet50-demo:$version|" examples/resnet50-demo.yaml |
  kubectl apply --server-side -f -
kubectl -n demo wait --for condition=Ready --timeout=300s inferenceservice/resnet50
kubectl -n demo get inferenceservice,deployment,service,pdb,pods -o wide

photo=inference/tests/fixtures/images/cat.jpg
step "POST $photo to the Service's ClusterIP from this machine (kube-proxy in the node's namespace)"
ip=$(kubectl -n demo get service resnet50 -o jsonpath='{.spec.clusterIP}')
echo "POST http://$ip/predict"
curl -sS --fail-with-body -H 'Content-Type: image/jpeg' --data-binary "@$photo" "http://$ip/predict"
echo

step "a client pod asks http://resnet50.demo.svc.cluster.local (CoreDNS) for the same photo's top 5"
# busybox's wget posts text only (it stops at the first NUL byte): the photo goes base64 in an
# Open Inference Protocol v2 request, with Triton's classification extension.
client_image=$(hack/build-node-addons.sh | grep /busybox:)
mkdir -p "$root/.state"
printf '{"inputs":[{"name":"images","datatype":"BYTES","shape":[1],"data":["%s"]}],"outputs":[{"name":"logits","parameters":{"classification":5}}]}' \
  "$(base64 -w0 "$photo")" >"$root/.state/demo-request.json"
kubectl -n demo create configmap photo --from-file=cat.json="$root/.state/demo-request.json" \
  --dry-run=client -o yaml | kubectl apply --server-side --force-conflicts -f - >/dev/null
kubectl -n demo delete pod client --ignore-not-found --wait >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: client
      image: $client_image
      imagePullPolicy: Never
      command: [/bin/busybox, wget, -q, -O, -, --header, "Content-Type: application/json",
                --post-file, /photo/cat.json, "http://resnet50.demo.svc.cluster.local/v2/models/resnet50/infer"]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: photo, mountPath: /photo}]
  volumes: [{name: photo, configMap: {name: photo}}]
EOF
kubectl -n demo wait --for=jsonpath='{.status.phase}'=Succeeded --timeout=120s pod/client >/dev/null ||
  { kubectl -n demo describe pod client; kubectl -n demo logs client; exit 1; }
kubectl -n demo logs client
echo

step "kubectl port-forward service/resnet50 18080:80 from this machine (kube-apiserver -> kubelet -> containerd)"
kubectl -n demo port-forward service/resnet50 18080:80 >"$root/.state/demo-port-forward.log" 2>&1 &
pf=$!
trap 'kill $pf 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18080/ready && break; sleep 0.1; done
echo "POST http://127.0.0.1:18080/predict"
curl -sS --fail-with-body -H 'Content-Type: image/jpeg' --data-binary "@$photo" http://127.0.0.1:18080/predict
echo
echo
echo "(The demo serves generated random weights: the classes are meaningless. See README 'Model weights'.)"
echo "Look around:  export KUBECONFIG=$KUBECONFIG"
echo "              $bin/kubectl get infsvc,pods,hpa -A; $bin/kubectl top pods -A"
echo "Tear down:    make cluster-down"
