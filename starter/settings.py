"""oppflow settings: environment variables, optionally mirrored in a `.env` file."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_JWT_SECRET = "oppflow-dev-only-secret-change-me-in-production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OPPFLOW_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # None means: run the embedded PostgreSQL under data_dir.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    data_dir: Path = Path(".oppflow")
    task_queue: str = "opportunities"
    api_port: int = 8000
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_secret: str | None = None
    jwt_secret: str = DEV_JWT_SECRET
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    db_pool_min: int = 1
    db_pool_max: int = 10
    # Open deals a worker keeps in memory (about 115 KiB each); beyond it, a deal is replayed
    # from its history when it next gets a message.
    max_cached_workflows: int = Field(default=5000, ge=0)
    # Workflow tasks a worker runs at once; more only queue up inside the worker and time out.
    max_concurrent_workflow_tasks: int = Field(default=50, ge=2)
    # How long a cached deal's next task waits for this worker before Temporal hands it to
    # any worker, which replays the deal from its history (the SDK's default, 10 s). Longer
    # saves those replays when a burst (a storm of due deals) queues more work than that;
    # shorter moves a crashed worker's deals sooner (docs/performance.md, the storm).
    sticky_queue_timeout_seconds: float = Field(default=10.0, gt=0)
    # The SDK's workflow sandbox guards workflow code against non-deterministic calls. Off,
    # a worker handles about 40% more stage changes (docs/performance.md); the replay
    # tests are then the only guard.
    workflow_sandbox: bool = True
    metrics_port: int | None = None
    public_url: str | None = None  # where people reach the API; used in action links
    api_host: str = "127.0.0.1"

    def api_public_url(self) -> str:
        """Where people reach the API (for action links in notifications)."""
        return self.public_url or f"http://localhost:{self.api_port}"

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @field_validator("database_url", "webhook_secret", "metrics_port", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
