"""The Kubernetes manifests in deploy/kubernetes: lint, API schemas, and the rules the proxy
relies on (hardening, probes, native sidecar, bind policy, grace periods, setting names).

Not end-to-end: no cluster. yamllint and kubernetes-validate (offline schemas) are skipped
with a message when they are not installed; the semantic checks need only PyYAML.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests")

from proxy.errors import ConfigError  # noqa: E402
from proxy.settings import env_names, load_settings  # noqa: E402
from tests.support.processes import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
PATTERNS = ("sidecar", "gateway")
EXAMPLE = "secret.example.yaml"  # documents a Secret; never applied by a kustomization
# Each pattern's oldest Kubernetes (native sidecars: 1.29; the gateway's preStop sleep: 1.30),
# and the newest one kubernetes-validate bundles.
MINIMUM_KUBERNETES = {"sidecar": "1.29.0", "gateway": "1.30.0"}
PROXY_PORT = 8787
PREFIXES = ("FOUNDRY_PROXY_", "AZURE_")
PLACEHOLDER_GUID = "00000000-0000-0000-0000-000000000000"
# What the workload identity webhook injects into every container it mutates.
WEBHOOK_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE")

# The repository's yamllint settings: the file `yamllint deploy/` reads when run from the root.
YAMLLINT_CONFIG = ROOT / ".yamllint.yaml"


def _yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def _manifest_files() -> list[Path]:
    return [p for p in _yaml_files() if p.name != "kustomization.yaml"]


def _load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _resources(pattern: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for every manifest of one pattern directory."""
    out = {}
    for path in sorted((DEPLOY / pattern).glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in _load(path):
                out[doc["kind"], doc["metadata"]["name"]] = doc
    return out


def _workloads(pattern: str) -> Iterator[dict[str, Any]]:
    for (kind, _), doc in _resources(pattern).items():
        if kind == "Deployment":
            yield doc


def _is_proxy(container: dict[str, Any]) -> bool:
    repository = container["image"].rsplit(":", 1)[0]
    return repository.rsplit("/", 1)[-1] == "foundry-proxy"


def _proxy_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    found = [c for c in pod.get("initContainers", []) + pod["containers"] if _is_proxy(c)]
    assert found, "no foundry-proxy container in this pod"
    return found


def _env(container: dict[str, Any], pattern: str) -> dict[str, str | None]:
    """The container's environment: ConfigMaps named in envFrom, then env (which wins).
    Values from valueFrom are None."""
    out: dict[str, str | None] = {}
    resources = _resources(pattern)
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "only ConfigMaps of this directory are expected here"
        configmap = resources["ConfigMap", source["configMapRef"]["name"]]
        out |= {k: str(v) for k, v in configmap.get("data", {}).items()}
    for item in container.get("env", []):
        out[item["name"]] = str(item["value"]) if "value" in item else None
    return out


def _documented_names() -> set[str]:
    text = (ROOT / "config.example.env").read_text(encoding="utf-8")
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number (bytes, or cores for CPU)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"unexpected quantity {value!r}"
    return float(match[1]) * units.get(match[2], 1)


def _probe_target(probe: dict[str, Any]) -> str:
    """The path a probe asks for: httpGet's path, or the exec probe's last argument."""
    if "httpGet" in probe:
        return str(probe["httpGet"]["path"])
    return str(probe["exec"]["command"][-1])


# --- lint and schemas ---------------------------------------------------------------------


def test_the_manifests_exist() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in _yaml_files()}
    for pattern in PATTERNS:
        assert {f"{pattern}/kustomization.yaml", f"{pattern}/deployment.yaml"} <= names
    assert (DEPLOY / "README.md").is_file()


def test_yamllint() -> None:
    pytest.importorskip("yamllint", reason="pip install yamllint to lint the manifests")
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    problems = []
    for path in _yaml_files():
        text = path.read_text(encoding="utf-8")
        for p in linter.run(text, config, str(path)):
            # Strict: warnings count as much as errors.
            problems.append(f"{path.relative_to(ROOT)}:{p.line}:{p.column} {p.desc} ({p.rule})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
@pytest.mark.parametrize("version", ["minimum", "latest"])
def test_schema(path: Path, version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="pip install kubernetes-validate to check the manifests against the API schemas",
    )
    if version == "latest":
        version = kubernetes_validate.latest_version()
    else:
        version = MINIMUM_KUBERNETES[path.relative_to(DEPLOY).parts[0]]
    for doc in _load(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_kustomization_lists_every_manifest_but_the_example(pattern: str) -> None:
    directory = DEPLOY / pattern
    (kustomization,) = _load(directory / "kustomization.yaml")
    listed = kustomization["resources"]
    present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml", EXAMPLE}
    assert sorted(listed) == sorted(present)
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_kustomize_builds(pattern: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not checked")
    built = run(
        [kubectl, "kustomize", str(DEPLOY / pattern)],
        timeout=120,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert built.returncode == 0, built.stderr
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(built.stdout)}
    expected = set(_resources(pattern))
    if pattern == "gateway":
        expected.discard(("Secret", "foundry-proxy-api-keys"))
    assert rendered == expected


# --- the proxy container ------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_proxy_containers_are_hardened(pattern: str) -> None:
    for workload in _workloads(pattern):
        pod = workload["spec"]["template"]["spec"]
        for container in _proxy_containers(pod):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] == 65532
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context.get("privileged", False) is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "add" not in context["capabilities"]
            assert context["seccompProfile"]["type"] == "RuntimeDefault"
            _, _, tag = container["image"].rpartition(":")
            assert tag not in ("", "latest"), "pin the image's version"
            assert "/" not in tag


@pytest.mark.parametrize("pattern", PATTERNS)
def test_proxy_resources_fit_the_benchmarks(pattern: str) -> None:
    # BENCHMARKS.md: ~60 MB idle, ~90 MB with 1,000 open streams.
    for workload in _workloads(pattern):
        for container in _proxy_containers(workload["spec"]["template"]["spec"]):
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert _quantity(requests["cpu"]) >= 0.05
            assert _quantity(requests["memory"]) >= 64 * 2**20
            assert _quantity(limits["memory"]) >= max(128 * 2**20, _quantity(requests["memory"]))
            if "cpu" in limits:  # generous or none: throttling delays every streamed token
                assert _quantity(limits["cpu"]) >= 1


@pytest.mark.parametrize("pattern", PATTERNS)
def test_probes(pattern: str) -> None:
    for workload in _workloads(pattern):
        for container in _proxy_containers(workload["spec"]["template"]["spec"]):
            assert _probe_target(container["livenessProbe"]) == "/healthz"
            assert _probe_target(container["readinessProbe"]) == "/readyz"
            assert _probe_target(container["startupProbe"]) == "/readyz"
            env = _env(container, pattern)
            probes = [container[k] for k in ("livenessProbe", "readinessProbe", "startupProbe")]
            if _is_loopback(env.get("FOUNDRY_PROXY_HOST") or "127.0.0.1"):
                # The kubelet probes from the node, which cannot reach the pod's 127.0.0.1.
                for probe in probes:
                    assert set(probe) & {"httpGet", "tcpSocket", "grpc"} == set()
                    script = probe["exec"]["command"][-2]
                    assert f'("127.0.0.1", {env["FOUNDRY_PROXY_PORT"]})' in script
            else:
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                for probe in probes:
                    port = probe["httpGet"]["port"]
                    assert ports.get(port, port) == int(env["FOUNDRY_PROXY_PORT"] or 0)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_grace_period_outlasts_the_drain(pattern: str) -> None:
    for workload in _workloads(pattern):
        pod = workload["spec"]["template"]["spec"]
        for container in _proxy_containers(pod):
            grace = float(_env(container, pattern)["FOUNDRY_PROXY_SHUTDOWN_GRACE"] or "30")
            pre_stop = container.get("lifecycle", {}).get("preStop", {})
            sleep = pre_stop.get("sleep", {}).get("seconds", 0)
            # The preStop hook runs inside the grace period, before SIGTERM.
            assert pod["terminationGracePeriodSeconds"] >= sleep + grace + 1


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pod_settings(pattern: str) -> None:
    resources = _resources(pattern)
    for workload in _workloads(pattern):
        template = workload["spec"]["template"]
        pod = template["spec"]
        # A Service named foundry-proxy would inject FOUNDRY_PROXY_PORT=tcp://...
        assert pod["enableServiceLinks"] is False
        assert pod["automountServiceAccountToken"] is False
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        account = resources["ServiceAccount", pod["serviceAccountName"]]
        client_id = account["metadata"]["annotations"]["azure.workload.identity/client-id"]
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", client_id)
        # Group access for the key file and the projected token (non-root containers).
        assert pod["securityContext"]["fsGroup"] == 65532
        assert workload["spec"]["selector"]["matchLabels"].items() <= (
            template["metadata"]["labels"].items()
        )
        for container in _proxy_containers(pod):
            env = _env(container, pattern)
            assert env["FOUNDRY_PROXY_CREDENTIAL"] == "workload-identity"
            assert not set(WEBHOOK_ENV) & set(env), "the webhook sets these"
            assert int(env["FOUNDRY_PROXY_PORT"] or 0) == PROXY_PORT
            assert {p["containerPort"] for p in container["ports"]} == {PROXY_PORT}


def test_every_setting_name_exists() -> None:
    """Every FOUNDRY_PROXY_* / AZURE_* name in the manifests is documented and read."""
    documented, read = _documented_names(), set(env_names().values())
    used = set()
    for pattern in PATTERNS:
        for workload in _workloads(pattern):
            pod = workload["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                used |= {n for n in _env(container, pattern) if n.startswith(PREFIXES)}
    assert used
    assert used - documented == set(), "not in config.example.env"
    assert used - read == set(), "not read by proxy/settings.py"


# --- the two patterns ---------------------------------------------------------------------


def test_sidecar_is_a_native_sidecar() -> None:
    (workload,) = _workloads("sidecar")
    template = workload["spec"]["template"]
    pod = template["spec"]
    assert not any(_is_proxy(c) for c in pod["containers"])
    (proxy,) = [c for c in pod["initContainers"] if _is_proxy(c)]
    assert proxy["restartPolicy"] == "Always"
    env = _env(proxy, "sidecar")
    assert env["FOUNDRY_PROXY_HOST"] == "127.0.0.1"
    assert "FOUNDRY_PROXY_API_KEYS_FILE" not in env
    # The app reaches the proxy on loopback and holds no credential: the webhook skips it.
    skipped = set(
        template["metadata"]["annotations"]["azure.workload.identity/skip-containers"].split(";")
    )
    for app in pod["containers"]:
        app_env = _env(app, "sidecar")
        assert app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{PROXY_PORT}/v1"
        assert app["name"] in skipped
        assert app["securityContext"]["allowPrivilegeEscalation"] is False


def test_gateway_binds_all_addresses_only_with_inbound_keys() -> None:
    (workload,) = _workloads("gateway")
    pod = workload["spec"]["template"]["spec"]
    (proxy,) = _proxy_containers(pod)
    env = _env(proxy, "gateway")
    assert env["FOUNDRY_PROXY_HOST"] == "0.0.0.0"
    assert env.get("FOUNDRY_PROXY_ALLOW_REMOTE", "false") == "false"
    keys_file = Path(env["FOUNDRY_PROXY_API_KEYS_FILE"] or "")
    (mount,) = [m for m in proxy["volumeMounts"] if Path(m["mountPath"]) == keys_file.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["defaultMode"] == 0o400
    (secret,) = [d for d in _load(DEPLOY / "gateway" / EXAMPLE) if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == volume["secret"]["secretName"]
    assert keys_file.name in secret["stringData"]


def test_gateway_service_budget_autoscaler_and_network_policy() -> None:
    resources = _resources("gateway")
    (workload,) = _workloads("gateway")
    labels = workload["spec"]["template"]["metadata"]["labels"]
    name = workload["metadata"]["name"]

    service = resources["Service", name]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == PROXY_PORT
    (proxy,) = _proxy_containers(workload["spec"]["template"]["spec"])
    named = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert named.get(port["targetPort"], port["targetPort"]) == PROXY_PORT

    budget = resources["PodDisruptionBudget", name]
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()

    autoscaler = resources["HorizontalPodAutoscaler", name]["spec"]
    assert autoscaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (2, 10)
    assert workload["spec"]["replicas"] == autoscaler["minReplicas"]
    (metric,) = autoscaler["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 50 <= metric["resource"]["target"]["averageUtilization"] <= 80
    assert "cpu" in proxy["resources"]["requests"], "CPU utilisation is relative to it"

    policy = resources["NetworkPolicy", name]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"foundry-proxy-client": "true"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": PROXY_PORT}]
    egress = {(p["protocol"], p["port"]) for r in policy["egress"] for p in r["ports"]}
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 443)}


# --- the settings load --------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_proxy_accepts_the_manifest_settings(
    pattern: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load the proxy's own settings from each proxy container's environment, with what the
    webhook injects and the mounted files replaced by local ones."""
    for key in list(os.environ):
        if key.startswith(PREFIXES):
            monkeypatch.delenv(key)
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("eyJ.projected.token", encoding="utf-8")
    resources = _resources(pattern)
    for workload in _workloads(pattern):
        pod = workload["spec"]["template"]["spec"]
        account = resources["ServiceAccount", pod["serviceAccountName"]]
        for container in _proxy_containers(pod):
            env = _env(container, pattern)
            env |= {
                "AZURE_CLIENT_ID": account["metadata"]["annotations"][
                    "azure.workload.identity/client-id"
                ],
                "AZURE_TENANT_ID": PLACEHOLDER_GUID,
                "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
                # As the webhook writes it: with a trailing slash.
                "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
            }
            if env.get("FOUNDRY_PROXY_API_KEYS_FILE"):
                (secret,) = _load(DEPLOY / pattern / EXAMPLE)
                keys_file = tmp_path / "api-keys"
                name = Path(env["FOUNDRY_PROXY_API_KEYS_FILE"] or "").name
                keys_file.write_text(secret["stringData"][name], encoding="utf-8")
                keys_file.chmod(0o440)  # what defaultMode 0400 with an fsGroup gives
                env["FOUNDRY_PROXY_API_KEYS_FILE"] = str(keys_file)
            for key, value in env.items():
                assert value is not None, f"{key}: valueFrom is not simulated here"
                monkeypatch.setenv(key, value)
            # The manifests carry config.example.env's placeholders, which the proxy refuses
            # to start with; an operator replaces them with the resource's and app's own.
            with pytest.raises(ConfigError) as refused:
                load_settings()
            assert "AZURE_CLIENT_ID: still the example's placeholder" in str(refused.value)
            assert "FOUNDRY_PROXY_UPSTREAM: still the example's placeholder" in str(refused.value)
            filled = {
                "FOUNDRY_PROXY_UPSTREAM": "https://contoso-ai.openai.azure.com",
                "AZURE_CLIENT_ID": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            }
            for key, value in filled.items():
                monkeypatch.setenv(key, value)
            settings = load_settings()
            assert settings.credential == "workload-identity"
            assert settings.port == PROXY_PORT
            assert settings.shutdown_grace < pod["terminationGracePeriodSeconds"]
            assert bool(settings.inbound_keys()) == (not _is_loopback(settings.host))
            assert settings.warnings() == []
            for key in env:
                monkeypatch.delenv(key)
