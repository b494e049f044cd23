#!/usr/bin/env bash
# End to end on a real (kind) cluster: build both images, load them into kind,
# install the chart, run the tiny CPU example and wait for it to succeed.
#
#   scripts/e2e-kind.sh            # creates the cluster "rlhf-e2e", deletes it at the end
#   KEEP_CLUSTER=1 scripts/e2e-kind.sh
#
# Needs docker, kind, kubectl and helm on PATH. The tiny example uses CPU slots
# (`resources.local`), so no GPU is needed; the worker image is large (CUDA
# torch and vLLM) but runs on CPU too.
set -euo pipefail

CLUSTER=${CLUSTER:-rlhf-e2e}
TAG=${TAG:-e2e}
NAMESPACE=${NAMESPACE:-rlhf-e2e}
TIMEOUT=${TIMEOUT:-1800}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is not on PATH" >&2; exit 2; }
done

cleanup() {
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then kind delete cluster --name "$CLUSTER" || true; fi
}
trap cleanup EXIT

echo "== cluster"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s

echo "== images"
docker build -t "rlhf-operator:$TAG" -f Dockerfile .
docker build -t "rlhf-worker:$TAG" -f worker_image/Dockerfile .
kind load docker-image --name "$CLUSTER" "rlhf-operator:$TAG" "rlhf-worker:$TAG"

echo "== operator"
helm upgrade --install rlhf charts/rlhf-operator \
  --namespace rlhf-system --create-namespace \
  --set image.repository=rlhf-operator --set image.tag="$TAG" --set image.pullPolicy=Never \
  --set workerImage.repository=rlhf-worker --set workerImage.tag="$TAG" \
  --wait --timeout 5m

echo "== job"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
# The example's prompts live in the repository: ship them in a ConfigMap and
# mount it where the job file points (relative to the coordinator's directory).
kubectl -n "$NAMESPACE" create configmap tiny-prompts \
  --from-file=prompts.jsonl=examples/data/prompts.jsonl --dry-run=client -o yaml | kubectl apply -f -
python3 - "$NAMESPACE" <<'PY' | kubectl apply -f -
import sys, yaml
job = yaml.safe_load(open("examples/tiny-ppo.yaml"))
job["metadata"]["namespace"] = sys.argv[1]
job["spec"]["data"]["prompts"]["path"] = "/data/prompts.jsonl"
job["spec"]["training"]["iterations"] = 4
job["spec"]["checkpoint"] = {"path": "/ckpt/tiny-ppo", "interval": 2}
job["spec"]["resources"]["podTemplate"] = {"spec": {
    "containers": [{"volumeMounts": [{"name": "prompts", "mountPath": "/data"},
                                     {"name": "ckpt", "mountPath": "/ckpt"}]}],
    "volumes": [{"name": "prompts", "configMap": {"name": "tiny-prompts"}},
                {"name": "ckpt", "hostPath": {"path": "/tmp/rlhf-ckpt", "type": "DirectoryOrCreate"}}],
}}
print(yaml.safe_dump(job))
PY

echo "== waiting for tiny-ppo (timeout ${TIMEOUT}s)"
deadline=$((SECONDS + TIMEOUT))
while :; do
  phase=$(kubectl -n "$NAMESPACE" get rlhfjob tiny-ppo -o jsonpath='{.status.phase}' 2>/dev/null || true)
  echo "phase=${phase:-?} iteration=$(kubectl -n "$NAMESPACE" get rlhfjob tiny-ppo -o jsonpath='{.status.iteration}' 2>/dev/null || true)"
  case "$phase" in
    Succeeded) break ;;
    Failed) kubectl -n "$NAMESPACE" describe rlhfjob tiny-ppo; exit 1 ;;
  esac
  if [ $SECONDS -ge $deadline ]; then
    kubectl -n "$NAMESPACE" describe rlhfjob tiny-ppo
    kubectl -n "$NAMESPACE" logs tiny-ppo-coordinator --tail=100 || true
    exit 1
  fi
  sleep 10
done

kubectl -n "$NAMESPACE" get rlhfjob tiny-ppo -o wide
reward=$(kubectl -n "$NAMESPACE" get rlhfjob tiny-ppo -o jsonpath='{.status.metrics.rewardMean}')
[ -n "$reward" ] || { echo "e2e-kind: no reward in status" >&2; exit 1; }

echo "== operator metrics"
kubectl -n rlhf-system port-forward svc/rlhf-rlhf-operator-metrics 18080:8080 >/dev/null &
pf=$!
sleep 3
curl -sf localhost:18080/metrics | grep -E '^rlhf_operator_(jobs|reconcile_total)'
kill $pf
echo "e2e-kind: OK (reward mean $reward)"
