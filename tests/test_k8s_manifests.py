"""The Kubernetes manifests in deploy/k8s are valid and match the project.

Every manifest is validated OFFLINE against the Kubernetes JSON schemas bundled with `kubernetes-validate` (strict:
an unknown field is an error, so a typo cannot pass as an ignored key). Then the project's invariants: every
ERASURE_* variable is a real setting and compose's are all there, probes point at routes the app serves and at the
worker's real health check, the image is the one docker/ builds, no secret value is committed, every workload has
resources and a non-root, read-only securityContext, the shared store is ReadWriteMany and only the api and the
workers may reach Redis. Each check is a function that returns its problems, and the last tests break a manifest on
purpose to show each check catches what it is for.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker" / "compose.yaml"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests are meant for; the newest bundled one is checked too
NON_ERASURE_ENV = {"HF_HOME", "HF_TOKEN"}  # read by huggingface_hub itself, as in docker/compose.yaml
SECRET_NAME = re.compile(r"KEY|PASSWORD|TOKEN|SECRET", re.IGNORECASE)
WORKLOADS = ("Deployment", "StatefulSet")

Doc = dict[str, Any]


def kustomize_resources() -> list[str]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]


def applied_docs() -> list[Doc]:
    """What `kubectl apply -k deploy/k8s` applies, in order."""
    return [d for name in kustomize_resources() for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def every_doc() -> list[tuple[str, Doc]]:
    return [
        (p.name, d)
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def containers(doc: Doc) -> list[Doc]:
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def by_name(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def compose() -> Doc:
    return yaml.safe_load(COMPOSE.read_text())


def app_get_routes() -> set[str]:
    """The paths the app answers GET on, from the app itself (not from the committed openapi.yaml)."""
    from service.main import create_app

    paths = create_app(Settings(auth="off")).openapi()["paths"]
    return {path for path, methods in paths.items() if "get" in methods}


# ---- checks: each returns a list of problems --------------------------------------------------------------------


def env_problems(docs: list[Doc]) -> list[str]:
    """Every variable the manifests set is a real setting (ERASURE_*) or one of the few others compose sets."""
    fields = {f"ERASURE_{name.upper()}" for name in Settings.model_fields}
    names = [k for d in docs if d["kind"] == "ConfigMap" for k in d.get("data", {})]
    names += [e["name"] for d in workloads(docs) for c in containers(d) for e in c.get("env", [])]
    unknown = [n for n in names if n.startswith("ERASURE_") and n not in fields]
    foreign = [n for n in names if not n.startswith("ERASURE_") and n not in NON_ERASURE_ENV]
    return [f"{n} is not a setting in service/settings.py" for n in unknown] + [
        f"{n} is neither ERASURE_* nor an allowed variable" for n in foreign
    ]


def secret_problems(docs: list[Doc]) -> list[str]:
    """No secret value in anything applied: no Secret with data, no secret-like variable with a literal value."""
    problems = [f"Secret {d['metadata']['name']} is applied with values" for d in docs if d["kind"] == "Secret"]
    for d in docs:
        if d["kind"] == "ConfigMap":
            problems += [
                f"ConfigMap holds {k}" for k in d.get("data", {}) if SECRET_NAME.search(k) and not k.endswith("_FILE")
            ]
    for d in workloads(docs):
        for c in containers(d):
            problems += [
                f"{c['name']} sets {e['name']} as a literal"
                for e in c.get("env", [])
                if SECRET_NAME.search(e["name"]) and "value" in e
            ]
    return problems


def hardening_problems(docs: list[Doc]) -> list[str]:
    """Each workload: non-root pod, every container with resources and a locked-down securityContext."""
    problems = []
    for d in workloads(docs):
        name, pod = d["metadata"]["name"], d["spec"]["template"]["spec"]
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append(f"{name}: pod is not runAsNonRoot")
        for c in containers(d):
            res, sec = c.get("resources", {}), c.get("securityContext", {})
            if not res.get("requests") or "memory" not in res.get("limits", {}):
                problems.append(f"{name}/{c['name']}: no requests or memory limit")
            if sec.get("allowPrivilegeEscalation") is not False or sec.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}/{c['name']}: privilege escalation allowed or writable root filesystem")
            if "ALL" not in sec.get("capabilities", {}).get("drop", []):
                problems.append(f"{name}/{c['name']}: capabilities not dropped")
    return problems


def matches(selector: Doc, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and In / NotIn / Exists / DoesNotExist)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def redis_reachers(docs: list[Doc]) -> set[str]:
    """Names of the workloads whose pods a NetworkPolicy on the Redis pods admits (all, if no policy covers it)."""
    redis = by_name(docs, "StatefulSet", "erasure-redis")["spec"]["template"]["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy" and matches(d["spec"]["podSelector"], redis)]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in workloads(docs)}
    if not policies:
        return set(pods)
    peers = [p for pol in policies for rule in pol["spec"].get("ingress", []) for p in rule.get("from", [])]
    if any("podSelector" not in p or "namespaceSelector" in p or "ipBlock" in p for p in peers):
        return {"<outside the namespace>", *pods}
    return {name for name, labels in pods.items() for p in peers if matches(p["podSelector"], labels)}


# ---- tests -------------------------------------------------------------------------------------------------------


def test_the_schemas_are_bundled_and_used_offline() -> None:
    """kubernetes-validate reads its schemas from the installed package, never from the network."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
        "import kubernetes_validate as kv\n"
        "kv.validate({'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': 'x'}}, '1.30.0', strict=True)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    docs = every_doc()
    assert len(docs) >= 10
    for filename, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{filename}: {doc['kind']} {doc['metadata'].get('name')}: {e.message}")


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    listed = set(kustomize_resources())
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}
    kinds = {d["kind"] for d in applied_docs()}
    assert {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "StatefulSet"} <= kinds
    assert {"Service", "NetworkPolicy"} <= kinds
    assert all(d["metadata"].get("namespace", "erasure") == "erasure" for d in applied_docs())


def test_env_vars_are_real_settings_and_cover_compose(tmp_path: Path) -> None:
    docs = applied_docs()
    assert env_problems(docs) == []
    config = by_name(docs, "ConfigMap", "erasure-config")["data"]
    env = compose()["x-erasure-env"]
    optional = {"ERASURE_OPEN_SORA_MODEL", "ERASURE_MANDATORY_ERASURES"}
    missing = set(env) - set(config) - optional - {"HF_TOKEN"}  # the token comes from the Secret (test below)
    assert missing == set()
    for key in ("ERASURE_DEVICE", "ERASURE_DTYPE", "ERASURE_DATA_DIR", "ERASURE_AUTH", "HF_HOME"):
        assert str(config[key]) == str(env[key]).split(":-")[-1].rstrip("}"), key
    # The values are accepted by the real settings object (as `erasure serve` reads them), with the mounted secret
    # files stood in for by local ones.
    values = {k.removeprefix("ERASURE_").lower(): v for k, v in config.items() if k.startswith("ERASURE_")}
    (tmp_path / "keys").write_text("an-api-key-of-enough-length:tenant-a\n")
    (tmp_path / "redis").write_text("a-redis-password\n")
    values.update(api_keys_file=str(tmp_path / "keys"), redis_password_file=str(tmp_path / "redis"))
    settings = Settings(**values)
    assert settings.auth == "on" and settings.redis_url == config["ERASURE_REDIS_URL"]
    assert settings.device == "cuda" and str(settings.data_dir) == config["ERASURE_DATA_DIR"]


def test_secrets_are_referenced_never_committed() -> None:
    docs = applied_docs()
    assert secret_problems(docs) == []
    example = by_name([d for _, d in every_doc()], "Secret", "erasure-secrets")
    assert not example.get("data") and not example.get("stringData")
    config = by_name(docs, "ConfigMap", "erasure-config")["data"]
    for workload in ("erasure-api", "erasure-worker"):
        doc = by_name(docs, "Deployment", workload)
        (container,) = containers(doc)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
        secret = next(v for v in volumes.values() if "secret" in v)
        mounted = {f"{mounts[secret['name']]}/{i['path']}" for i in secret["secret"]["items"]}
        assert {config["ERASURE_API_KEYS_FILE"], config["ERASURE_REDIS_PASSWORD_FILE"]} <= mounted
        assert secret["secret"]["secretName"] == "erasure-secrets"


def test_images_match_docker() -> None:
    docs, services = applied_docs(), compose()["services"]
    for workload, service in (("erasure-api", "api"), ("erasure-worker", "worker")):
        (container,) = containers(by_name(docs, "Deployment", workload))
        assert container["image"] == services[service]["image"]
        assert container["args"] == services[service]["command"]
    (redis,) = containers(by_name(docs, "StatefulSet", "erasure-redis"))
    assert redis["image"] == services["redis"]["image"]
    # The image's user (docker/Dockerfile ARG UID) is the one the pods run as.
    uid = re.search(r"ARG UID=(\d+)", (ROOT / "docker" / "Dockerfile").read_text())
    assert uid is not None
    for workload in ("erasure-api", "erasure-worker"):
        pod = by_name(docs, "Deployment", workload)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(uid.group(1))


def test_probes_point_at_real_routes_and_the_worker_check() -> None:
    docs, routes = applied_docs(), app_get_routes()
    (api,) = containers(by_name(docs, "Deployment", "erasure-api"))
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    paths = {api[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert paths <= routes
    port = by_name(docs, "ConfigMap", "erasure-config")["data"]["ERASURE_PORT"]
    assert [p["containerPort"] for p in api["ports"]] == [int(port)]
    (worker,) = containers(by_name(docs, "Deployment", "erasure-worker"))
    assert worker["livenessProbe"]["exec"]["command"] == ["erasure", "worker", "--check"]
    assert worker["livenessProbe"]["exec"]["command"] == compose()["services"]["worker"]["healthcheck"]["test"][1:]
    helped = subprocess.run(
        [sys.executable, "-c", "from service.cli import main; main()", "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "--check" in helped.stdout, helped.stderr


def test_workloads_are_hardened_and_sized() -> None:
    docs = applied_docs()
    assert hardening_problems(docs) == []
    for workload in ("erasure-api", "erasure-worker"):
        (container,) = containers(by_name(docs, "Deployment", workload))
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_store_is_shared_read_write_many() -> None:
    docs = applied_docs()
    claim = by_name(docs, "PersistentVolumeClaim", "erasure-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    data_dir = by_name(docs, "ConfigMap", "erasure-config")["data"]["ERASURE_DATA_DIR"]
    for workload in ("erasure-api", "erasure-worker"):
        doc = by_name(docs, "Deployment", workload)
        volumes = doc["spec"]["template"]["spec"]["volumes"]
        name = next(v["name"] for v in volumes if v.get("persistentVolumeClaim", {}).get("claimName") == "erasure-data")
        (container,) = containers(doc)
        mount = next(m for m in container["volumeMounts"] if m["name"] == name)
        assert data_dir.startswith(mount["mountPath"] + "/") and not mount.get("readOnly")


def test_only_the_api_and_workers_reach_redis() -> None:
    docs = applied_docs()
    assert redis_reachers(docs) == {"erasure-api", "erasure-worker"}
    url = by_name(docs, "ConfigMap", "erasure-config")["data"]["ERASURE_REDIS_URL"]
    service = by_name(docs, "Service", "erasure-redis")
    assert url.startswith(f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/")


# ---- the checks catch what they are for --------------------------------------------------------------------------


def _mutated(edit: Any) -> list[Doc]:
    docs = copy.deepcopy(applied_docs())
    edit(docs)
    return docs


def test_the_checks_catch_broken_manifests() -> None:
    def typo(docs: list[Doc]) -> None:
        by_name(docs, "ConfigMap", "erasure-config")["data"]["ERASURE_REDIS_ULR"] = "redis://x"

    def plain_password(docs: list[Doc]) -> None:
        containers(by_name(docs, "Deployment", "erasure-worker"))[0]["env"].append(
            {"name": "ERASURE_REDIS_PASSWORD", "value": "hunter2hunter2"}
        )

    def root(docs: list[Doc]) -> None:
        containers(by_name(docs, "Deployment", "erasure-api"))[0]["securityContext"]["readOnlyRootFilesystem"] = False

    def open_redis(docs: list[Doc]) -> None:
        rule = by_name(docs, "NetworkPolicy", "erasure-redis-clients")["spec"]["ingress"][0]
        rule["from"] = [{"podSelector": {}}]

    assert any("ERASURE_REDIS_ULR" in p for p in env_problems(_mutated(typo)))
    assert any("ERASURE_REDIS_PASSWORD" in p for p in secret_problems(_mutated(plain_password)))
    assert any("erasure-api" in p for p in hardening_problems(_mutated(root)))
    assert "erasure-redis" in redis_reachers(_mutated(open_redis))
    bad = copy.deepcopy(by_name(applied_docs(), "Deployment", "erasure-api"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = bad["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
