"""deploy/systemd/ and deploy/kubernetes/: what starts berthing again after a native crash, checked offline.

A native crash (ONNX Runtime or tokenizers aborting) ends the process (docs/operations.md); a supervisor starts it
again. Each recipe is checked for syntax by what reads it: `systemd-analyze verify` for the unit, Kubernetes' own
schemas of Deployment and Service for the manifest (vendored, tests/fixtures/kubernetes; strict about unknown fields,
as `kubectl apply --validate=strict` is, since the apiserver would otherwise drop a misspelled key silently). Then
against berthing itself: their settings are valid Settings, their command lines parse as `berthing serve`'s, the probe
paths answer on a live server, the stop outlasts the drain, and the writable paths are the ones berthing writes.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from berthing import cli
from berthing.config import Settings
from berthing.registry import Registry
from tests.support.dockerfiles import instructions
from tests.support.http import WAIT_S, clone
from tests.support.servers import ThreadServer

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "berthing.service"
MANIFEST = ROOT / "deploy" / "kubernetes" / "berthing.yaml"
DOCKERFILE = ROOT / "deploy" / "server" / "Dockerfile"
SCHEMAS = ROOT / "tests" / "fixtures" / "kubernetes"
K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest and newest API the manifest is written against
ROOTS = {"Deployment": "io.k8s.api.apps.v1.Deployment", "Service": "io.k8s.api.core.v1.Service"}
INSTALL_BIN = "/opt/berthing/bin/"  # where the unit expects the virtual environment's scripts
SPECIFIERS = {"%C": "/var/cache", "%t": "/run", "%%": "%"}  # systemd's, for a system unit


# --- systemd ---------------------------------------------------------------------------------------------------------


def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd's unit syntax, strictly: [Section] headers, Key=Value lines (a key may repeat), # and ; comments,
    a trailing backslash continues the line. Anything else is an error, as it is a warning systemd ignores."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: str | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            assert line.endswith("]") and line[1:-1] not in sections, f"line {number}: {line!r}"
            current = line[1:-1]
            sections[current] = []
            continue
        key, sep, value = line.partition("=")
        assert sep and current and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"line {number}: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    assert not pending, "the file ends inside a continued line"
    return sections


@functools.cache
def unit() -> dict[str, list[tuple[str, str]]]:
    return unit_sections(UNIT.read_text("utf-8"))


def service(key: str) -> str:
    """The [Service] setting's last value (a later assignment wins, as in systemd)."""
    values = [value for k, value in unit()["Service"] if k == key]
    assert values, f"[Service] sets no {key}="
    return values[-1]


def specifiers(value: str) -> str:
    return re.sub(r"%[Ct%]", lambda m: SPECIFIERS[m.group(0)], value)


def unit_environment() -> dict[str, str]:
    """Every Environment= assignment (several per line, quoted as the shell quotes), specifiers expanded."""
    env: dict[str, str] = {}
    for key, value in unit()["Service"]:
        if key == "Environment":
            for item in shlex.split(value):
                name, sep, setting = item.partition("=")
                assert sep, f"Environment={value}: {item!r} is not NAME=VALUE"
                env[name] = specifiers(setting)
    return env


def seconds(value: str) -> float:
    """A systemd time span: 45, 45s, 1min 30s, 2m."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), value
    return sum(float(number) * units[unit] for number, unit in parts)


def serve_settings(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings `berthing serve ARGS` builds in this environment (the server itself is not started)."""
    import berthing.server.runner

    captured: list[Settings] = []
    monkeypatch.setattr(berthing.server.runner, "serve", lambda settings, *_a, **_k: captured.append(settings))
    for name in [n for n in os.environ if n.startswith("BERTHING_")]:
        monkeypatch.delenv(name)  # the test run's own (BERTHING_OPTIMIZE, ports 0) would hide the file's
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli.app, ["serve", *args])
    assert result.exit_code == 0 and len(captured) == 1, result.output
    return captured[0]


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # verify checks that ExecStart's programs exist: point them at this checkout's virtual environment
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text("utf-8").replace(INSTALL_BIN, f"{Path(sys.executable).parent}/"), "utf-8")
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr
    # and verify does look: an unknown key and a bad value are reported (systemd would ignore both and start)
    broken = tmp_path / "broken" / UNIT.name
    broken.parent.mkdir()
    broken.write_text(local.read_text("utf-8").replace("KillMode=mixed", "KillMode=mixd").replace("Restart=", "Restat="))
    result = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "mixd" in result.stderr and "Restat" in result.stderr, result.stderr


def test_the_unit_parser_is_strict() -> None:
    good = "[Unit]\nDescription=x\n# a comment\n[Service]\nExecStart=/bin/true \\\n  --flag\n"
    assert unit_sections(good) == {"Unit": [("Description", "x")], "Service": [("ExecStart", "/bin/true  --flag")]}
    for bad in ("Description=x\n", "[Unit]\nno equals sign\n", "[Unit\nA=b\n", "[Unit]\n[Unit]\n", "[Unit]\nA=b \\\n"):
        with pytest.raises(AssertionError):
            unit_sections(bad)


def test_the_unit_restarts_after_a_crash_and_its_stop_outlasts_the_drain() -> None:
    assert set(unit()) == {"Unit", "Service", "Install"}
    assert service("Restart") in ("on-failure", "always")  # SIGABRT, SIGSEGV, SIGKILL, a non-zero exit
    assert seconds(service("RestartSec")) >= 0.1  # systemd's own default; never a busy loop
    starts = {k: v for k, v in unit()["Unit"]}
    assert int(starts["StartLimitBurst"]) >= 3 and seconds(starts["StartLimitIntervalSec"]) > 0  # a crash loop ends
    assert (service("KillSignal"), service("KillMode")) == ("SIGTERM", "mixed")  # SIGTERM to the server: it drains
    drain = float(unit_environment()["BERTHING_DRAIN_TIMEOUT_S"])
    assert seconds(service("TimeoutStopSec")) > drain  # SIGKILL comes only after a complete drain could have ended
    assert seconds(service("TimeoutStartSec")) >= 60  # a checkpoint's first start exports and optimizes
    assert dict(unit()["Install"]) == {"WantedBy": "multi-user.target"}


def test_the_unit_is_hardened_and_writes_only_its_own_folders() -> None:
    settings = dict(unit()["Service"])
    assert settings.get("DynamicUser") == "yes" or settings.get("User", "root") not in ("root", "0")
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "CapabilityBoundingSet": ""}.items():
        assert service(key) == value, key
    env = unit_environment()
    # ProtectSystem=strict leaves only these writable: the cache (packages are extracted there, the startup-file list)
    # and the folder of the management token file
    writable = [Path(specifiers(f"%C/{service('CacheDirectory')}")), Path(specifiers(f"%t/{service('RuntimeDirectory')}"))]
    writable += [Path(p.lstrip("-")) for p in settings.get("ReadWritePaths", "").split()]
    for name in ("BERTHING_CACHE_DIR", "BERTHING_MANAGEMENT_TOKEN_FILE"):
        assert any(Path(env[name]).is_relative_to(folder) for folder in writable), (name, env[name], writable)


def test_the_units_settings_and_command_are_berthing_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    env = unit_environment()
    command = shlex.split(service("ExecStart"))
    assert command[0] == f"{INSTALL_BIN}berthing" and command[1] == "serve"
    settings = serve_settings(command[2:], env, monkeypatch)
    assert settings.host == "127.0.0.1" and settings.management_host == "127.0.0.1"  # a proxy in front reaches it
    assert settings.port == int(env["BERTHING_PORT"]) and settings.models == ["all"]
    assert settings.model_store == Path("/srv/berthing/models") and settings.cache_dir == Path("/var/cache/berthing")
    assert settings.drain_timeout_s == float(env["BERTHING_DRAIN_TIMEOUT_S"])
    assert settings.management_token_file == Path("/run/berthing/key_file.json")
    assert env["PYTHONFAULTHANDLER"] == "1"  # a native crash leaves the Python stacks in the journal


def test_the_units_readiness_wait_holds_the_start_until_every_model_serves(load, settings: Settings) -> None:
    """ExecStartPost, run as systemd would (its ${BERTHING_PORT} substituted, this venv's python), against a live server:
    it keeps waiting while a model does not serve, and returns 0 once /health/ready answers 200."""
    registry = Registry()
    registry.add(clone(load("embed"), "minilm"))
    with ThreadServer(registry, settings) as server:
        registry.add(clone(load("classify"), "late"), make_default=False)  # registered, never started: 503
        line = service("ExecStartPost").replace(f"{INSTALL_BIN}python", sys.executable)
        argv = [word.replace("${BERTHING_PORT}", str(server.port)) for word in shlex.split(line)]
        assert argv[:2] == ["/bin/sh", "-c"]
        wait = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                wait.wait(timeout=2)  # not ready: the start is still pending (a bound on waiting, not a timing)
            assert httpx.get(f"{server.url}/health/ready").status_code == 503
            registry.remove("late", "1.0")
            assert wait.wait(timeout=WAIT_S) == 0
        finally:
            wait.kill()
            wait.wait()


# --- Kubernetes ------------------------------------------------------------------------------------------------------


@functools.cache
def k8s_schema(version: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"deployment-service.v{version}.json").read_text("utf-8"))


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict[str, Any]) -> Any:
    """Kubernetes' x-kubernetes-list-type: a `set` holds no item twice, a `map` no two items with the same keys (two
    env entries of one name, two ports of one number and protocol: the apiserver refuses both)."""
    if not isinstance(instance, list):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: list[Any] = []
    for item in instance:
        key = tuple(item.get(k) for k in keys) if list_type == "map" and isinstance(item, dict) else item
        if key in seen:
            yield jsonschema.ValidationError(f"{key!r} is listed twice (x-kubernetes-list-type: {list_type})")
        seen.append(key)


K8sValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type})


def k8s_errors(document: dict[str, Any], version: str) -> list[str]:
    kind = document.get("kind")
    if kind not in ROOTS:
        return [f"$.kind: {kind!r} is not one of {sorted(ROOTS)}"]
    validator = K8sValidator({**k8s_schema(version), "$ref": f"#/$defs/{ROOTS[kind]}"})
    return sorted(f"{error.json_path}: {error.message}" for error in validator.iter_errors(document))


def documents() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(MANIFEST.read_text("utf-8")))


def of_kind(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs or documents() if d["kind"] == kind]
    return found


def pod(docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return of_kind("Deployment", docs)["spec"]["template"]["spec"]


def container(docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    (only,) = pod(docs)["containers"]
    return only


def image_env() -> dict[str, str]:
    """deploy/server/Dockerfile's ENV: what the image sets before the manifest's env."""
    env: dict[str, str] = {}
    for word, rest in instructions(DOCKERFILE):
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def container_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the container's `berthing serve` builds: the image's ENV, the manifest's env, its args."""
    env = image_env() | {item["name"]: item["value"] for item in container().get("env", [])}
    return serve_settings(container()["args"], env, monkeypatch)


def test_the_schemas_are_kubernetes_deployment_and_service() -> None:
    readme = (SCHEMAS / "README.md").read_text("utf-8")
    assert "kubernetes-validate` 1.37.0" in readme
    for version in K8S_VERSIONS:
        assert f"v{version}" in readme and version.rsplit(".", 1)[0] in MANIFEST.read_text("utf-8")
        definitions = k8s_schema(version)["$defs"]
        for kind, name in ROOTS.items():
            assert definitions[name]["x-kubernetes-group-version-kind"][0]["kind"] == kind
            assert definitions[name]["additionalProperties"] is False  # the strict flavour
        assert '"description":"' not in json.dumps(definitions, separators=(",", ":"))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_manifest_matches_kubernetes_schemas(version: str) -> None:
    docs = documents()
    assert sorted(d["kind"] for d in docs) == ["Deployment", "Service"]
    for document in docs:
        assert k8s_errors(document, version) == [], document["kind"]


def test_the_schema_check_reports_what_the_apiserver_would_drop_or_refuse() -> None:
    cases = {
        "readinesProbe": lambda d: container(d).update(readinesProbe=container(d)["readinessProbe"]),
        "pth": lambda d: container(d)["livenessProbe"]["httpGet"].update(pth="/health/live"),
        "terminationGracePeriodSecond": lambda d: pod(d).update(terminationGracePeriodSecond=45),
        "BERTHING_THREADS": lambda d: container(d)["env"].append({"name": "BERTHING_THREADS", "value": "4"}),
        "failureThreshold": lambda d: container(d)["startupProbe"].update(failureThreshold="90"),
        "targetPort": lambda d: of_kind("Service", d)["spec"]["ports"][0].update(targetPort=["http"]),
        "Servce": lambda d: of_kind("Service", d).update(kind="Servce"),
    }
    for needle, change in cases.items():
        docs = copy.deepcopy(documents())
        change(docs)
        errors = [e for document in docs for e in k8s_errors(document, K8S_VERSIONS[-1])]
        assert any(needle in error for error in errors), (needle, errors)


def test_the_probes_route_to_the_real_servers_health_routes(load, settings: Settings, monkeypatch) -> None:
    configured = container_settings(monkeypatch)
    monkeypatch.undo()  # the test run's own environment again for the server below
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    probes = {kind: container()[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/health/ready", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
    assert all(ports[probe["port"]] == configured.port for probe in probes.values())  # the port berthing binds
    names = [spec.partition("=")[0] for spec in configured.models]
    registry = Registry()
    for name in names:
        registry.add(clone(load("embed"), name))
    with ThreadServer(registry, configured.model_copy(update={"cache_dir": settings.cache_dir})) as server:
        for kind, probe in probes.items():
            answer = httpx.get(f"{server.url}{probe['path']}")
            assert answer.status_code == 200, (kind, answer.text)
        assert httpx.get(f"{server.url}/health/ready").json()["models"] == {
            f"{name}:1.0": {"version": "1.0", "ready": True} for name in names}


def test_the_service_reaches_the_deployments_pods() -> None:
    deployment, svc = of_kind("Deployment"), of_kind("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    names = {port["name"] for port in container()["ports"]}
    assert {port["targetPort"] for port in svc["spec"]["ports"]} <= names
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # a new Pod is ready first


def test_the_pods_stop_outlasts_prestop_and_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = container_settings(monkeypatch)
    sleep = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) > 0
    assert configured.drain_timeout_s == 30.0
    grace = pod()["terminationGracePeriodSeconds"]
    assert grace > int(sleep[1]) + configured.drain_timeout_s  # the kubelet's SIGKILL never cuts a drain short
    startup = container()["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # a checkpoint's first export fits


def test_the_pod_runs_as_the_images_user_on_a_read_only_root(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = container_settings(monkeypatch)
    (user,) = [rest for word, rest in instructions(DOCKERFILE) if word == "USER"]
    security, own = pod()["securityContext"], container()["securityContext"]
    assert security["runAsNonRoot"] is True and f"{security['runAsUser']}:{security['runAsGroup']}" == user
    assert own == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert pod()["automountServiceAccountToken"] is False
    # what berthing writes must lie on a writable volume: the cache (extracted packages, the startup-file list) and
    # the management token file (model_store's folder or the cache when none is set), and /tmp
    volumes = {v["name"]: v for v in pod()["volumes"]}
    mounts = [Path(m["mountPath"]) for m in container()["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    token_file = configured.management_token_file or (configured.model_store or configured.cache_dir) / "key_file.json"
    for path in (configured.cache_dir, token_file, Path("/tmp/x")):
        assert any(path.is_relative_to(mount) for mount in mounts), (path, mounts)


def test_the_containers_settings_are_berthing_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = container_settings(monkeypatch)
    assert configured.models == ["minilm=/models/minilm-1.0.berth"]
    assert (configured.host, configured.port) == ("0.0.0.0", 8080)  # the Pod's network namespace, the probes' port
    assert configured.management_host == "127.0.0.1"
    resources = container()["resources"]
    for resource in ("cpu", "memory"):  # requests equal to limits: the Guaranteed QoS class
        assert resources["requests"][resource] == resources["limits"][resource]
    assert configured.threads == int(resources["requests"]["cpu"])  # a CPU limit does not narrow the affinity
    assert {item["name"]: item["value"] for item in container()["env"]}["PYTHONFAULTHANDLER"] == "1"
    protocols = configured.enabled_protocols()
    assert "kserve-grpc" not in protocols and "bert-serving" not in protocols and "torchserve" in protocols
