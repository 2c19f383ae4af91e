from __future__ import annotations

from pathlib import Path

import pytest

from cache import CacheConfig, InvalidInput
from server import Settings


def test_defaults() -> None:
    settings = Settings.load(environ={})
    assert settings.host == "127.0.0.1" and settings.port == 8080
    assert settings.threshold == CacheConfig().threshold and settings.default_ttl_s is None
    assert settings.margin == CacheConfig().margin
    assert settings.admin_token is None


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    config = tmp_path / "semcache.toml"
    config.write_text('port = 9000\nthreshold = 0.8\ndata_dir = "/from/file"\n')
    env = {
        "SEMCACHE_CONFIG": str(config),
        "SEMCACHE_THRESHOLD": "0.85",
        "SEMCACHE_DEFAULT_TTL_S": "3600",
        "SEMCACHE_ADMIN_TOKEN": "tok",
    }
    settings = Settings.load(environ=env, overrides={"data_dir": "/from/flag", "port": None})
    assert settings.port == 9000  # file
    assert settings.threshold == 0.85  # env beats file
    assert settings.data_dir == "/from/flag"  # flag beats all
    assert settings.default_ttl_s == 3600.0
    assert settings.admin_token == "tok"


def test_empty_env_value_unsets_optional() -> None:
    settings = Settings.load(environ={"SEMCACHE_DEFAULT_TTL_S": ""})
    assert settings.default_ttl_s is None


def test_admin_token_is_not_in_repr() -> None:
    settings = Settings(admin_token="very-secret-token")
    assert "very-secret-token" not in repr(settings)
    assert "***" in repr(settings)


@pytest.mark.parametrize(
    "env",
    [
        {"SEMCACHE_PORT": "eighty"},
        {"SEMCACHE_PORT": "70000"},
        {"SEMCACHE_THRESHOLD": "1.5"},
        {"SEMCACHE_DEFAULT_TTL_S": "-1"},
        {"SEMCACHE_MAX_BODY_BYTES": "0"},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        Settings.load(environ=env)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "semcache.toml"
    config.write_text("treshold = 0.8\n")
    with pytest.raises(InvalidInput, match="treshold"):
        Settings.load(environ={}, config_file=config)
