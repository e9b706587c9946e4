"""Settings read from the environment (``REDBATCH_*``), validated by pydantic-settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_URL = "sqlite:///./redbatch.db"


class Settings(BaseSettings):
    """Every setting has a ``REDBATCH_`` environment variable; see the README's table."""

    model_config = SettingsConfigDict(env_prefix="REDBATCH_", extra="ignore")

    url: str = Field(DEFAULT_URL, description="Store URL: sqlite:///file.db, redis://..., memory://")
    prefix: str = Field("redbatch", min_length=1, max_length=64, description="Prefix of every Redis key")
    partitions: int = Field(1, ge=1, le=1024, description="Redis partitions (hash tags) per batcher")
    connect_timeout: float = Field(3.0, gt=0, le=60, description="Seconds to reach the store before failing")
    socket_timeout: float = Field(10.0, gt=0, le=300, description="Seconds one store command may take")
    sqlite_busy_timeout: float = Field(
        5.0, gt=0, le=300, description="Seconds a SQLite writer waits for the lock"
    )
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full", description="SQLite's synchronous mode: full (power-safe) or normal (crash-safe)"
    )

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class ServiceSettings(BaseSettings):
    """The HTTP service's settings (``redbatch serve``), apart from the store's: ``connect``
    takes no token."""

    model_config = SettingsConfigDict(env_prefix="REDBATCH_", extra="ignore")

    api_token: SecretStr | None = Field(
        default=None, description="Bearer token every mutating HTTP endpoint requires; unset: none required"
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1, le=1 << 30, description="The largest HTTP request body, in bytes (413 beyond)"
    )

    @field_validator("api_token")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty REDBATCH_API_TOKEN= most likely meant a token that went missing: refuse it
        # rather than serve every mutating endpoint to anyone.
        if value is not None and not value.get_secret_value():
            raise ValueError("REDBATCH_API_TOKEN is set but empty; unset it to require no token")
        return value
