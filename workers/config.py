"""Worker knobs, from ``NERLOOP_*`` environment variables like the service's settings.

``NERLOOP_TRAIN_CONFIG`` overrides fields of ``active_learning.training.TrainConfig`` for every
training the workers run, as JSON: ``NERLOOP_TRAIN_CONFIG='{"epochs": 5, "learning_rate": 3e-3}'``.
A ``config`` keyword given to the ``nerloop.train`` task overrides it again, field by field.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NERLOOP_", env_file=".env", extra="ignore")

    train_config: dict[str, Any] = {}  # TrainConfig fields, e.g. {"epochs": 5}
    score_shard_size: int = 256  # pool tasks per scoring shard
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


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
