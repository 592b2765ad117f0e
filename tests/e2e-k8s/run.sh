#!/usr/bin/env bash
# Trellis on a real Kubernetes cluster (kind or k3d): injection, mTLS and routing.
#
# NOT run in CI (no cluster there). Run it yourself against a throw-away cluster:
#
#   kind create cluster --name trellis          # or: k3d cluster create trellis
#   tests/e2e-k8s/run.sh                         # builds and loads the image, installs, checks
#
# What it does: builds the Trellis image (Dockerfile given by $TRELLIS_DOCKERFILE,
# default tests/e2e-k8s/Dockerfile) and loads it into the cluster, `trellis install`s
# the control plane (2 replicas: leader election), labels a namespace for injection,
# deploys two sample apps (a client and an HTTP echo server), then checks that
#   1. both pods were injected (a trellis-proxy container) and are Ready,
#   2. the client reaches the server through the sidecars (curl via the Service),
#   3. the server's sidecar reports the request with connection_security_policy="mutual_tls"
#      and the client's SPIFFE identity in source_principal,
#   4. exactly one control-plane replica holds the trellis-leader Lease,
#   5. the leader copied the mesh root (the sidecars' trust for the control plane's TLS
#      port, 15012) into the apps' namespace as the trellis-ca-root-cert ConfigMap,
#   6. echo's readiness probe was rewritten through its sidecar (15020 app-health)
#      and the pod is Ready through it.
# Exits non-zero at the first failed check; `KEEP=1` leaves everything in place.
set -euo pipefail

CLUSTER_TOOL="${CLUSTER_TOOL:-kind}"          # kind | k3d
CLUSTER_NAME="${CLUSTER_NAME:-trellis}"
IMAGE="${TRELLIS_IMAGE:-trellis:e2e}"
NAMESPACE="${E2E_NAMESPACE:-trellis-e2e}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DOCKERFILE="${TRELLIS_DOCKERFILE:-$HERE/Dockerfile}"
WORK="$(mktemp -d)"
TRELLIS="${TRELLIS:-trellis}"

log() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    if [[ "${KEEP:-0}" != 1 ]]; then
        kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in kubectl docker "$CLUSTER_TOOL"; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
command -v "$TRELLIS" >/dev/null || fail "trellis is not on PATH (pip install -e . in $ROOT)"

log "building $IMAGE"
docker build -t "$IMAGE" -f "$DOCKERFILE" "$ROOT"
log "loading $IMAGE into $CLUSTER_TOOL cluster $CLUSTER_NAME"
case "$CLUSTER_TOOL" in
    kind) kind load docker-image "$IMAGE" --name "$CLUSTER_NAME" ;;
    k3d) k3d image import "$IMAGE" --cluster "$CLUSTER_NAME" ;;
    *) fail "CLUSTER_TOOL must be kind or k3d, not $CLUSTER_TOOL" ;;
esac

log "installing the control plane"
"$TRELLIS" install --data-dir "$WORK/mesh-ca" --image "$IMAGE" --image-pull-policy IfNotPresent
kubectl -n trellis-system rollout status deployment/trellis --timeout=180s

log "deploying the sample apps in $NAMESPACE (injection enabled)"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NAMESPACE" trellis-injection=enabled --overwrite
kubectl -n "$NAMESPACE" apply -f "$HERE/apps.yaml"
kubectl -n "$NAMESPACE" rollout status deployment/echo --timeout=180s
kubectl -n "$NAMESPACE" rollout status deployment/client --timeout=180s

log "check 1: injection"
for app in echo client; do
    containers="$(kubectl -n "$NAMESPACE" get pod -l "app=$app" \
        -o jsonpath='{.items[0].spec.initContainers[*].name} {.items[0].spec.containers[*].name}')"
    [[ "$containers" == *trellis-proxy* ]] || fail "$app was not injected: $containers"
done

log "check 2: routing through the sidecars"
client_pod="$(kubectl -n "$NAMESPACE" get pod -l app=client -o jsonpath='{.items[0].metadata.name}')"
ok=0
for _ in $(seq 1 30); do
    if kubectl -n "$NAMESPACE" exec "$client_pod" -c client -- \
        curl -fsS "http://echo.$NAMESPACE.svc.cluster.local:8080/hello" >"$WORK/answer" 2>/dev/null; then
        ok=1
        break
    fi
    sleep 2
done
[[ "$ok" == 1 ]] || fail "the client cannot reach echo through the mesh"

log "check 3: mutual TLS, seen by the server's sidecar"
echo_pod="$(kubectl -n "$NAMESPACE" get pod -l app=echo -o jsonpath='{.items[0].metadata.name}')"
kubectl get --raw "/api/v1/namespaces/$NAMESPACE/pods/$echo_pod:15020/proxy/stats/prometheus" \
    >"$WORK/metrics" || fail "cannot read the echo sidecar's metrics"
grep -E '^istio_requests_total\{[^}]*reporter="destination"' "$WORK/metrics" \
    | grep 'connection_security_policy="mutual_tls"' \
    | grep -q "source_principal=\"spiffe://cluster.local/ns/$NAMESPACE/sa/client\"" \
    || fail "no mutual_tls request from the client's identity in the echo sidecar's metrics"

log "check 4: one leader"
holder="$(kubectl -n trellis-system get lease trellis-leader -o jsonpath='{.spec.holderIdentity}')"
[[ -n "$holder" ]] || fail "nobody holds the trellis-leader Lease"
kubectl -n trellis-system get pod "$holder" >/dev/null || fail "the leader $holder is not a pod"

log "check 5: the mesh root in the apps' namespace"
root="$(kubectl -n "$NAMESPACE" get configmap trellis-ca-root-cert -o jsonpath='{.data.root-cert\.pem}')"
[[ "$root" == *"BEGIN CERTIFICATE"* ]] || fail "no trellis-ca-root-cert ConfigMap in $NAMESPACE"
[[ "$(cat "$WORK/mesh-ca/ca/ca-cert.pem")" == *"$root"* ]] \
    || fail "the ConfigMap's root is not the CA's ($WORK/mesh-ca/ca/ca-cert.pem)"

log "check 6: the application's probe goes through the sidecar"
probe="$(kubectl -n "$NAMESPACE" get pod "$echo_pod" \
    -o jsonpath='{.spec.containers[?(@.name=="echo")].readinessProbe.httpGet.port} {.spec.containers[?(@.name=="echo")].readinessProbe.httpGet.path}')"
[[ "$probe" == "15020 /app-health/echo/readyz" ]] || fail "echo's probe was not rewritten: $probe"
ready="$(kubectl -n "$NAMESPACE" get pod "$echo_pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
[[ "$ready" == True ]] || fail "echo is not Ready through its rewritten probe"

log "all checks passed"
