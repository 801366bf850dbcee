"""Reading settings from the environment: how each plain setting is declared (``env``: its
variable, its default and how it is read, written once, on the settings field) and the reader
that parses and checks values, naming the variable in every error. ``gateway.settings`` and
``gateway.component_settings`` hold the settings themselves."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field, fields
from typing import Any, TypeVar, cast

from gateway.exceptions import ConfigError

T = TypeVar("T")

#: How a plain setting is read (``_Reader``): a positive number, a limit (0 disables it), an
#: integer of either kind, or a string.
POSITIVE, LIMIT, POSITIVE_INT, LIMIT_INT, TEXT = (
    "positive",
    "limit",
    "positive_int",
    "limit_int",
    "text",
)


def default_of(cls: type[Any], name: str) -> Any:
    """A field's declared default (a slotted dataclass has no class attribute to read)."""
    return next(spec.default for spec in fields(cls) if spec.name == name)


def boolean(raw: str) -> bool:
    """A switch: 1, true, yes or on; 0, false, no or off (any case)."""
    value = raw.lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(raw)
    return value in ("1", "true", "yes", "on")


def env(name: str, default: Any, kind: str = TEXT) -> Any:
    """A setting's one declaration: its variable, its default and how it is read."""
    return field(default=default, metadata={"env": name, "kind": kind})


class EnvReader:
    """Reads settings from an environment mapping; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def plain(self, cls: type[Any]) -> dict[str, Any]:
        """The fields of ``cls`` declared with ``env()``, read from their variables."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = spec.metadata.get("env")
            if name is None:
                continue
            kind, default = spec.metadata["kind"], cast(float, spec.default)
            if kind == TEXT:
                values[spec.name] = self.get(name, str, cast(str, spec.default))
            elif kind in (POSITIVE, POSITIVE_INT):
                value = self.positive(name, default)
                values[spec.name] = int(value) if kind == POSITIVE_INT else value
            else:
                value = self.limit(name, default)
                values[spec.name] = int(value) if kind == LIMIT_INT else value
        return values

    def declared(self, cls: type[T], **computed: Any) -> T:
        """A component: its ``env()`` fields read here, the rest given as ``computed``."""
        return cls(**self.plain(cls), **computed)

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name, "").strip()
        if raw == "":
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(name, f"cannot parse {raw!r} as {parse.__name__}") from None

    def items(self, name: str) -> tuple[str, ...]:
        """A comma-separated list, each entry stripped, empty ones dropped."""
        return tuple(t.strip() for t in self.get(name, str, "").split(",") if t.strip())

    def tokens(self, name: str) -> tuple[str, ...]:
        """Comma-separated secrets: several are accepted at once, for rotation."""
        values = self.items(name)
        if any(len(t) < 16 for t in values):
            raise ConfigError(name, "each token must be at least 16 characters")
        return values

    def limit(self, name: str, default: float) -> float:
        """A rate or count limit: 0 disables it."""
        value = self.get(name, float, default)
        if not 0 <= value < float("inf"):
            raise ConfigError(name, f"must be 0 (no limit) or a positive number, got {value!r}")
        return value

    def positive(self, name: str, default: float) -> float:
        value = self.get(name, float, default)
        if not value > 0 or value == float("inf"):
            raise ConfigError(name, f"must be a positive number, got {value!r}")
        return value
