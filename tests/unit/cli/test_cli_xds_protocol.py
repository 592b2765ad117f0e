"""Which ADS protocol the proxy speaks: `trellis proxy --xds` defaults to delta
(`DELTA_GRPC`), `--xds-protocol sotw` picks state of the world, and a bootstrap
chooses with `dynamic_resources.ads_config.api_type` as in Envoy."""

from __future__ import annotations

from typing import Any

import pytest

from trellis.core.addresses import SocketAddress
from trellis.errors import ConfigError
from trellis.proxy.cli import main
from trellis.proxy.main import load
from trellis.xds.bootstrap import parse_bootstrap, with_ads
from trellis.xds.compile import compile_bootstrap

CONTROL_PLANE = SocketAddress("127.0.0.1", 15010)
NODE = {"id": "web-1", "cluster": "web"}


def test_xds_speaks_delta_unless_told_sotw() -> None:
    message, config = load(None, xds=CONTROL_PLANE, node=NODE)
    assert config.ads is not None and config.ads.delta
    assert message.dynamic_resources.ads_config.api_type == 3  # DELTA_GRPC
    message, config = load(None, xds=CONTROL_PLANE, node=NODE, xds_delta=False)
    assert config.ads is not None and not config.ads.delta
    assert message.dynamic_resources.ads_config.api_type == 2  # GRPC


def _with_api_type(api_type: str) -> Any:
    bootstrap = with_ads(parse_bootstrap({"node": NODE}, "test"), CONTROL_PLANE)
    bootstrap.dynamic_resources.ads_config.api_type = api_type
    return bootstrap


@pytest.mark.parametrize(("api_type", "delta"), [("GRPC", False), ("DELTA_GRPC", True)])
def test_a_bootstrap_picks_the_protocol_with_api_type(api_type: str, delta: bool) -> None:
    config = compile_bootstrap(_with_api_type(api_type), "boot.yaml")
    assert config.ads is not None and config.ads.delta is delta


@pytest.mark.parametrize("api_type", ["REST", "AGGREGATED_DELTA_GRPC"])
def test_other_api_types_are_refused_naming_the_field(api_type: str) -> None:
    with pytest.raises(ConfigError, match=f"value {api_type} is not supported") as info:
        compile_bootstrap(_with_api_type(api_type), "boot.yaml")
    assert "dynamic_resources.ads_config.api_type" in str(info.value)


def test_the_flag_is_checked_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as bad_value:
        main(["--xds", "127.0.0.1:15010", "--xds-protocol", "incremental"])
    assert bad_value.value.code == 2
    assert "--xds-protocol: invalid choice: 'incremental'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as without_xds:
        main(["--bootstrap", "boot.yaml", "--xds-protocol", "sotw"])
    assert without_xds.value.code == 2
    assert "--xds-protocol: needs --xds" in capsys.readouterr().err
