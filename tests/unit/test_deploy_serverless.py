"""serverless.yml, checked offline: against the Serverless Framework v3's config schema (vendored,
tests/fixtures/serverless) made strict, since Serverless ignores keys it does not know (a misspelled key is an error
here), against template.yaml (the two deploy the same function), and its CloudFormation resources with cfn-lint.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.schemas import Validator, schema_errors, strict

ROOT = Path(__file__).resolve().parents[2]
SERVERLESS = ROOT / "serverless.yml"
TEMPLATE = ROOT / "template.yaml"
SERVERLESS_SCHEMA = ROOT / "tests" / "fixtures" / "serverless" / "serverless-3.40.0.schema.json"


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !If, ...) read as their long forms."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)
_VARIABLE = re.compile(r"\$\{(\w+):([^}]*)\}")


def serverless_config(**params: Any) -> dict[str, Any]:
    """serverless.yml with its ${param:NAME} variables resolved (the defaults, or `params`), as `serverless` resolves
    them before it validates; any other variable source would need resolving here first."""
    config = yaml.safe_load(SERVERLESS.read_text("utf-8"))
    values = {**config.get("params", {}).get("default", {}), **params}

    def value(match: re.Match[str]) -> Any:
        source, name = match.group(1), match.group(2).strip()
        assert source == "param", f"this test resolves ${{param:...}} only, not {match.group(0)}"
        return values[name]

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: resolve(item) for key, item in node.items() if item is not None}  # serverless drops nulls
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if isinstance(node, str):
            whole = _VARIABLE.fullmatch(node)
            return value(whole) if whole else _VARIABLE.sub(lambda m: str(value(m)), node)
        return node

    return resolve(config)


@functools.cache
def serverless_validator() -> Any:
    schema = json.loads(SERVERLESS_SCHEMA.read_text("utf-8"))
    Validator.check_schema(schema)
    return Validator(strict(schema))


def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text("utf-8"), Loader=_CfnLoader)  # a SafeLoader subclass


def test_serverless_yml_matches_the_serverless_v3_schema() -> None:
    assert serverless_validator()  # the vendored schema is a valid draft-7 schema
    assert schema_errors(serverless_validator(), serverless_config()) == []
    with_bucket = serverless_config(modelSource="s3://my-models/sentiment-1.0.berth", modelBucket="my-models", memorySize=3008)
    assert schema_errors(serverless_validator(), with_bucket) == []
    readme = (SERVERLESS_SCHEMA.parent / "README.md").read_text("utf-8")
    assert "serverless@3.40.0" in readme and (SERVERLESS_SCHEMA.parent / "dump-schema.js").is_file()
    assert str(yaml.safe_load(SERVERLESS.read_text("utf-8"))["frameworkVersion"]) == "3"


def test_the_serverless_check_reports_misspelled_keys_and_wrong_values() -> None:
    base = serverless_config()
    cases = {
        "memorySzie": lambda c: c["functions"]["berthing"].update(memorySzie=2048),  # Serverless: "unrecognized property"
        "architecure": lambda c: c["provider"].update(architecure="x86_64"),
        "buildArg": lambda c: c["provider"]["ecr"]["images"]["berthing"].update(buildArg={}),
        "authorizer": lambda c: c["functions"]["berthing"]["url"].update(authorizer="iam"),
        "timeout": lambda c: c["functions"]["berthing"].update(timeout=901),
        "httpAPI": lambda c: c["functions"]["berthing"]["events"].append({"httpAPI": {"method": "GET", "path": "/"}}),
    }
    for needle, change in cases.items():
        broken = copy.deepcopy(base)
        change(broken)
        errors = schema_errors(serverless_validator(), broken)
        assert errors and any(needle in error for error in errors), (needle, errors)


def _template_function() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(parameter defaults, the SAM function with Globals applied and Refs to parameters resolved, the raw function)."""
    sam = template()
    defaults = {name: p.get("Default") for name, p in sam["Parameters"].items()}
    (function,) = [r for r in sam["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    merged = {**sam.get("Globals", {}).get("Function", {}), **function["Properties"]}

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Ref"} and node["Ref"] in defaults:
                return defaults[node["Ref"]]
            return {key: resolve(item) for key, item in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return defaults, resolve(merged), function


def test_serverless_yml_and_template_yaml_deploy_the_same_function() -> None:
    defaults, sam, raw = _template_function()
    config = serverless_config()
    (function,) = config["functions"].values()
    provider = config["provider"]
    # parameters: template.yaml's, lower camel case, same defaults
    params = yaml.safe_load(SERVERLESS.read_text("utf-8"))["params"]["default"]
    assert params == {name[0].lower() + name[1:]: value for name, value in defaults.items()}
    # memory, timeout, architecture
    assert function.get("memorySize", provider.get("memorySize")) == sam["MemorySize"]
    assert function.get("timeout", provider.get("timeout")) == sam["Timeout"]
    assert [function.get("architecture", provider.get("architecture", "x86_64"))] == sam["Architectures"]
    # the environment, both as values and as which parameter feeds each variable
    assert {**provider.get("environment", {}), **function.get("environment", {})} == sam["Environment"]["Variables"]
    raw_env = yaml.safe_load(SERVERLESS.read_text("utf-8"))["functions"]["berthing"]["environment"]
    for key, ref in raw["Properties"]["Environment"]["Variables"].items():
        assert raw_env[key] == "${param:" + ref["Ref"][0].lower() + ref["Ref"][1:] + "}", key
    # routes: the HTTP API's, and the function URL with IAM auth
    events = [e["Properties"] for e in sam["Events"].values() if e["Type"] == "HttpApi"]
    sam_routes = {(e["Method"].upper(), e["Path"]) for e in events}
    routes = {(e["httpApi"]["method"].upper(), e["httpApi"]["path"]) for e in function["events"] if "httpApi" in e}
    assert routes == sam_routes and len(routes) == len(function["events"])
    assert sam["FunctionUrlConfig"]["AuthType"] == "AWS_IAM" and function["url"]["authorizer"] == "aws_iam"
    # the image: the same Dockerfile, context and build arguments
    metadata = raw["Metadata"]
    image = provider["ecr"]["images"][function["image"]["name"]]
    assert image["file"] == metadata["Dockerfile"] and Path(image["path"]) == Path(metadata["DockerContext"])
    assert image["buildArgs"] == metadata["DockerBuildArgs"] and (ROOT / image["file"]).is_file()


def test_serverless_yml_reads_the_model_bucket_only_when_one_is_named() -> None:
    sam = template()
    assert sam["Conditions"]["ReadsFromS3"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ModelBucket"}, ""]}]}
    for bucket in ("", "my-models"):
        resources = serverless_config(modelBucket=bucket)["resources"]
        assert resources["Conditions"]["ReadsFromS3"] == {"Fn::Not": [{"Fn::Equals": [bucket, ""]}]}
        (policy,) = [r for r in resources["Resources"].values() if r["Type"] == "AWS::IAM::Policy"]
        assert policy["Condition"] == "ReadsFromS3" and policy["Properties"]["Roles"] == [{"Ref": "IamRoleLambdaExecution"}]
        grants = {(a, s["Resource"]) for s in policy["Properties"]["PolicyDocument"]["Statement"] for a in s["Action"]}
        assert ("s3:GetObject", f"arn:aws:s3:::{bucket}/*") in grants


def test_serverless_resources_pass_cfn_lint(tmp_path: Path) -> None:
    """The CloudFormation serverless.yml adds (which Serverless's schema leaves unchecked), in a template with a
    stand-in for the function role Serverless makes (IamRoleLambdaExecution)."""
    resources = serverless_config(modelBucket="my-models")["resources"]
    role = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com"]}, "Action": ["sts:AssumeRole"]}
                ],
            }
        },
    }
    document = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Conditions": resources["Conditions"],
        "Resources": {**resources["Resources"], "IamRoleLambdaExecution": role},
    }
    path = tmp_path / "resources.json"
    path.write_text(json.dumps(document), "utf-8")
    # W8003: the condition compares two constants, since Serverless resolves ${param:...} when it packages
    command = [str(Path(sys.executable).parent / "cfn-lint"), "--ignore-checks", "W8003", "--", str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr + shlex.join(command)
