"""Settings from the environment (prefix ``ROTA_``, ``.env`` honoured), built once, passed down."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROTA_", env_file=".env", extra="ignore")

    redis_url: str | None = None  # unset: the embedded Redis under ROTA_HOME
    home: str = ".rota"  # the embedded Redis's folder

    inbound_stream: str = "rota:inbound"
    # > 1: the inbound stream is split into rota:inbound:0 .. :N-1 (worker.partitions)
    inbound_partitions: int = Field(1, ge=1, le=1024)
    partition_block_ms: int = Field(20, ge=1)  # blocking read on one partition when all idle
    events_stream: str = "rota:assignments"
    dead_stream: str = "rota:dead"
    group: str = "rota"
    events_maxlen: int = Field(1_000_000, ge=0)  # approximate trim; 0 keeps everything

    claim_idle_ms: int = Field(30_000, ge=1)
    max_deliveries: int = Field(5, ge=1)
    batch_size: int = Field(200, ge=1, le=10_000)
    block_ms: int = Field(2_000, ge=1)  # short, so a stop request is seen quickly
    shutdown_budget_s: float = Field(20.0, gt=0)

    max_message_bytes: int = Field(64 * 1024, ge=256)
    dedup_window_s: int = Field(86_400, ge=1)  # a repeat is recognised for 1-2 windows

    consumer: str | None = None  # default: HOSTNAME:PID
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"
    metrics_port: int | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
