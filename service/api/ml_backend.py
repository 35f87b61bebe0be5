"""The Label Studio ML-backend protocol (what "Connect Model" talks to), served under /ml.

Label Studio sends its project as ``"<id>.<created-at timestamp>"``; the leading id finds our
project row (``Project.ls_project_id``), whose tag names shape the regions. A Label Studio project
we do not know still gets well-formed (empty) results, with tag names read from its label config.
Every request answers with exactly one result per task.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, select

from ..errors import Invalid
from ..label_studio import LabelStudioError, parse_labelling_config
from ..models import Project
from ..operations import jobs
from ..predictor import ModelLoadError, Predictor, samples_for, task_scores
from ..schemas import MAX_ID, MAX_PREDICT_CHARACTERS, MLRegion, MLRegionValue, MLTaskResult, MLWebhookAnswer
from ..settings import Settings
from ..versions import active_version

logger = logging.getLogger(__name__)

UNTRAINED = "untrained"
MODEL_CLASS = "NerloopTagger"


@dataclass(frozen=True)
class TagNames:
    from_name: str = "label"
    to_name: str = "text"
    text_key: str = "text"


def label_studio_project_id(reference: str | None) -> int | None:
    """12 from "12.1717171717" or "12"; None for anything else."""
    match = re.match(r"^\s*(\d{1,19})(?:\.|\s*$)", reference or "")
    if match is None:
        return None
    value = int(match.group(1))
    return value if 1 <= value <= MAX_ID else None


def tag_names_from_config(label_config: str | None) -> TagNames:
    """Tag names from a labelling config (its NER ``Labels`` on ``Text``), or the defaults."""
    try:
        config = parse_labelling_config(label_config or "")
    except LabelStudioError:
        return TagNames()
    return TagNames(config.from_name, config.to_name, config.text_key)


def find_project(session: Session, reference: str | None) -> Project | None:
    ls_id = label_studio_project_id(reference)
    if ls_id is None:
        return None
    return session.exec(select(Project).where(Project.ls_project_id == ls_id)).first()


def model_version(session: Session, reference: str | None) -> str:
    """The active version's name for a Label Studio project, or "untrained"."""
    project = find_project(session, reference)
    version = active_version(session, project.id) if project is not None else None
    return version.name if version is not None else UNTRAINED


def predict_tasks(
    session: Session, predictor: Predictor, tasks: Sequence[dict], reference: str | None, label_config: str | None
) -> list[MLTaskResult]:
    """One result per task: regions from the active model, or none (untrained, no text). Texts of
    more than ``MAX_PREDICT_CHARACTERS`` in all are refused (``Invalid``) before any inference."""
    project = find_project(session, reference)
    names = TagNames(project.from_name, project.to_name, project.text_key) if project is not None else tag_names_from_config(label_config)
    texts = [_task_text(task, names.text_key) for task in tasks]
    if sum(len(t) for t in texts if t is not None) > MAX_PREDICT_CHARACTERS:
        raise Invalid.one(("tasks",), f"more than {MAX_PREDICT_CHARACTERS} characters of text in all; send fewer tasks per request")
    model = None
    if project is not None:
        try:
            model = predictor.active(project.id, session)
        except ModelLoadError:
            logger.exception("project %s: the active model cannot be loaded; answering without predictions", project.id)
    version = model.name if model is not None else UNTRAINED
    to_predict = [t for t in texts if t is not None]
    strategy = project.strategy if project is not None else "mnlp"
    predicted = model.predict(to_predict, mc_samples=samples_for(strategy)) if model is not None and to_predict else []
    scores = iter(task_scores(strategy, predicted))
    predictions = iter(predicted)
    results = []
    for text in texts:
        prediction = next(predictions) if model is not None and text is not None else None
        if prediction is None:
            results.append(MLTaskResult(result=[], score=None, model_version=version))
            continue
        regions = [
            MLRegion(
                from_name=names.from_name,
                to_name=names.to_name,
                value=MLRegionValue(start=s.start, end=s.end, text=text[s.start : s.end], labels=[s.label]),
                score=s.score,
            )
            for s in prediction.spans
        ]
        results.append(MLTaskResult(result=regions, score=next(scores), model_version=version))
    return results


def _task_text(task: Any, key: str) -> str | None:
    data = task.get("data") if isinstance(task, dict) else None
    text = data.get(key) if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        text.encode("utf-8")  # the tokenizer cannot take lone surrogates
    except UnicodeEncodeError:
        return None
    return text


def start_training(session: Session, project: Project, settings: Settings) -> MLWebhookAnswer:
    """Label Studio's "Start Training": a training job, queued while Label Studio waits for the answer.
    Label Studio keeps the answer's ``job`` as its training job and shows the model as "Training"; a
    refusal (409: nothing labelled to train on) shows it as "Error" with the reason. Its dialog itself
    prints only its own empty answer ("Response: {}"); the job shows on the dashboard and in ``nerloop jobs``."""
    job = jobs.request_training(session, project.id, settings)
    status = f"training job {job.id} of nerloop project {project.id}: {job.status.value}"
    return MLWebhookAnswer(status=status, action="START_TRAINING", job=str(job.id))


def warm_up(predictor: Predictor, project_id: int) -> None:
    """Load the active model into the cache so the first prediction does not pay for it."""
    try:
        predictor.active(project_id)
    except ModelLoadError:
        logger.exception("project %s: the active model cannot be loaded", project_id)
