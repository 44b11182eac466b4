"""Strict JSON schema validation for the deploy files' tests (KubeRay's RayService CRD, Serverless's config schema).

Why strict: the readers of those files ignore keys they do not know. The Kubernetes apiserver prunes fields its CRD
does not list, and the Serverless Framework deploys a config with unknown keys (at most it warns), so a misspelled key
would deploy silently with its default. The tests therefore make each schema strict (`strict`: every object that lists
its properties allows no others) and validate with the keywords those schemas add to draft 7 (`Validator`: Kubernetes'
x-kubernetes-list-type, ajv-keywords' `regexp`).
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema

COMBINATORS = ("anyOf", "oneOf", "allOf", "not")


def strict(schema: Any, *, branch: bool = False) -> Any:
    """A copy of a JSON/OpenAPI schema in which every object that lists its `properties` allows no others.

    Left as they are: objects that already say what else they allow (additionalProperties, patternProperties), those
    Kubernetes keeps unknown fields of (x-kubernetes-preserve-unknown-fields), empty `properties` (a free-form map),
    and objects combined with anyOf/oneOf/allOf, as a parent or as a branch: there another schema may list the other
    properties, and closing one would refuse them. OpenAPI's `nullable` becomes JSON schema's null alternative."""
    if isinstance(schema, list):
        return [strict(item, branch=branch) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions") and isinstance(value, dict):
            out[key] = {name: strict(sub) for name, sub in value.items()}  # names, not keywords
        else:
            out[key] = strict(value, branch=key in COMBINATORS)
    if (
        schema.get("properties")
        and isinstance(schema["properties"], dict)
        and "additionalProperties" not in schema
        and "patternProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and not branch
        and not any(key in schema for key in COMBINATORS)
    ):
        out["additionalProperties"] = False
    if schema.get("nullable") is True:
        out = {"anyOf": [{"type": "null"}, {k: v for k, v in out.items() if k != "nullable"}]}
    return out


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict[str, Any]) -> Any:
    """Kubernetes' x-kubernetes-list-type: items of a `set` are unique, items of a `map` unique by their map keys
    (an omitted key counts as its default, as the apiserver defaults it first: a port's protocol is TCP)."""
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"{item!r} is listed twice (x-kubernetes-list-type: set)")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        defaults = schema.get("items", {}).get("properties", {})
        found: set[tuple[Any, ...]] = set()
        for item in instance:
            if isinstance(item, dict):
                key = tuple(item.get(k, defaults.get(k, {}).get("default")) for k in keys)
                if key in found:
                    yield jsonschema.ValidationError(f"two items with {dict(zip(keys, key, strict=True))} (list-map keys)")
                found.add(key)


def _regexp(validator: Any, regexp: str | dict[str, str], instance: Any, schema: dict[str, Any]) -> Any:
    """The Serverless Framework's `regexp` keyword (ajv-keywords'): "/PATTERN/FLAGS", or {pattern, flags}."""
    if isinstance(regexp, str):
        pattern, flags = re.fullmatch(r"/(.*)/([gimuy]*)", regexp, re.DOTALL).groups()  # type: ignore[union-attr]
    else:
        pattern, flags = regexp["pattern"], regexp.get("flags") or ""
    if isinstance(instance, str) and not re.search(pattern, instance, re.IGNORECASE if "i" in flags else 0):
        yield jsonschema.ValidationError(f"{instance!r} does not match /{pattern}/{flags}")


Validator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-type": _list_type, "regexp": _regexp}
)


def schema_errors(validator: Any, instance: Any) -> list[str]:
    """Every error, deepest first within a failing anyOf/oneOf, as 'path: message'."""
    found = []
    for error in validator.iter_errors(instance):
        best = jsonschema.exceptions.best_match([error])
        found.append(f"{best.json_path}: {best.message}")
    return sorted(found)
