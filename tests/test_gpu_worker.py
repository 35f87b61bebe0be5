"""The gpu queue's worker configuration, run on a CPU: ``nerloop worker --queues gpu,cpu`` picks the solo
pool (no fork after CUDA is initialised), trains, exports and checks the ONNX models inside the atomic
save, and scores the pool with the int8 model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from sqlmodel import select

from active_learning.onnx_tagger import CHECK_FILE, INT8_FILE, ONNX_FILE
from service.models import JobStatus, ModelStatus, Prediction, Task, TaskState
from support import NERLOOP, REPO, TINY_TRAIN, wait_until
from test_workers import (  # noqa: F401  (label_studio_recorder, use_env: fixtures)
    label_studio_recorder,
    make_deployment,
    new_project,
    request,
    score_job,
    use_env,
    versions,
    wait_job,
)


class CliWorker:
    """``nerloop worker`` with its defaults for the queues given, in a process group of its own."""

    def __init__(self, env: dict, queues: str, log: Path):
        full = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
        full.update(env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        self.log = log
        self._output = log.open("w")
        self.process = subprocess.Popen([*NERLOOP, "worker", "--queues", queues], cwd=REPO, env=full, stdout=self._output,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: " ready." in log.read_text() or self.process.poll() is not None, 120, message="the worker to start")
        assert self.process.poll() is None, log.read_text()[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._output.close()


@pytest.mark.integration
def test_the_gpu_queue_worker_runs_solo_and_trains_exports_and_scores_with_onnx(tmp_path, tiny_encoder, label_studio_recorder, use_env):  # noqa: F811
    deployment = make_deployment(
        tmp_path, tiny_encoder, f"sqla+sqlite:///{tmp_path / 'home' / 'broker.db'}", f"db+sqlite:///{tmp_path / 'home' / 'results.db'}",
        label_studio_recorder.url, NERLOOP_TRAIN_CONFIG=json.dumps({**TINY_TRAIN, "epochs": 40}), NERLOOP_INFERENCE="auto",
    )
    use_env(deployment)
    project_id = new_project(deployment, labelled=40, pool=12)
    worker = CliWorker(deployment.env, "gpu,cpu", tmp_path / "worker.log")
    try:
        assert "(solo)" in worker.log.read_text()  # the banner's "concurrency: 1 (solo)"
        training = wait_job(deployment, request(deployment, project_id, "train"), worker, timeout=180)
        assert training.status == JobStatus.succeeded, training.error
        [active] = [v for v in versions(deployment, project_id) if v.status == ModelStatus.active]
        directory = Path(active.path)
        assert all((directory / name).is_file() for name in (ONNX_FILE, INT8_FILE, CHECK_FILE))
        check = active.metrics["onnx"]
        assert check["passed"] and check["dev_size"] > 0 and check["int8_dev_f1"] >= check["torch_dev_f1"] - 0.005, check

        scoring = wait_job(deployment, score_job(deployment, project_id, active.id), worker)
        with deployment.session() as session:
            pool = session.exec(select(Task.id).where(Task.project_id == project_id, Task.state == TaskState.pool)).all()
            scores = session.exec(select(Prediction.score).where(Prediction.model_version_id == active.id)).all()
        assert scoring.status == JobStatus.succeeded and scoring.progress["scored"] == len(pool) >= 12, scoring
        assert len(scores) == len(pool) and all(0 < s <= 1 for s in scores)
        assert f"loaded {directory}: forward pass in ONNX Runtime (int8)" in worker.log.read_text()
    finally:
        worker.stop()


def test_worker_threads_honour_the_hosts_split_and_apply_in_the_solo_pool(monkeypatch):
    """Two 1-thread worker processes on a 2-core host must stay 1 thread each (OMP_NUM_THREADS), not
    take every core each (the 0.57x scale-out of bench/scoring.json); a solo worker applies
    NERLOOP_TORCH_THREADS in its main process, where its tasks run."""
    import torch

    from service.settings import get_settings
    from workers import celery_app

    before, concurrency = torch.get_num_threads(), celery_app.app.conf.worker_concurrency
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        celery_app.app.conf.worker_concurrency = 1
        get_settings.cache_clear()
        celery_app._torch_threads()
        assert torch.get_num_threads() == 1  # not the machine's cores
        monkeypatch.setenv("NERLOOP_TORCH_THREADS", "2")
        get_settings.cache_clear()
        celery_app._solo_torch_threads(sender=type("Worker", (), {"pool_cls": "solo"})())
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        celery_app._solo_torch_threads(sender=type("Worker", (), {"pool_cls": "prefork"})())
        assert torch.get_num_threads() == 1  # prefork: its pool processes set theirs
    finally:
        torch.set_num_threads(before)
        celery_app.app.conf.worker_concurrency = concurrency
        monkeypatch.undo()
        get_settings.cache_clear()
