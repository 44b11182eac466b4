"""deploy/ray/ (KubeRay's RayService, a plain Serve config), checked offline.

Each file is validated against the schema of what reads it: KubeRay's RayService CRD (vendored, tests/fixtures/kuberay),
Ray Serve's own config models. Those readers drop keys they do not know (the apiserver prunes unknown fields, Ray's
pydantic models ignore them), so the checks here are strict where they are not: a misspelled key is an error. Then the
files are checked against berthing itself: ServeArgs takes the applications' args, the Dockerfile's Ray is the manifest's.
serverless.yml is checked in test_deploy_serverless.py; the strict schema helpers are in tests/support/schemas.py.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
import threading
import tomllib
import types
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic import BaseModel, ValidationError

from berthing.ray.options import DEPLOYMENT, ServeArgs, model_name
from tests.support.dockerfiles import instructions
from tests.support.schemas import Validator, schema_errors, strict

ROOT = Path(__file__).resolve().parents[2]
RAYSERVICE = ROOT / "deploy" / "ray" / "rayservice.yaml"
SERVE_CONFIG = ROOT / "deploy" / "ray" / "serve-config.yaml"
DOCKERFILE = ROOT / "deploy" / "server" / "Dockerfile"
KUBERAY_VERSION = "v1.6.2"
CRD = ROOT / "tests" / "fixtures" / "kuberay" / f"ray.io_rayservices.{KUBERAY_VERSION}.json"
PROXY_DRAINING_S = 30.0  # Ray Serve's RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S default (checked against Ray below)
MAX_RAYSERVICE_NAME = 47  # KubeRay's MaxRayServiceNameLength: 53 for the RayCluster it makes, less a 6-character suffix


# --- KubeRay ---------------------------------------------------------------------------------------------------------


@functools.cache
def crd() -> dict[str, Any]:
    return json.loads(CRD.read_text("utf-8"))


@functools.cache
def rayservice_validator() -> Any:
    (v1,) = [version for version in crd()["spec"]["versions"] if version["name"] == "v1"]
    return Validator(strict(v1["schema"]["openAPIV3Schema"]))


def rayservice() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(RAYSERVICE.read_text("utf-8")))
    assert len(documents) == 1, "rayservice.yaml holds the RayService alone (Secrets are created from the commands in it)"
    return documents[0]


def cluster(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterConfig"]


def groups(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """('head', headGroupSpec) and (groupName, workerGroupSpec) for each worker group."""
    spec = cluster(manifest)
    return [("head", spec["headGroupSpec"])] + [(w["groupName"], w) for w in spec.get("workerGroupSpecs", [])]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay's RayContainerIndex


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def quantity_cpus(value: int | str) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_cpus(group: dict[str, Any]) -> float:
    """The CPUs Ray sees on one Pod of the group: rayStartParams' num-cpus, else the container's limit (KubeRay's rule)."""
    if "num-cpus" in group.get("rayStartParams", {}):
        return float(group["rayStartParams"]["num-cpus"])
    resources = ray_container(group).get("resources", {})
    return quantity_cpus(resources.get("limits", {}).get("cpu", resources.get("requests", {}).get("cpu", 0)))


def _descriptions(schema: Any) -> int:
    """How many `description` keywords (text, not a field that happens to be named description) the schema holds."""
    if isinstance(schema, list):
        return sum(_descriptions(item) for item in schema)
    if not isinstance(schema, dict):
        return 0
    found = isinstance(schema.get("description"), str)
    return found + sum(_descriptions(v) for k, v in schema.items() if k != "properties") + sum(
        _descriptions(sub) for sub in schema.get("properties", {}).values() if isinstance(sub, dict)
    )


def test_the_crd_fixture_is_kuberays_rayservice_at_the_pinned_release() -> None:
    definition = crd()
    assert definition["metadata"]["name"] == "rayservices.ray.io" and definition["spec"]["group"] == "ray.io"
    assert [v["name"] for v in definition["spec"]["versions"]] == ["v1"]
    assert not _descriptions(definition), "the fixture is stripped of descriptions"
    readme = (CRD.parent / "README.md").read_text("utf-8")
    assert f"tag {KUBERAY_VERSION}" in readme and "ray.io_rayservices.yaml" in readme
    assert KUBERAY_VERSION in RAYSERVICE.read_text("utf-8")  # the manifest says which CRD it was written against
    manifest = rayservice()
    assert manifest["apiVersion"] == f"{definition['spec']['group']}/v1"
    assert manifest["kind"] == definition["spec"]["names"]["kind"]


def test_rayservice_matches_kuberays_crd_with_no_unknown_fields() -> None:
    assert schema_errors(rayservice_validator(), rayservice()) == []


def test_the_crd_check_reports_what_the_apiserver_would_prune_or_refuse() -> None:
    base = rayservice()
    cases = {
        "rayVerison": lambda m: cluster(m).update(rayVerison=cluster(m).pop("rayVersion")),  # pruned silently by the apiserver
        "imagePullPolicyy": lambda m: ray_container(cluster(m)["headGroupSpec"]).update(imagePullPolicyy="Always"),
        "excludeHeadPodFromServeSVC": lambda m: m["spec"].update(excludeHeadPodFromServeSVC=True),
        "minReplicas": lambda m: cluster(m)["workerGroupSpecs"][0].update(minReplicas="one"),
        "RAY_USAGE_STATS_ENABLED": lambda m: ray_container(cluster(m)["headGroupSpec"])["env"].append(
            {"name": "RAY_USAGE_STATS_ENABLED", "value": "1"}  # the same name twice: a list-map key
        ),
        "mode": lambda m: cluster(m)["authOptions"].update(mode="tokens"),
    }
    for needle, change in cases.items():
        broken = copy.deepcopy(base)
        change(broken)
        errors = schema_errors(rayservice_validator(), broken)
        assert errors and any(needle in error for error in errors), (needle, errors)
    # int-or-string fields take either (a CPU count as 4 or "4"), as the apiserver does
    either = copy.deepcopy(base)
    ray_container(cluster(either)["workerGroupSpecs"][0])["resources"]["limits"]["cpu"] = 4
    assert schema_errors(rayservice_validator(), either) == []


def test_rayservice_cluster_is_set_up_for_berthing() -> None:
    manifest = rayservice()
    name = manifest["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= MAX_RAYSERVICE_NAME  # KubeRay's checks
    spec = cluster(manifest)
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "replicas stay off the head"
    assert manifest["spec"].get("excludeHeadPodFromServeSvc") is True  # so the serve Service reaches workers only
    # KubeRay's floors: token auth needs Ray 2.52; its probes are plain HTTP GETs (no wget) from 2.53 on
    assert Version(spec["rayVersion"]) >= Version("2.53.0")
    auth = spec["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"] and not auth.get("enableK8sTokenAuth")  # no RayService support
    workers = spec["workerGroupSpecs"]
    assert workers, "a worker group runs the replicas"
    for group_name, group in groups(manifest):
        container = ray_container(group)
        env = env_of(container)
        assert env["RAY_USAGE_STATS_ENABLED"].get("value") == "0", group_name
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(env), "authOptions sets Ray's token variables"
        # KubeRay refuses num-cpus (or memory, resources) in rayStartParams together with the group's `resources`
        ray_resources = {"num-cpus", "num-gpus", "memory", "resources"} & set(group.get("rayStartParams", {}))
        assert not (ray_resources and group.get("resources")), group_name
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001  # the image's
        if group_name == "head":
            continue
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], group_name
        token = env.get("BERTHING_INFERENCE_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert token and token["name"] and token["key"], f"{group_name}: replicas read berthing's token from a Secret"
        assert "value" not in env["BERTHING_INFERENCE_TOKEN"]
        probe = container.get("readinessProbe", {})
        command = " ".join(probe.get("exec", {}).get("command", []))
        assert "wget" not in command and "/-/healthz" in command, "KubeRay's own worker probe runs wget, not in the image"
        assert probe.get("failureThreshold") == 1  # as KubeRay's: a draining Pod leaves the Service at once


def test_the_secrets_the_manifest_reads_are_the_ones_its_instructions_create() -> None:
    manifest = rayservice()
    wanted = {(cluster(manifest)["authOptions"]["secretName"], "auth_token")}  # KubeRay's key for Ray's token
    for _, group in groups(manifest):
        for item in ray_container(group).get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                wanted.add((ref["name"], ref["key"]))
    created = set(re.findall(r"kubectl create secret generic ([\w-]+) --from-literal=(\w+)=", RAYSERVICE.read_text("utf-8")))
    assert wanted == created


def test_worker_pods_outlast_what_stopping_them_takes() -> None:
    """The Pod's grace period covers the proxy's draining period and the replicas' graceful shutdown, as the builder
    sets it from the application's args (and Ray's draining period is the one this test assumes)."""
    from ray.serve._private.constants import PROXY_MIN_DRAINING_PERIOD_S

    assert PROXY_MIN_DRAINING_PERIOD_S == PROXY_DRAINING_S
    manifest = rayservice()
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    stop_s = max(built_deployment(app)._deployment_config.graceful_shutdown_timeout_s for app in config["applications"])
    for group_name, group in groups(manifest)[1:]:
        assert group["template"]["spec"]["terminationGracePeriodSeconds"] > stop_s + PROXY_DRAINING_S, group_name


def test_the_worker_groups_hold_the_replicas_serve_asks_for() -> None:
    """At their fewest and their most, Serve's replicas fit the worker Pods (each a replica's `cpus` on one Pod)."""
    manifest = rayservice()
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    low_need = high_need = 0.0
    for app in config["applications"]:
        deployment = built_deployment(app)
        cpus = deployment.ray_actor_options["num_cpus"]
        scaling = deployment._deployment_config.autoscaling_config
        low, high = (scaling.min_replicas, scaling.max_replicas) if scaling else (deployment.num_replicas,) * 2
        low_need, high_need = low_need + low * cpus, high_need + high * cpus
        for _, group in groups(manifest)[1:]:
            assert cpus <= group_cpus(group), "one replica fits on one worker Pod"
    workers = groups(manifest)[1:]
    assert sum(g["minReplicas"] * group_cpus(g) for _, g in workers) >= low_need
    assert sum(g["maxReplicas"] * group_cpus(g) for _, g in workers) >= high_need


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"success" if self.path in ("/api/local_raylet_healthz", "/-/healthz") else b"no"
        self.send_response(200 if body == b"success" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_worker_readiness_probe_passes_on_a_ready_node_and_fails_otherwise() -> None:
    """The probe's own command, run here against stand-ins for the dashboard agent (52365) and Serve's proxy (8000)."""
    (_, worker), *_ = groups(rayservice())[1:]
    command = ray_container(worker)["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Healthz) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    script = command[2].replace(":52365/", f":{servers[0].server_port}/").replace(":8000/", f":{servers[1].server_port}/")
    try:
        assert subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30).returncode == 0
    finally:
        servers[1].shutdown()
        servers[1].server_close()
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30).returncode != 0  # no proxy
    servers[0].shutdown()
    servers[0].server_close()


def test_one_ray_version_in_the_manifest_the_image_and_the_tests() -> None:
    import ray

    manifest = rayservice()
    version = cluster(manifest)["rayVersion"]
    assert version == ray.__version__, "rayVersion is the Ray these tests validate the Serve config with"
    args = {rest.split("=")[0]: rest.split("=")[1] for word, rest in instructions(DOCKERFILE) if word == "ARG" and "=" in rest}
    assert args["RAY_VERSION"] == version, "deploy/server/Dockerfile pins the Ray the manifest names"
    run = " ".join(rest for word, rest in instructions(DOCKERFILE) if word == "RUN" and "pip install" in rest)
    assert 'echo "ray==${RAY_VERSION}" > /tmp/constraints.txt' in run and "--constraint /tmp/constraints.txt" in run
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["optional-dependencies"]
    (ray_requirement,) = [r for r in extras["ray"] if r.startswith("ray[")]
    assert Version(version) in SpecifierSet(ray_requirement.split("]", 1)[1]), "berthing[ray] accepts the pinned Ray"
    for _, group in groups(manifest):
        assert ray_container(group)["image"].endswith(f":{version}"), "the image's tag names its Ray"


# --- Ray Serve's config ----------------------------------------------------------------------------------------------


def serve_configs() -> dict[str, dict[str, Any]]:
    return {
        "rayservice.yaml serveConfigV2": yaml.safe_load(rayservice()["spec"]["serveConfigV2"]),
        "serve-config.yaml": yaml.safe_load(SERVE_CONFIG.read_text("utf-8")),
    }


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    found = {}
    for name, info in model.model_fields.items():
        found[name] = info.annotation
        if info.alias:
            found[info.alias] = info.annotation
    return found


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def unknown_keys(model: type[BaseModel], value: Any, path: str) -> list[str]:
    """Keys of `value` that `model` (and the models of its fields, recursively) has no field for: Ray's config models
    ignore them, so a misspelled option would silently keep its default."""
    if not isinstance(value, dict):
        return []
    fields = _fields(model)
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key}: not an option of {model.__name__}")
        else:
            problems += _unknown_in(fields[key], item, f"{path}.{key}")
    return problems


def _unknown_in(annotation: Any, value: Any, path: str) -> list[str]:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if _is_model(annotation):
        return unknown_keys(annotation, value, path)
    if origin is typing.Annotated:
        return _unknown_in(args[0], value, path)
    if origin in (typing.Union, types.UnionType):  # the model a dict becomes, the list a list is checked as
        for choice in sorted(args, key=lambda a: not _is_model(a)):
            kind = typing.get_origin(choice)
            if (isinstance(value, dict) and _is_model(choice)) or (isinstance(value, list) and kind is list):
                return _unknown_in(choice, value, path)
        return []
    if origin is list and isinstance(value, list) and args:
        return [p for i, item in enumerate(value) for p in _unknown_in(args[0], item, f"{path}[{i}]")]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return [p for key, item in value.items() for p in _unknown_in(args[1], item, f"{path}.{key}")]
    return []


def serve_config_problems(config: Any) -> list[str]:
    """What Ray's ServeDeploySchema refuses, then what it would ignore, then what berthing's builder refuses."""
    from ray.runtime_env import RuntimeEnv
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        return [f"Ray: {'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()]
    problems = unknown_keys(ServeDeploySchema, config, "config")
    if "host" not in config.get("http_options", {}):
        problems.append("config.http_options.host: set it (Ray's default is 0.0.0.0, berthing's CLI binds 127.0.0.1)")
    for index, app in enumerate(config["applications"]):
        where = f"config.applications[{index}]"
        for key in sorted(set(app.get("runtime_env", {})) - RuntimeEnv.known_fields):
            problems.append(f"{where}.runtime_env.{key}: not a runtime_env field")
        if app["import_path"] != "berthing.ray:app":
            problems.append(f"{where}.import_path: berthing's builder is berthing.ray:app")
            continue
        try:
            args = ServeArgs.model_validate(app.get("args", {}))
        except ValidationError as exc:
            problems += [f"{where}.args.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            continue
        name = model_name(args.model)
        if app["name"] != name:
            problems.append(f"{where}.name: the application is named after its model, {name!r}")
        if app.get("route_prefix") not in ("/" if index == 0 else None, f"/{name}"):
            problems.append(f"{where}.route_prefix: '/' for the first (default) model, else '/{name}'")
        for deployment in app.get("deployments", []):
            if deployment.get("name") != DEPLOYMENT:
                problems.append(f"{where}.deployments: berthing's application has one deployment, {DEPLOYMENT!r}")
    return problems


@functools.cache
def _built(import_path: str, args: str) -> Any:
    from ray._common.utils import import_attr

    return import_attr(import_path)(json.loads(args))


def built_deployment(app: dict[str, Any]) -> Any:
    """The deployment berthing's builder makes from the application's args (no cluster needed to build it)."""
    return _built(app["import_path"], json.dumps(app.get("args", {}), sort_keys=True))._bound_deployment


@pytest.mark.parametrize("name", ["rayservice.yaml serveConfigV2", "serve-config.yaml"])
def test_serve_configs_pass_ray_and_berthing(name: str) -> None:
    config = serve_configs()[name]
    assert serve_config_problems(config) == []
    for app in config["applications"]:
        deployment = built_deployment(app)  # the import path resolves and the builder takes the args
        args = ServeArgs.model_validate(app["args"])
        assert deployment.name == DEPLOYMENT and deployment.ray_actor_options["num_cpus"] == args.cpus


def test_the_serve_configs_bind_where_they_say() -> None:
    configs = serve_configs()
    assert configs["rayservice.yaml serveConfigV2"]["http_options"]["host"] == "0.0.0.0"  # the pod's network only
    assert configs["serve-config.yaml"]["http_options"]["host"] == "127.0.0.1"  # a hand-started cluster: loopback
    for config in configs.values():
        assert config["http_options"].get("port", 8000) == 8000  # KubeRay's serve port, the Services' target
    # the two files run the same application, apart from how many replicas a hand-started cluster gets
    (kube,), (plain,) = (c["applications"] for c in configs.values())
    assert {k: v for k, v in kube.items() if k != "args"} == {k: v for k, v in plain.items() if k != "args"}


def test_the_serve_config_check_reports_misspelled_keys_at_every_level() -> None:
    from ray.serve.schema import ServeDeploySchema

    base = serve_configs()["serve-config.yaml"]
    app = ["applications", 0]
    cases: dict[str, tuple[list[Any], str, Any]] = {  # needle: (where, key, value)
        "config.http_option": ([], "http_option", {"host": "127.0.0.1"}),
        "http_options.hots": (["http_options"], "hots", "0.0.0.0"),
        "applications[0].route_prefx": (app, "route_prefx", "/x"),
        "deployments[0].max_ongoing_request": (app, "deployments", [{"name": DEPLOYMENT, "max_ongoing_request": 8}]),
        "ray_actor_options.num_cpu": (app, "deployments", [{"name": DEPLOYMENT, "ray_actor_options": {"num_cpu": 1}}]),
        "runtime_env.env_var": (app, "runtime_env", {"env_var": {"A": "1"}}),
    }
    for needle, (where, key, value) in cases.items():
        broken = copy.deepcopy(base)
        node = broken
        for step in where:
            node = node[step]
        node[key] = value
        ServeDeploySchema.model_validate(broken)  # Ray takes each of these without a word
        problems = serve_config_problems(broken)
        assert any(needle in problem for problem in problems), (needle, problems)
    # berthing's own layer: the builder's args (ServeArgs forbids unknown ones) and the settings in them
    for needle, change in {
        "args.autoscal": {"autoscal": "1:4"},
        "unknown berthing setting(s): max_batch_token": {"settings": {"max_batch_token": 512}},
        "args.cpus": {"cpus": 0},
    }.items():
        broken = copy.deepcopy(base)
        broken["applications"][0]["args"].update(change)
        assert any(needle in problem for problem in serve_config_problems(broken)), needle
    # and what Ray itself refuses is reported as Ray's
    broken = copy.deepcopy(base)
    broken["proxy_location"] = "Everywhere"
    assert serve_config_problems(broken)[0].startswith("Ray: proxy_location")
    no_host = copy.deepcopy(base)
    del no_host["http_options"]["host"]
    assert any("http_options.host" in problem for problem in serve_config_problems(no_host))
