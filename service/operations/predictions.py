"""Ad-hoc prediction with a project's active model version."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import Conflict
from ..models import Project
from ..predictor import ModelLoadError, Predictor, task_confidence
from ..schemas import EntityOut, PredictResponse, TextPrediction


def predict(predictor: Predictor, project: Project, texts: Sequence[str]) -> PredictResponse:
    try:
        model = predictor.active(project.id)
    except ModelLoadError as error:
        raise Conflict.one((), str(error)) from error
    if model is None:
        raise Conflict.one((), f"project {project.id} has no active model version; train or promote one")
    out = []
    for text, tagged in zip(texts, model.predict(texts)):
        entities = [EntityOut(start=s.start, end=s.end, label=s.label, text=text[s.start : s.end], score=s.score) for s in tagged.spans]
        out.append(TextPrediction(entities=entities, score=task_confidence(tagged)))
    return PredictResponse(model_version=model.name, predictions=out)
