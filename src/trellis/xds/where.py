"""A position inside a config file: the file name and a proto field path."""

from __future__ import annotations

from dataclasses import dataclass

from trellis.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Where:
    """Names a field for error messages, e.g. `static_resources.listeners[0].name`."""

    source: str
    path: str = ""

    def at(self, name: str) -> Where:
        return Where(self.source, f"{self.path}.{name}" if self.path else name)

    def item(self, index: int) -> Where:
        return Where(self.source, f"{self.path}[{index}]")

    def key(self, key: str) -> Where:
        return Where(self.source, f'{self.path}["{key}"]')

    def error(self, message: str) -> ConfigError:
        return ConfigError(message, path=self.path, source=self.source)
