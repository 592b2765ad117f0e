"""The rendered Deployment's command really starts a Kubernetes-platform control plane, with
no more permissions than the rendered RBAC grants, and the rendered
MutatingWebhookConfiguration's caBundle verifies its webhook under the Service's name.

The container's arguments and environment are used as they are, with only what
the pod provides replaced: the `cacerts` Secret's mount becomes a directory
holding the rendered Secret's files, the emptyDir data directory a temporary
one, 0.0.0.0 with Kubernetes' fixed ports becomes 127.0.0.1 with free ones,
the downward API's POD_NAME/POD_NAMESPACE are a pod name and the Deployment's
namespace, and the in-cluster service account is a KUBECONFIG pointing at the
stand-in API server (`kube_standin`, a test double). That stand-in answers
403 to every request the rendered ClusterRole and Role do not allow the
control plane's ServiceAccount (`kube_rbac`), so a missing rule fails here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
import yaml
from click.testing import CliRunner

from trellis.cli.main import cli
from trellis.kube.webhook_config import webhook_dns_names

from .bootstrap import free_port
from .kube_rbac import RbacAuthorizer
from .kube_standin import CONFIG_MAPS, LEASES, Access, ApiStatusError, KubeStandIn, StandInServer

T = TypeVar("T")
POD_NAME = "trellis-5d8f7c9b4-x2k7q"
ROOT_CERT = "trellis-ca-root-cert"
ISTIO = "networking.istio.io"
SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: billing, namespace: shop}
spec:
  hosts: [billing.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: 192.0.2.10}]
"""


def rendered(data_dir: Path, *flags: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        cli, ["install", "--render", "--data-dir", str(data_dir), "--include-ca-secret", *flags]
    )
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(result.stdout))


def one(found: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (manifest,) = (m for m in found if m["kind"] == kind and name in (None, m["metadata"]["name"]))
    return manifest


def secret_files(found: list[dict[str, Any]], name: str, directory: Path) -> Path:
    """The rendered Secret `name` as the kubelet mounts it: a file per key in `directory`."""
    directory.mkdir()
    for key, value in one(found, "Secret", name)["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def pod_args(found: list[dict[str, Any]], root: Path) -> tuple[list[str], dict[str, int]]:
    """The container's args as this machine can run them, and the ports chosen."""
    pod = one(found, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    cacerts = secret_files(found, "cacerts", root / "cacerts")
    api_token = secret_files(found, "trellis-api-token", root / "api-token")
    ports = {p["name"]: free_port() for p in container["ports"]}
    declared = {str(p["containerPort"]): ports[p["name"]] for p in container["ports"]}

    def local(arg: str) -> str:
        path = arg.replace(mounts["cacerts"], str(cacerts))
        path = path.replace(mounts["trellis-api-token"], str(api_token))
        path = path.replace(mounts["data"], str(root / "data"))
        if path.startswith("0.0.0.0:"):
            return f"127.0.0.1:{declared[path.split(':')[1]]}"
        if path == "0.0.0.0":
            return "127.0.0.1"
        return str(declared.get(path, path))

    assert container["command"] == ["trellis"]
    return [local(arg) for arg in container["args"]], ports


def pod_env(found: list[dict[str, Any]], kubeconfig: Path) -> dict[str, str]:
    """The container's env with the downward API resolved, and the cluster's credentials."""
    deployment = one(found, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    fields = {"metadata.name": POD_NAME, "metadata.namespace": deployment["metadata"]["namespace"]}
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    for variable in container["env"]:
        env[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "trellis.cli.main", *args],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@contextlib.contextmanager
def api_server(authorizer: RbacAuthorizer) -> Iterator[StandInServer]:
    standin = KubeStandIn((LEASES, CONFIG_MAPS), bookmark_interval=0.5)
    standin.authorize = authorizer.allows
    server = StandInServer(standin).start()
    try:
        yield server
    finally:
        server.stop()


def until_ok(get: Callable[[], httpx.Response], what: str, log: Path) -> httpx.Response:
    return until(lambda: _ok(get), what, log)


def _ok(get: Callable[[], httpx.Response]) -> httpx.Response | None:
    try:
        response = get()
    except httpx.TransportError:
        return None
    return response if response.status_code == 200 else None


def until(probe: Callable[[], T | None], what: str, log: Path, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f}s\n{log.read_text()[-3000:]}")


def stored(server: StandInServer, plural: str, namespace: str, name: str, group: str) -> Any:
    """The object in the stand-in, or None."""

    def read() -> Any:
        try:
            return server.standin.get_object(plural, namespace, name, group)
        except ApiStatusError:
            return None

    return server.call(read)


def add_namespaces(standin: KubeStandIn, *names: str) -> None:
    for name in names:
        standin.put("namespaces", {"metadata": {"name": name}})


def inject_flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def certificate_names(port: int, hostname: str, bundle: str) -> set[str]:
    """The DNS SANs of the certificate on `port`, verified for `hostname` against `bundle`."""
    trust = ssl.create_default_context(cadata=bundle)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        trust.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        certificate = tls.getpeercert()
    assert certificate is not None
    names = cast(tuple[tuple[str, str], ...], certificate.get("subjectAltName", ()))
    return {value for key, value in names if key == "DNS"}


@pytest.mark.parametrize(
    "flags", [(), ("--namespace", "mesh", "--revision", "canary")], ids=["default", "revision"]
)
def test_the_deployment_runs_the_platform_the_rbac_and_webhook_configuration_allow(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    found = rendered(tmp_path / "install", *flags)
    args, ports = pod_args(found, tmp_path)
    account = one(found, "ServiceAccount")["metadata"]
    namespace = account["namespace"]
    authorizer = RbacAuthorizer.for_account(found, namespace, account["name"])
    # The authorizer can say no: the stand-in would refuse what the rules leave out.
    assert not authorizer.allows(Access("get", "", "secrets", namespace, "cacerts"))
    assert not authorizer.allows(Access("patch", ISTIO, "serviceentries", "shop", "billing"))
    lease = one(found, "Role")["rules"][1]["resourceNames"][0]
    assert not authorizer.allows(Access("update", "coordination.k8s.io", "leases", namespace, "x"))

    configuration = one(found, "MutatingWebhookConfiguration")
    bundle = base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"]).decode()
    service = configuration["webhooks"][0]["clientConfig"]["service"]
    hostname = f"{service['name']}.{service['namespace']}.svc"
    log = tmp_path / "control-plane.log"
    with api_server(authorizer) as server:
        server.call(lambda: add_namespaces(server.standin, "shop", "kube-system"))
        env = pod_env(found, server.kubeconfig(tmp_path / "kubeconfig"))
        with running(args, env, log) as process:
            api = f"http://127.0.0.1:{ports['http-api']}"
            until_ok(lambda: httpx.get(f"{api}/healthz", timeout=2), "the API's /healthz", log)

            # Its own metrics, where the pod's scrape annotations send Prometheus.
            scrape = f"http://127.0.0.1:{ports['http-monitoring']}/metrics"
            metrics = until_ok(lambda: httpx.get(scrape, timeout=2), "/metrics", log).text
            assert "citadel_server_root_cert_expiry_timestamp " in metrics
            assert "istiod_uptime_seconds " in metrics

            # As the API server calls the webhook: trusting only the caBundle, checking the
            # certificate for the Service's name; the certificate names that Service only.
            trust = ssl.create_default_context(cadata=bundle)
            with httpx.Client(verify=trust, timeout=5) as client:
                webhook = f"https://127.0.0.1:{ports['https-webhook']}/healthz"
                until_ok(
                    lambda: client.get(webhook, extensions={"sni_hostname": hostname}),
                    "the webhook",
                    log,
                )
            names = certificate_names(ports["https-webhook"], hostname, bundle)
            assert names == set(webhook_dns_names(service["name"], service["namespace"]))

            # The replicas' Lease, held by this pod, in the control plane's namespace.
            held = until(
                lambda: stored(server, "leases", namespace, lease, "coordination.k8s.io"),
                "the leader Lease",
                log,
            )
            assert held["spec"]["holderIdentity"] == POD_NAME

            # The leader keeps the mesh root in every namespace but Kubernetes' own, for
            # the injected sidecars, which dial the TLS port and check its name.
            config_map = until(
                lambda: stored(server, "configmaps", "shop", ROOT_CERT, ""), "the root", log
            )
            assert config_map["data"]["root-cert.pem"].strip() == bundle.strip()
            assert stored(server, "configmaps", "kube-system", ROOT_CERT, "") is None
            dialed = inject_flag(args, "--inject-control-plane")
            host, _, port = dialed.rpartition(":")
            assert port == "15012"
            names = certificate_names(ports["grpc-xds-tls"], host, bundle)
            assert host in names

            # Config written through the REST API lands in the CRDs: create, update, delete.
            def apply(text: str) -> None:
                reply = httpx.post(
                    f"{api}/api/v1/apply",
                    content=text,
                    headers={"content-type": "application/yaml"},
                    timeout=10,
                )
                assert reply.status_code == 200, reply.text

            # The REST API takes the token of the trellis-api-token Secret, which every
            # replica mounts: callers that are not on the pod's loopback need it.
            token = (tmp_path / "api-token" / "token").read_text()
            remote = {"host": f"trellis.{namespace}.svc:8080"}
            kinds = f"{api}/apis/{ISTIO}/v1/namespaces/shop/serviceentries"
            refused = httpx.get(kinds, headers={**remote, "authorization": "Bearer " + "x" * 43})
            assert refused.status_code in (401, 403), refused.text
            bearer = {**remote, "authorization": f"Bearer {token}"}
            assert httpx.get(kinds, headers=bearer, timeout=10).status_code == 200

            apply(SERVICE_ENTRY)
            created = stored(server, "serviceentries", "shop", "billing", ISTIO)
            assert created["spec"]["hosts"] == ["billing.example.com"]
            apply(SERVICE_ENTRY.replace("billing.example.com", "billing.example.org"))
            updated = stored(server, "serviceentries", "shop", "billing", ISTIO)
            assert updated["spec"]["hosts"] == ["billing.example.org"]
            path = f"{api}/apis/{ISTIO}/v1/namespaces/shop/serviceentries/billing"
            assert httpx.delete(path, timeout=10).status_code == 200
            assert stored(server, "serviceentries", "shop", "billing", ISTIO) is None
            assert process.poll() is None, log.read_text()[-3000:]

        accesses = set(server.call(lambda: list(server.standin.accesses)))
        denied = server.call(lambda: list(server.standin.denied))
    assert denied == [], log.read_text()[-3000:]
    # It followed discovery's types and every CRD: a list, then a watch, cluster-wide.
    followed = [
        ("", "namespaces"),
        ("", "services"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        *(
            (m["spec"]["group"], m["spec"]["names"]["plural"])
            for m in found
            if m["kind"] == "CustomResourceDefinition"
        ),
    ]
    for group, plural in followed:
        for verb in ("list", "watch"):
            assert Access(verb, group, plural) in accesses, (verb, group, plural)
