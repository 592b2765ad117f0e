"""`trellis install`'s manifests: valid Kubernetes objects, least privilege, deterministic."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from trellis.controlplane.api_kinds import KINDS
from trellis.controlplane.ca import to_pem
from trellis.controlplane.ca_files import create_root
from trellis.kube.install import CaFiles, render_manifests, render_yaml
from trellis.kube.install_settings import InstallError, InstallSettings
from trellis.kube.webhook_config import parse_webhook_service, webhook_dns_names

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
_KEY, _ROOT = create_root("cluster.local", NOW)
ROOT_PEM = to_pem(_ROOT)
KEY_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
CA_FILES = CaFiles(cert_pem=ROOT_PEM, key_pem=KEY_PEM, chain_pem=ROOT_PEM, root_pem=ROOT_PEM)
API_TOKEN = "k2bZ0n3yJ8xQ7pW5rT1vL9mC4dF6hS0a"
K8S_VERSIONS = ("1.29", "1.31", kubernetes_validate.latest_version())


def manifests(**settings: Any) -> list[dict[str, Any]]:
    return render_manifests(InstallSettings(ROOT_PEM, **settings), KINDS)


def one(found: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matching = [m for m in found if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(matching) == 1, (kind, name, [m["metadata"]["name"] for m in matching])
    return matching[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("revision", ["", "canary"])
def test_every_manifest_is_valid_for_kubernetes(version: str, revision: str) -> None:
    settings = InstallSettings(ROOT_PEM, revision=revision)
    found = render_manifests(settings, KINDS, CA_FILES, API_TOKEN)
    for manifest in found:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']}: {path}: {exc.message}")


def test_validation_catches_a_broken_manifest() -> None:
    deployment = one(manifests(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.29", strict=True)


def test_apply_order_and_contents() -> None:
    kinds = [m["kind"] for m in render_manifests(InstallSettings(ROOT_PEM), KINDS, CA_FILES)]
    assert kinds == [
        "Namespace",
        *["CustomResourceDefinition"] * len(KINDS),
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "Service",
        "Deployment",
        "MutatingWebhookConfiguration",
    ]
    assert "Secret" not in [m["kind"] for m in manifests()]


def test_cluster_role_grants_exactly_what_the_control_plane_needs() -> None:
    found = manifests()
    role = one(found, "ClusterRole", "trellis-control-plane")
    follow = ["list", "watch"]
    store = ["get", "list", "watch", "create", "update", "delete"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces", "pods", "services"], "verbs": follow},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": follow},
        {
            "apiGroups": ["networking.istio.io"],
            "resources": [
                "destinationrules",
                "serviceentries",
                "virtualservices",
                "workloadentries",
            ],
            "verbs": store,
        },
        {
            "apiGroups": ["security.istio.io"],
            "resources": ["authorizationpolicies", "peerauthentications"],
            "verbs": store,
        },
        {"apiGroups": ["telemetry.istio.io"], "resources": ["telemetries"], "verbs": store},
        # The leader's status writes: a merge patch of the status subresource, nothing more.
        {
            "apiGroups": ["networking.istio.io"],
            "resources": [
                "destinationrules/status",
                "serviceentries/status",
                "virtualservices/status",
                "workloadentries/status",
            ],
            "verbs": ["patch"],
        },
        {
            "apiGroups": ["security.istio.io"],
            "resources": ["authorizationpolicies/status", "peerauthentications/status"],
            "verbs": ["patch"],
        },
        {
            "apiGroups": ["telemetry.istio.io"],
            "resources": ["telemetries/status"],
            "verbs": ["patch"],
        },
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "verbs": ["list", "update"],
            "resourceNames": ["trellis-ca-root-cert"],
        },
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    ]
    text = yaml.safe_dump(role)
    for never in ("secrets", "'*'", "escalate", "bind", "impersonate"):
        assert never not in text
    # Patches and the status subresource go together, on the Trellis kinds only.
    for rule in role["rules"]:
        on_status = [resource.endswith("/status") for resource in rule["resources"]]
        assert ("patch" in rule["verbs"]) == any(on_status), rule
        if any(on_status):
            assert all(on_status) and rule["verbs"] == ["patch"], rule
            assert rule["apiGroups"][0].endswith(".istio.io"), rule
    # Deleting is granted on the Trellis kinds only, never on what discovery reads.
    for rule in role["rules"]:
        if "delete" in rule["verbs"]:
            assert rule["apiGroups"][0].endswith(".istio.io"), rule
    role_in_namespace = one(found, "Role")
    assert role_in_namespace["metadata"]["namespace"] == "trellis-system"
    assert role_in_namespace["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "update"],
            "resourceNames": ["trellis-leader"],
        },
    ]
    account = {"kind": "ServiceAccount", "name": "trellis", "namespace": "trellis-system"}
    for binding, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        bound = one(found, binding)
        assert bound["subjects"] == [account]
        assert bound["roleRef"]["kind"] == role_kind
        assert bound["roleRef"]["name"] == one(found, role_kind)["metadata"]["name"]
    assert one(found, "ServiceAccount")["metadata"]["name"] == "trellis"


def test_deployment_runs_the_control_plane_safely() -> None:
    deployment = one(manifests(image="registry.example/trellis:1", replicas=3), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == "trellis"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == spec["selector"]["matchLabels"]
    )
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/trellis:1"
    assert container["command"] == ["trellis"] and container["args"][0] == "control-plane"
    assert {p["containerPort"] for p in container["ports"]} == {15010, 15012, 15014, 15017, 8080}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http-api"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert set(container["resources"]) == {"requests", "limits"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    args = container["args"]
    ca_dir = next(path for path, name in mounts.items() if name == "cacerts")
    assert args[args.index("--ca-key") + 1].startswith(ca_dir + "/")
    assert mounts[args[args.index("--data-dir") + 1]] == "data"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cacerts"]["secret"]["secretName"] == "cacerts"


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


@pytest.mark.parametrize(
    ("settings", "lease", "webhook_service"),
    [
        ({}, "trellis-leader", "trellis-webhook.trellis-system"),
        ({"namespace": "mesh"}, "trellis-leader", "trellis-webhook.mesh"),
        ({"revision": "canary"}, "trellis-leader-canary", "trellis-webhook-canary.trellis-system"),
    ],
)
def test_deployment_runs_the_kubernetes_platform_of_this_installation(
    settings: dict[str, Any], lease: str, webhook_service: str
) -> None:
    found = manifests(**settings)
    (container,) = one(found, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert flag(args, "--platform") == "kubernetes"
    assert "--kubeconfig" not in args  # in-cluster: the pod's service account
    assert flag(args, "--ca-authentication") == "token-review"
    # The Lease the replicas elect with is the one the Role lets them renew.
    assert flag(args, "--leader-lease") == lease
    assert one(found, "Role")["rules"][1]["resourceNames"] == [lease]
    # The webhook's certificate names the Service the configuration sends the API server to.
    service = one(found, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"]
    assert flag(args, "--webhook-service") == f"{service['name']}.{service['namespace']}"
    assert flag(args, "--webhook-service") == webhook_service
    name, namespace = parse_webhook_service(webhook_service)
    assert f"{name}.{namespace}.svc" in webhook_dns_names(name, namespace)
    assert one(found, "Service", name)["metadata"]["namespace"] == namespace


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("trellis-webhook", "expected NAME.NAMESPACE"),
        ("Webhook.trellis-system", "service name 'Webhook'"),
        ("trellis-webhook.", "namespace ''"),
        ("trellis-webhook.trellis-system.svc", "namespace 'trellis-system.svc'"),
    ],
)
def test_a_bad_webhook_service_says_which_part(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_webhook_service(value)


def test_services_and_webhook_agree_with_the_injector() -> None:
    found = manifests()
    webhook_service = one(found, "Service", "trellis-webhook")
    assert webhook_service["spec"]["ports"] == [
        {"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"}
    ]
    selector = one(found, "Deployment")["spec"]["selector"]["matchLabels"]
    assert webhook_service["spec"]["selector"] == selector
    main = one(found, "Service", "trellis")
    assert {p["port"] for p in main["spec"]["ports"]} == {15010, 15012, 15014, 8080}
    assert "trellis-webhook.trellis-system.svc" in webhook_dns_names()
    configuration = one(found, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == "trellis-sidecar-injector"
    hooks = configuration["webhooks"]
    assert len(hooks) == 2
    for hook in hooks:
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] == "Fail"
        assert hook["clientConfig"]["service"] == {
            "name": "trellis-webhook",
            "namespace": "trellis-system",
            "path": "/inject",
            "port": 443,
        }
        assert base64.b64decode(hook["clientConfig"]["caBundle"]).decode() == ROOT_PEM
        assert hook["rules"][0]["operations"] == ["CREATE"]
        assert hook["rules"][0]["resources"] == ["pods"]
        assert {"key": "sidecar.trellis.io/inject", "operator": "NotIn", "values": ["false"]} in (
            hook["objectSelector"]["matchExpressions"]
        )
    selectors = [hook["namespaceSelector"]["matchExpressions"] for hook in hooks]
    assert {"key": "trellis-injection", "operator": "In", "values": ["enabled"]} in selectors[0]
    assert {"key": "istio-injection", "operator": "In", "values": ["enabled"]} in selectors[1]


def test_a_revision_gets_its_own_objects_and_namespace_label() -> None:
    default, canary = manifests(), manifests(revision="canary")
    crds = [m for m in default if m["kind"] == "CustomResourceDefinition"]
    assert crds == [m for m in canary if m["kind"] == "CustomResourceDefinition"]
    assert one(canary, "Deployment")["metadata"]["name"] == "trellis-canary"
    assert one(canary, "Service", "trellis-webhook-canary")
    assert one(canary, "ClusterRole")["metadata"]["name"] == "trellis-control-plane-canary"
    hooks = one(canary, "MutatingWebhookConfiguration")
    assert hooks["metadata"]["name"] == "trellis-sidecar-injector-canary"
    first = hooks["webhooks"][0]["namespaceSelector"]["matchExpressions"]
    assert {"key": "trellis.io/rev", "operator": "In", "values": ["canary"]} in first
    assert {"key": "trellis-injection", "operator": "DoesNotExist"} in first
    assert hooks["webhooks"][0]["clientConfig"]["service"]["name"] == "trellis-webhook-canary"
    selector = one(canary, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector != one(default, "Deployment")["spec"]["selector"]["matchLabels"]
    assert one(canary, "Role")["rules"][1]["resourceNames"] == ["trellis-leader-canary"]
    # The namespace is shared and must not carry a revision label (that would mean "inject").
    assert "trellis.io/rev" not in one(canary, "Namespace")["metadata"]["labels"]


def test_another_namespace_renames_cluster_scoped_objects() -> None:
    found = manifests(namespace="mesh")
    assert one(found, "Namespace")["metadata"]["name"] == "mesh"
    assert one(found, "ClusterRole")["metadata"]["name"] == "trellis-control-plane-mesh"
    namespaced = [m for m in found if "namespace" in m["metadata"]]
    assert {m["metadata"]["namespace"] for m in namespaced} == {"mesh"}


def test_ca_secret_holds_the_plug_in_ca_files() -> None:
    found = render_manifests(InstallSettings(ROOT_PEM), KINDS, CA_FILES)
    secret = one(found, "Secret", "cacerts")
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == {
        "ca-cert.pem": ROOT_PEM,
        "ca-key.pem": KEY_PEM,
        "cert-chain.pem": ROOT_PEM,
        "root-cert.pem": ROOT_PEM,
    }


def test_every_replica_takes_the_api_token_of_one_optional_secret() -> None:
    found = render_manifests(InstallSettings(ROOT_PEM), KINDS, None, API_TOKEN)
    secret = one(found, "Secret", "trellis-api-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == API_TOKEN
    pod = one(found, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "trellis-api-token")
    assert volume["secret"] == {
        "secretName": "trellis-api-token",
        "defaultMode": 0o440,
        "optional": True,
    }
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "trellis-api-token")
    args = container["args"]
    token_file = args[args.index("--api-token-file") + 1]
    assert token_file == f"{mount['mountPath']}/token"
    assert "Secret" not in [m["kind"] for m in manifests()]


def test_rendering_is_deterministic_and_round_trips() -> None:
    first = render_yaml(manifests(), "header line")
    assert first == render_yaml(manifests(), "header line")
    assert first.startswith("# header line\n---\n")
    assert list(yaml.safe_load_all(first)) == manifests()


@pytest.mark.parametrize(
    ("settings", "option"),
    [
        ({"namespace": "Trellis"}, "--namespace"),
        ({"replicas": 0}, "--replicas"),
        ({"replicas": 51}, "--replicas"),
        ({"revision": "v1.2"}, "--revision"),
        ({"image": "has space"}, "--image"),
        ({"image_pull_policy": "Sometimes"}, "--image-pull-policy"),
        ({"trust_domain": "Cluster.Local"}, "--trust-domain"),
    ],
)
def test_bad_settings_name_the_flag(settings: dict[str, Any], option: str) -> None:
    with pytest.raises(InstallError, match=f"^{option}: ") as caught:
        InstallSettings(ROOT_PEM, **settings)
    assert caught.value.option == option


def test_a_bundle_without_certificates_is_refused() -> None:
    with pytest.raises(InstallError, match="--ca-bundle: holds no PEM certificate"):
        InstallSettings("not a certificate")


def test_each_pod_serves_its_own_metrics_where_its_annotations_point() -> None:
    found = manifests()
    template = one(found, "Deployment")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(annotations["prometheus.io/port"]) == ports["http-monitoring"] == 15014
    assert flag(container["args"], "--monitoring-address") == "0.0.0.0:15014"
