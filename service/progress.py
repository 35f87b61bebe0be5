"""One reading of a job's progress, for everything that shows it (the CLI's bars and tables, the
dashboard, the demo): how far it is and one line about it, from the fields its task writes into
``Job.progress`` (``workers.tasks``: training steps, scored pool tasks, augmented sources, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from .models import Job, JobStatus, Retraining


@dataclass(frozen=True)
class ProgressView:
    total: int | None  # steps, pool tasks or sources to go through; None while unknown
    done: int
    fraction: float | None  # 0..1; 1 once succeeded; None while the total is unknown
    summary: str


def progress_view(job: Job) -> ProgressView:
    progress = job.progress
    total = progress.get("total_steps") or progress.get("tasks") or progress.get("sources")
    done = progress.get("step") or progress.get("scored") or progress.get("done") or 0
    if job.status == JobStatus.succeeded:
        fraction = 1.0
    elif total:
        fraction = min(done / total, 1.0)
    else:
        fraction = None
    return ProgressView(total, done, fraction, _summary(job))


def _summary(job: Job) -> str:
    progress = job.progress
    if job.status == JobStatus.queued:
        return f"queued behind job {job.waiting_for}" if job.waiting_for else "queued (is a worker running? nerloop worker)"
    if "version" in progress:
        return _training_outcome(progress)
    parts = [progress.get("stage", job.status.value)]
    if progress.get("retraining") == Retraining.quick:
        parts[0] += " (quick stage)"
    if "epoch" in progress:
        parts.append(f"epoch {progress['epoch']}")
    if progress.get("total_steps"):
        parts.append(f"step {progress.get('step', 0)}/{progress['total_steps']}")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("dev_f1") is not None:
        parts.append(f"dev F1 {progress['dev_f1']:.3f}")
    if "tasks" in progress:
        parts.append(f"scored {progress.get('scored', 0)}/{progress['tasks']}")
    if "pushed" in progress:
        parts.append(f"pushed {progress['pushed']}")
    if "sources" in progress:
        parts.append(f"augmented {progress.get('done', 0)}/{progress['sources']} sources")
    if "kept" in progress:
        parts.append(f"kept {progress['kept']}, dropped {progress['dropped']}, duplicates {progress['duplicates']}")
    if "changed" in progress:
        parts.append(f"{progress['changed']} annotations changed")
    return " · ".join(str(p) for p in parts)


def _training_outcome(progress: dict) -> str:
    """What a finished training made of its version, and the stopping signal after it (``workers.retrain``
    writes these fields)."""
    version, f1, active_f1 = progress["version"], progress.get("dev_f1"), progress.get("active_dev_f1")
    score = f", dev F1 {f1:.3f}" if f1 is not None else ", no dev set to score it on"
    stopping = f" · {progress['stopping']}" if progress.get("stopping") else ""
    if progress.get("retraining") == Retraining.quick:
        stopping = " · quick stage: the full training follows"
    if not progress.get("promoted"):
        return f"{version} kept as candidate: {progress.get('decision', '')}{stopping}"
    if active_f1 is None:  # a promotion without comparison happens only when nothing was active
        return f"{version} promoted (no version was active){score}{stopping}"
    return f"{version} promoted{score} (the active version had {active_f1:.3f}){stopping}"
