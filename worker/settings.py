"""Settings from the environment (prefix ``ROTA_``, ``.env`` honoured), built once, passed down."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker import redis_url
from worker.partitions import stream_name

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROTA_", env_file=".env", extra="ignore")

    # A secret: the URL may carry the password (rediss://rota:PASSWORD@host:6380/0).
    redis_url: SecretStr | None = None  # unset: the embedded Redis under ROTA_HOME
    home: str = ".rota"  # the embedded Redis's folder
    # The client's only limits on waiting: redis-py retries nothing (the worker's loop retries).
    socket_connect_timeout_s: float = Field(5.0, gt=0)
    socket_timeout_s: float = Field(5.0, gt=0)  # a worker adds ROTA_BLOCK_MS: its reads block
    allow_eviction: bool = False  # run on a Redis whose maxmemory-policy may evict keys

    inbound_stream: str = "rota:inbound"
    # > 1: the inbound stream is split into rota:inbound:0 .. :N-1 (worker.partitions)
    inbound_partitions: int = Field(1, ge=1, le=1024)
    partition_block_ms: int = Field(20, ge=1)  # blocking read on one partition when all idle
    events_stream: str = "rota:assignments"
    dead_stream: str = "rota:dead"
    group: str = "rota"
    events_maxlen: int = Field(1_000_000, ge=0)  # approximate trim; 0 keeps everything
    # How often a worker trims what every group acknowledged off each inbound stream, and how
    # long acknowledged entries stay anyway (worker.retention).
    inbound_trim_every_s: float = Field(10.0, gt=0)
    sweep_every_ms: int = Field(250, ge=10, le=1_000)  # timers act within this, and a round trip
    inbound_keep_s: int = Field(0, ge=0)

    claim_idle_ms: int = Field(30_000, ge=1)
    max_deliveries: int = Field(5, ge=1)
    batch_size: int = Field(200, ge=1, le=10_000)
    block_ms: int = Field(2_000, ge=1)  # short, so a stop request is seen quickly
    shutdown_budget_s: float = Field(20.0, gt=0)

    max_message_bytes: int = Field(64 * 1024, ge=256)
    dedup_window_s: int = Field(86_400, ge=1)  # a repeat is recognised for 1-2 windows

    consumer: str | None = None  # default: HOSTNAME:PID
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"  # one of LOG_LEVELS, any case
    metrics_port: int | None = Field(None, ge=0, le=65535)  # unset: no metrics server
    metrics_addr: str = "0.0.0.0"

    webhook_url: str | None = Field(None, pattern=r"^https?://")  # unset: no webhooks
    webhook_secret: SecretStr | None = None  # required with webhook_url: every POST is signed
    webhook_queue: str = Field("webhooks", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    webhook_retries: int = Field(8, ge=0, le=25)
    webhook_backoff_s: int = Field(2, ge=0)  # the first retry's wait; each next one doubles
    webhook_timeout_s: float = Field(10.0, gt=0)

    # The HTTP side (rota serve)
    http_addr: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    api_token: SecretStr | None = None  # required for /api and the console
    whatsapp_app_secret: SecretStr | None = None  # required for POST /whatsapp
    whatsapp_verify_token: SecretStr | None = None  # required for GET /whatsapp
    http_max_body_bytes: int = Field(1024 * 1024, ge=1024)  # a request body past it: 413

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    # A model validator, not a field one: its error shows the settings with the URL masked,
    # where a field validator's would show the URL, password included.
    @model_validator(mode="after")
    def _redis_url_usable(self) -> Self:
        if self.redis_url is None:
            return self
        url = self.redis_url.get_secret_value()
        found = "is empty; unset it for the embedded Redis" if not url else redis_url.problem(url)
        if found is not None:
            raise ValueError(f"ROTA_REDIS_URL {found}")
        return self

    @model_validator(mode="after")
    def _one_stream_per_role(self) -> Self:
        """A dead stream that is also the inbound one feeds every bad entry back to the
        workers, which dead-letter it again, without end."""
        count = self.inbound_partitions
        inbound = (stream_name(self.inbound_stream, i, count) for i in range(count))
        roles = dict.fromkeys(inbound, "ROTA_INBOUND_STREAM")
        for variable, name in (
            ("ROTA_EVENTS_STREAM", self.events_stream),
            ("ROTA_DEAD_STREAM", self.dead_stream),
        ):
            if name in roles:
                raise ValueError(f"{variable} {name!r} is also the stream of {roles[name]}")
            roles[name] = variable
        return self

    @model_validator(mode="after")
    def _webhook_signed(self) -> Self:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("ROTA_WEBHOOK_SECRET is required when ROTA_WEBHOOK_URL is set")
        return self
