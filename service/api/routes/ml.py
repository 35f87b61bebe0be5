"""The Label Studio ML-backend protocol: connect Label Studio to http://HOST:PORT/ml.

Label Studio waits 3 s for /setup and 1 s for /webhook, so those only read the database or accept
the event; model loading and event processing run after the response.
"""

from fastapi import APIRouter, BackgroundTasks, Depends, Response

from ...operations import events
from ...schemas import (
    LabelStudioEvent,
    MLHealth,
    MLPredictRequest,
    MLPredictResponse,
    MLSetupRequest,
    MLSetupResponse,
    MLWebhookAnswer,
    WebhookAccepted,
)
from .. import ml_backend
from ..deps import EngineDep, PredictorDep, SessionDep, SettingsDep, require_ml_auth
from ..errors import ERROR_RESPONSES

router = APIRouter(tags=["label-studio-ml-backend"], dependencies=[Depends(require_ml_auth)], responses=ERROR_RESPONSES)


@router.get("/health", response_model=MLHealth)
@router.get("/", response_model=MLHealth, include_in_schema=False)
def health():
    return MLHealth(status="UP", model_class=ml_backend.MODEL_CLASS)


@router.post("/setup", response_model=MLSetupResponse)
def setup(body: MLSetupRequest, session: SessionDep, predictor: PredictorDep, background: BackgroundTasks):
    """The active model version's name ("untrained" without one); the model is loaded after answering."""
    project = ml_backend.find_project(session, body.project)
    if project is not None:
        background.add_task(ml_backend.warm_up, predictor, project.id)
    return MLSetupResponse(model_version=ml_backend.model_version(session, body.project))


@router.post("/predict", response_model=MLPredictResponse)
def predict(body: MLPredictRequest, session: SessionDep, predictor: PredictorDep):
    """Pre-annotations: exactly one result per task, each with regions, a task score and the model version."""
    return MLPredictResponse(results=ml_backend.predict_tasks(session, predictor, body.tasks, body.project, body.label_config))


@router.post(
    "/webhook",
    response_model=MLWebhookAnswer,
    response_model_exclude_none=True,
    status_code=201,
    responses={200: {"model": MLWebhookAnswer, "description": "Ignored: not an event this endpoint takes"}},
)
def webhook(
    event: LabelStudioEvent, session: SessionDep, engine: EngineDep, settings: SettingsDep, background: BackgroundTasks, response: Response
):
    """START_TRAINING ("Start Training") queues a training job and answers its id, or 409 with the
    reason it cannot train; annotation events, processed after answering, only when /ml is behind
    basic auth (``events.ml_webhook_actions``)."""
    if event.action not in events.ml_webhook_actions(settings):
        response.status_code = 200
        return WebhookAccepted(status="ignored: not an event this endpoint takes", action=event.action)
    project = events.event_project(session, event.project.id if event.project else None)
    events.check_event(session, project, event)
    if event.action == events.TRAINING_EVENT:  # queued while Label Studio waits: the answer names the job, or why not
        return ml_backend.start_training(session, project, settings)
    background.add_task(events.process_event, engine, project.id, event.model_dump(), settings)
    return WebhookAccepted(status="accepted", action=event.action)
