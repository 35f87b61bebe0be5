"""Label Studio's webhook into our API, authenticated by the shared secret header ``X-Nerloop-Secret``."""

from fastapi import APIRouter, BackgroundTasks, Depends

from ...operations import events
from ...schemas import LabelStudioEvent, WebhookAccepted
from ..deps import EngineDep, SessionDep, SettingsDep, require_webhook_secret
from ..errors import ERROR_RESPONSES

router = APIRouter(prefix="/webhooks", tags=["webhooks"], dependencies=[Depends(require_webhook_secret)], responses=ERROR_RESPONSES)


@router.post("/label-studio", response_model=WebhookAccepted, status_code=202)
def label_studio_event(
    event: LabelStudioEvent, session: SessionDep, engine: EngineDep, settings: SettingsDep, background: BackgroundTasks
):
    """Check an event's shape and accept it at once (Label Studio waits 1 s); it is processed after the response."""
    project = events.event_project(session, event.project.id if event.project else None)
    events.check_event(session, project, event)
    background.add_task(events.process_event, engine, project.id, event.model_dump(), settings)
    return WebhookAccepted(status="accepted", action=event.action)
