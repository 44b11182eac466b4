"""Loaded models by name and version, with a default version per name."""

from __future__ import annotations

from berthing.engine.model import Model
from berthing.types import ModelNotFound


class Registry:
    """The server's model table; protocol adapters look models up here and nowhere else."""

    def __init__(self) -> None:
        self._models: dict[str, dict[str, Model]] = {}
        self._default: dict[str, str] = {}

    def add(self, model: Model, make_default: bool = True) -> None:
        """Register a model version (the first version of a name becomes its default)."""
        versions = self._models.setdefault(model.name, {})
        versions[model.version] = model
        if make_default or model.name not in self._default:
            self._default[model.name] = model.version

    def get(self, name: str, version: str | None = None) -> Model:
        """The model version asked for, or the default version; 404 names what exists."""
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model '{name}' not found (models: {known})")
        if version is None:
            return versions[self._default[name]]
        if version not in versions:
            raise ModelNotFound(
                f"version '{version}' of model '{name}' not found (versions: {', '.join(sorted(versions))})"
            )
        return versions[version]

    def all(self) -> list[Model]:
        """Every loaded model version."""
        return [m for versions in self._models.values() for m in versions.values()]

    def names(self) -> list[str]:
        return sorted(self._models)

    def default_version(self, name: str) -> str:
        return self._default[name]
