"""Loaded models by name and version, with a default version per name; safe to change while requests flow."""

from __future__ import annotations

import threading

from berthing.engine.model import Model
from berthing.types import BerthingError, ModelNotFound


class Conflict(BerthingError):
    """The change asked for clashes with what is registered (duplicate version, deleting a needed default)."""

    code = 409
    type = "Conflict"


class Registry:
    """The server's model table; protocol adapters look models up here and nowhere else.

    A lock guards every read and change, so the management API can add or remove versions from a
    worker thread while the event loop looks models up per request."""

    def __init__(self) -> None:
        self._models: dict[str, dict[str, Model]] = {}
        self._default: dict[str, str] = {}
        self._lock = threading.RLock()

    def add(self, model: Model, make_default: bool = True, replace: bool = True) -> None:
        """Register a model version (the first version of a name becomes its default); 409 on a duplicate unless replace."""
        with self._lock:
            versions = self._models.setdefault(model.name, {})
            if not replace and model.version in versions:
                raise Conflict(f"model '{model.name}' version '{model.version}' is already registered")
            versions[model.version] = model
            if make_default or model.name not in self._default:
                self._default[model.name] = model.version

    def get(self, name: str, version: str | None = None) -> Model:
        """The model version asked for, or the default version; 404 names what exists."""
        with self._lock:
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

    def versions(self, name: str) -> list[Model]:
        """Every version of a name (404 when none), in version order."""
        with self._lock:
            self.get(name)
            return [self._models[name][v] for v in sorted(self._models[name])]

    def set_default(self, name: str, version: str) -> None:
        """Route unversioned requests to this version from now on."""
        with self._lock:
            self.get(name, version)
            self._default[name] = version

    def remove(self, name: str, version: str) -> Model:
        """Unroute a version (404 for it right after); the default goes only when it is the last version."""
        with self._lock:
            model = self.get(name, version)
            versions = self._models[name]
            if self._default[name] == version and len(versions) > 1:
                others = ", ".join(sorted(v for v in versions if v != version))
                raise Conflict(
                    f"version '{version}' is the default of model '{name}'; set another default first (versions: {others})"
                )
            del versions[version]
            if not versions:
                del self._models[name]
                del self._default[name]
            return model

    def all(self) -> list[Model]:
        """Every loaded model version."""
        with self._lock:
            return [m for versions in self._models.values() for m in versions.values()]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def crashed(self) -> dict[str, str]:
        """Models whose batcher stopped on an error (a bug, not a failing batch), as "name:version": why. Only a
        restart brings them back, so every liveness route of every protocol fails while one is listed."""
        return {
            f"{m.name}:{m.version}": m.batcher.problem or "its batcher stopped"
            for m in self.all()
            if m.batcher is not None and m.batcher.crashed is not None
        }

    def default_version(self, name: str) -> str:
        with self._lock:
            return self._default[name]
