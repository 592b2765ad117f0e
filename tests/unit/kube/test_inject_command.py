"""`trellis inject -f` on a multi-document manifest, run as the user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from trellis.kube.settings import INIT_NAME, PROXY_NAME, STATUS_ANNOTATION

from .helpers import DATA, validate

WORKLOADS = DATA / "workloads.yaml"


def trellis(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trellis.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def inject(*args: str, stdin: str | None = None) -> list[dict[str, Any]]:
    done = trellis("inject", *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    kind = document["kind"]
    if kind == "Pod":
        return document
    if kind == "CronJob":
        template: dict[str, Any] = document["spec"]["jobTemplate"]["spec"]["template"]
        return template
    template = document["spec"]["template"]
    return template


def test_every_workload_kind_is_injected_and_valid() -> None:
    original = list(yaml.safe_load_all(WORKLOADS.read_text()))
    injected = inject("-f", str(WORKLOADS))
    assert [d["kind"] for d in injected] == [d["kind"] for d in original]
    for before, after in zip(original, injected, strict=True):
        validate(after, "1.29")
        name = f"{after['kind']} {after['metadata']['name']}"
        if after["kind"] == "Service" or after["metadata"]["name"] == "legacy":
            assert after == before, f"{name} changed"
            continue
        pod = pod_spec(after)
        names = [c["name"] for c in pod["spec"]["initContainers"]]
        assert names == [INIT_NAME, PROXY_NAME], name
        assert STATUS_ANNOTATION in pod["metadata"]["annotations"], name
        proxy = pod["spec"]["initContainers"][1]
        assert f"WORKLOAD_NAME={after['metadata']['name']}" in proxy["args"], name


def test_the_statefulset_keeps_its_inbound_exclusion() -> None:
    injected = {d["metadata"]["name"]: d for d in inject("-f", str(WORKLOADS))}
    init = pod_spec(injected["cart-db"])["spec"]["initContainers"][0]
    ports = init["args"][init["args"].index("--exclude-inbound-ports") + 1]
    assert ports.split(",")[-1] == "6379"


def test_reinjecting_the_output_changes_nothing() -> None:
    once = trellis("inject", "-f", str(WORKLOADS)).stdout
    assert trellis("inject", "-f", "-", stdin=once).stdout == once


def test_regular_sidecars_for_older_clusters(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    done = trellis(
        "inject", "-f", str(WORKLOADS), "-o", str(out), "--no-native-sidecar",
        "--image", "registry.example.com/trellis:0.1.0", "--control-plane", "cp.mesh:15010",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for document in yaml.safe_load_all(out.read_text()):
        validate(document, "1.25")
        if document["kind"] == "Deployment":
            containers = pod_spec(document)["spec"]["containers"]
            assert [c["name"] for c in containers] == ["web", PROXY_NAME]
            assert containers[1]["image"] == "registry.example.com/trellis:0.1.0"
            assert containers[1]["args"][:3] == ["proxy", "--xds", "cp.mesh:15010"]


def test_bad_input_is_named(tmp_path: Path) -> None:
    done = trellis("inject", "-f", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "-f" in done.stderr and "missing.yaml" in done.stderr
    done = trellis("inject", "-f", "-", "--control-plane", "nowhere", stdin="")
    assert done.returncode == 2 and "--control-plane" in done.stderr
    done = trellis("inject", "-f", "-", stdin="kind: Pod\nmetadata: [\n")
    assert done.returncode == 1 and "not YAML" in done.stderr
    bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n"
    bad += "    traffic.sidecar.istio.io/excludeInboundPorts: web\nspec:\n  containers: []\n"
    done = trellis("inject", "-f", "-", stdin=bad)
    assert done.returncode == 1
    assert "Pod p: annotation traffic.sidecar.istio.io/excludeInboundPorts: 'web'" in done.stderr


def test_iptables_dry_run_prints_the_capture_rules() -> None:
    done = trellis(
        "iptables", "--dry-run", "--exclude-outbound-ports", "5432",
        "--exclude-outbound-ip-ranges", "169.254.169.254/32",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in lines
    assert "-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in lines
    assert "-A TRELLIS_INBOUND -p tcp --dport 15021 -j RETURN" in lines
    assert "-A TRELLIS_OUTPUT -p tcp --dport 5432 -j RETURN" in lines
    assert "-A TRELLIS_OUTPUT -d 169.254.169.254/32 -j RETURN" in lines
    assert lines.index("-A TRELLIS_OUTPUT -d 169.254.169.254/32 -j RETURN") < lines.index(
        "-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT"
    )
    done = trellis("iptables", "--dry-run", "--exclude-outbound-ip-ranges", "10.0.0/40")
    assert done.returncode == 2 and "--exclude-outbound-ip-ranges" in done.stderr
