"""Fixtures for the bootstrap translation tests: the reference bootstraps as dicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from trellis.core.config import ProxyConfig
from trellis.xds.bootstrap import parse_bootstrap
from trellis.xds.compile import compile_bootstrap

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def full_dict() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DATA / "full.yaml").read_text())
    return loaded


@pytest.fixture
def minimal_dict() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DATA / "minimal.yaml").read_text())
    return loaded


@pytest.fixture
def compile_dict() -> Callable[[dict[str, Any]], ProxyConfig]:
    def run(data: dict[str, Any]) -> ProxyConfig:
        return compile_bootstrap(parse_bootstrap(data, "test.yaml"), "test.yaml")

    return run
