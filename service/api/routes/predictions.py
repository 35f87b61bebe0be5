"""Ad-hoc prediction with the project's active model."""

from fastapi import APIRouter

from ...operations import predictions
from ...schemas import PredictRequest, PredictResponse
from ..deps import PredictorDep, ProjectDep
from ..errors import ERROR_RESPONSES

router = APIRouter(prefix="/projects/{project_id}", tags=["predictions"], responses=ERROR_RESPONSES)


@router.post("/predict", response_model=PredictResponse, responses={409: {"description": "The project has no active model"}})
def predict(body: PredictRequest, project: ProjectDep, predictor: PredictorDep):
    """Entities (character spans with scores) and a task confidence per text."""
    return predictions.predict(predictor, project, body.texts)
