"""The config: TOML file -> frozen dataclasses, validated once; errors name file, key, problem.

``model`` is what the daemon uses, ``schema`` the file's declared shape, ``loader`` reads a
file into the model, ``summary`` renders it for ``check-config``.
"""

from __future__ import annotations

from poller.config.durations import format_duration, parse_duration
from poller.config.loader import (
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_PATH,
    load_config,
    resolve_config_path,
)
from poller.config.model import (
    Config,
    DeliveryConfig,
    DiscoveryConfig,
    HmsConfig,
    LogConfig,
    PollConfig,
    RoomConfig,
    Secret,
    ServerConfig,
    StoreConfig,
    WebhookConfig,
)
from poller.config.schema import json_schema
from poller.config.summary import describe
from poller.config.values import identifier_hint, url_origin, url_secrets
from poller.errors import ConfigError

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "DeliveryConfig",
    "DiscoveryConfig",
    "HmsConfig",
    "LogConfig",
    "PollConfig",
    "RoomConfig",
    "Secret",
    "ServerConfig",
    "StoreConfig",
    "WebhookConfig",
    "describe",
    "format_duration",
    "identifier_hint",
    "json_schema",
    "load_config",
    "parse_duration",
    "resolve_config_path",
    "url_origin",
    "url_secrets",
]
