"""The root of every error Trellis raises on purpose."""


class TrellisError(Exception):
    """Base class: anything Trellis raises deliberately derives from this."""


class ConfigError(TrellisError):
    """A configuration was rejected; the message names the file and field path."""

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.path = path
        self.source = source
        where = ": ".join(part for part in (source, path) if part)
        super().__init__(f"{where}: {message}" if where else message)
