"""The Label Studio client nerloop uses: a thin layer over the SDK's ``LabelStudio`` with bulk calls,
bounded retries (tenacity) and one exception type; ``client_from_settings`` builds it. Labelling
configs are read with the SDK's ``LabelInterface``.

Verified against Label Studio 1.23.2 (Community edition) with label-studio-sdk 2.x:

- ``api_key`` may be a legacy token or a personal access token (a JWT refresh token); the SDK tells
  them apart and trades a PAT for short-lived access tokens itself.
- ``POST /api/projects/{id}/import?return_task_ids=true`` creates the tasks synchronously and answers
  ``task_ids`` in the order of the posted list (Enterprise queues imports and answers ``{"import": id}``
  instead, which this client refuses with a clear error).
- Predictions imported in bulk (``/import/predictions``) do not touch the tasks' ``updated_at``;
  creating, updating or deleting one annotation does. That makes ``updated_at`` a high-water mark for
  the incremental pull (``list_annotations_since``).
- With ``sampling="Uncertainty sampling"``, ``GET /api/projects/{id}/next`` serves the task whose
  prediction at the project's ``model_version`` has the lowest score.
- A Data Manager view (``/api/dm/views``) keeps its columns and ordering in ``data``: ``ordering``
  ``["tasks:predictions_score"]`` lists the lowest score first, ``hiddenColumns.explore`` the columns
  the table hides (everything else shows).
- ``POST /api/ml`` connects an ML backend only if Label Studio can reach its ``/health`` and ``/setup``
  there and then (400 otherwise).
- ``GET /api/projects/{id}/model-versions/`` counts the predictions of each model version, newest
  first; ``DELETE`` on it with ``{"model_version": ...}`` removes that version's predictions in one
  query (annotations are untouched: they are another table).
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import NamedTuple, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk._legacy.exceptions import LabelStudioXMLSyntaxErrorSentryIgnored
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.label_interface import LabelInterface
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from .settings import Settings, get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
UNCERTAIN_FIRST_VIEW = "nerloop: most uncertain first"
ML_BACKEND_TITLE = "nerloop"
# Columns the "most uncertain first" view hides: what is left is the id, the text, the score and the
# model version of the predictions, and who labelled the task.
HIDDEN_COLUMNS = [
    f"tasks:{name}"
    for name in (
        "inner_id", "cancelled_annotations", "total_predictions", "annotations_results", "annotations_ids", "predictions_results",
        "file_upload", "storage_filename", "created_at", "updated_at", "updated_by", "avg_lead_time", "draft_exists",
    )
]
WEBHOOK_SECRET_HEADER = "X-Nerloop-Secret"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
IMPORT_CHUNK = 1000  # tasks or predictions per request: 1000 short texts import in well under a second
PAGE_SIZE = 500
# The pull asks for tasks updated since the high-water mark minus this overlap, so that an annotation
# whose transaction committed after a pull, with an earlier timestamp, is still seen. Re-reading a few
# tasks is harmless: recording an annotation is idempotent.
PULL_OVERLAP = timedelta(minutes=1)
_LS_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # what the Data Manager's Datetime filters parse


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached, refused the token, or refused a request (``status``: its answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LabelConfig(NamedTuple):
    """The NER part of a project's labelling config: a ``Labels`` tag on a ``Text`` tag."""

    labels: list[str]
    from_name: str
    to_name: str
    text_key: str


def labelling_config(
    labels: Sequence[str], from_name: str = "label", to_name: str = "text", text_key: str = "text"
) -> str:
    """The XML config of an NER project: ``Labels`` named ``from_name`` on a ``Text`` reading ``$text_key``."""
    if not labels:
        raise ValueError("an NER project needs at least one label")
    view = ET.Element("View")
    tag = ET.SubElement(view, "Labels", name=from_name, toName=to_name)
    for label in labels:
        ET.SubElement(tag, "Label", value=label)
    ET.SubElement(view, "Text", name=to_name, value=f"${text_key}")
    return ET.tostring(view, encoding="unicode")


def parse_labelling_config(config: str) -> LabelConfig:
    """Find the first ``Labels`` tag whose ``toName`` is a ``Text`` tag; raise ``LabelStudioError`` if none."""
    try:
        interface = LabelInterface(config)
    except LabelStudioXMLSyntaxErrorSentryIgnored as error:
        raise LabelStudioError(f"the labelling config is not valid XML: {error}") from None
    for control in interface.controls:
        if control.tag.lower() != "labels":
            continue
        for text in control.objects:  # the tags its toName names, in that order
            if text.tag.lower() == "text" and (text.value or "").startswith("$"):
                return LabelConfig(list(control.labels), control.name, text.name, text.value[1:])
    raise LabelStudioError("the labelling config has no Labels tag on a Text tag reading a $field: not an NER project")


def results_from_spans(
    text: str, spans: Iterable[Sequence], from_name: str = "label", to_name: str = "text"
) -> list[dict]:
    """Label Studio ``labels`` results for character spans ``[start, end, label]`` or ``[start, end, label, score]``."""
    results = []
    for span in spans:
        start, end, label = span[:3]
        result = {
            "from_name": from_name,
            "to_name": to_name,
            "type": "labels",
            "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]},
        }
        if len(span) > 3:
            result["score"] = float(span[3])
        results.append(result)
    return results


def parse_ls_datetime(value: str | datetime) -> datetime:
    """A Label Studio time (ISO 8601, ``Z`` for UTC) as an aware UTC datetime, as our tables store times.
    A naive datetime is taken to be UTC already.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _retryable(error: BaseException, idempotent: bool) -> bool:
    """Worth another attempt: 429 or 5xx, or a transport error on a request that is safe to resend
    (idempotent, or one that cannot have reached the server)."""
    if isinstance(error, ApiError):
        status = error.status_code or 0
        return status >= 500 or status == 429
    if isinstance(error, httpx.TransportError):
        return idempotent or isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
    return False


def _detail(error: ApiError) -> str:
    body = error.body
    if isinstance(body, dict):
        for key in ("validation_errors", "detail", "message"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


class LabelStudioClient:
    """One Label Studio server and token.

    Every request is retried on connection errors, 429 and 5xx answers, waiting ``backoff`` seconds
    and doubling up to ``max_backoff``, at most ``retries`` times (15.5 s in all by default); then
    ``LabelStudioError``. Imports are not idempotent: after a transport error they are retried only
    when the request cannot have reached the server (connection refused or connect timeout).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        timeout: float = 60.0,
    ) -> None:
        if not api_key:
            raise LabelStudioError(
                "no Label Studio API key: set NERLOOP_LABEL_STUDIO_API_KEY (a legacy token or a PAT)"
            )
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        # The SDK's own retries are off so that ours (which also cover the PAT refresh) are the only bound.
        self.sdk = self._call(
            "create the client",
            lambda: LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout, max_retries=0),
        )

    # --- plumbing -----------------------------------------------------------------------------------

    def _call(self, what: str, request: Callable[[], T], *, idempotent: bool = True) -> T:
        def warn(attempt: RetryCallState) -> None:
            error = attempt.outcome.exception()
            problem = f"{error.status_code}: {_detail(error)}" if isinstance(error, ApiError) else f"{type(error).__name__}: {error}"
            log.warning(
                "Label Studio: %s failed (%s); retry %d/%d in %.1fs",
                what, problem, attempt.attempt_number, self.retries, attempt.next_action.sleep,
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception(lambda error: _retryable(error, idempotent)),
            before_sleep=warn,
            reraise=True,
        )
        try:
            return retrying(request)
        except ApiError as error:
            status = error.status_code or 0
            if status in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the API key ({status}: {_detail(error)}) "
                    f"while trying to {what}; check NERLOOP_LABEL_STUDIO_API_KEY",
                    status,
                ) from None
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {status} while trying to {what}: {_detail(error)}", status
            ) from None
        except httpx.TransportError as error:
            raise LabelStudioError(
                f"cannot reach Label Studio at {self.url} while trying to {what} "
                f"({type(error).__name__}: {error or 'no detail'}; {retrying.statistics['attempt_number']} attempts)"
            ) from None

    # --- projects -----------------------------------------------------------------------------------

    def whoami(self) -> dict:
        """The token's user (id, email, ...): a cheap check that the server and the token work."""
        user = self._call("read the current user", lambda: self.sdk.users.whoami())
        return user.model_dump(mode="json")

    def create_project(self, title: str, labels: Sequence[str], **config_names: str) -> int:
        config = labelling_config(labels, **config_names)
        project = self._call(
            f"create project {title!r}", lambda: self.sdk.projects.create(title=title, label_config=config)
        )
        return project.id

    def read_project(self, ls_id: int) -> LabelConfig:
        """Labels, ``from_name``, ``to_name`` and ``text_key`` of an existing project (to attach to it)."""
        project = self._call(f"read project {ls_id}", lambda: self.sdk.projects.get(ls_id))
        try:
            return parse_labelling_config(project.label_config or "")
        except LabelStudioError as error:
            raise LabelStudioError(f"project {ls_id}: {error}") from None

    # --- tasks and predictions ---------------------------------------------------------------------

    def import_tasks(self, ls_id: int, tasks: Sequence[dict]) -> list[int]:
        """Create tasks (each a task's ``data`` dict) in bulk; return their ids in the order given."""
        ids: list[int] = []
        for chunk in _chunks(list(tasks), IMPORT_CHUNK):
            answer = self._call(
                f"import {len(chunk)} tasks into project {ls_id}",
                partial(
                    self.sdk.projects.import_tasks, ls_id, request=[{"data": data} for data in chunk], return_task_ids=True
                ),
                idempotent=False,
            )
            if answer.task_ids is None or len(answer.task_ids) != len(chunk):
                raise LabelStudioError(
                    f"project {ls_id}: the import answered no task ids for {len(chunk)} tasks ({answer}); "
                    "nerloop needs Label Studio's synchronous import (Community edition)"
                )
            ids.extend(answer.task_ids)
        return ids

    def push_predictions(self, ls_id: int, predictions: Sequence[dict], model_version: str) -> int:
        """Import predictions (``{"task": ls_task_id, "result": [...], "score": s}``) in bulk, lowest
        score first, and make ``model_version`` the project's with uncertainty sampling on, so the
        lowest score is served first; returns how many were created.

        The switch comes after the first chunk, not the last: Label Studio serves the lowest-scored
        task among those with a prediction of the project's version, and the first chunk holds the
        lowest scores of all, so annotators get the new version's most uncertain tasks while the
        rest imports (10,000 took 70-87 s on a 2-core machine, bench/loop_latency.py).
        """
        ordered = sorted(predictions, key=lambda prediction: prediction["score"])
        created = 0
        for number, chunk in enumerate(_chunks(ordered, IMPORT_CHUNK)):
            request = [{**prediction, "model_version": model_version} for prediction in chunk]
            answer = self._call(
                f"import {len(chunk)} predictions into project {ls_id}",
                partial(self.sdk.projects.import_predictions, ls_id, request=request),
                idempotent=False,
            )
            created += answer.created or 0
            if number == 0:
                self._call(
                    f"set model version {model_version!r} and uncertainty sampling on project {ls_id}",
                    lambda: self.sdk.projects.update(ls_id, model_version=model_version, sampling=UNCERTAINTY_SAMPLING),
                )
        return created

    def update_task_data(self, ls_task_id: int, fields: dict) -> dict:
        """Set (or, with None, remove) keys of a task's ``data`` and return the new data.

        ``PATCH /api/tasks/{id}`` with ``data`` replaces the whole data object (1.23.2) and touches
        nothing else of the task: its annotations stay as they are. So the task is read first and
        its other keys, the text among them, are sent back unchanged.
        """
        task = self._call(f"read task {ls_task_id}", lambda: self.sdk.tasks.get(str(ls_task_id)))
        data = {**(task.data or {}), **fields}
        data = {key: value for key, value in data.items() if value is not None}
        self._call(f"update the data of task {ls_task_id}", lambda: self.sdk.tasks.update(str(ls_task_id), data=data))
        return data

    def replace_predictions(self, ls_task_id: int, model_version: str, prediction: dict | None) -> None:
        """Delete the task's predictions of ``model_version``, then create ``prediction`` (``{"result":
        [...], "score": s}``) under it, unless None. Other model versions' predictions stay."""
        existing = self._call(f"list predictions of task {ls_task_id}", lambda: self.sdk.predictions.list(task=ls_task_id))
        for old in existing:
            if old.model_version == model_version:
                self._call(f"delete prediction {old.id}", partial(self.sdk.predictions.delete, old.id))
        if prediction is not None:
            self._call(
                f"create a {model_version!r} prediction on task {ls_task_id}",
                partial(self.sdk.predictions.create, task=ls_task_id, model_version=model_version, **prediction),
                idempotent=False,
            )

    def list_annotations_since(self, ls_id: int, since: datetime | None) -> Iterator[dict]:
        """The annotations of the tasks changed since ``since``: one dict per task with ``id``, ``data``,
        ``updated_at`` and all of its current ``annotations`` (so a deleted one shows as missing).

        Label Studio stamps a task's ``updated_at`` whenever one of its annotations is created, updated
        or deleted (not when predictions are imported), so a Data Manager filter on it finds what changed
        without listing every task. Asking ``PULL_OVERLAP`` earlier than ``since`` covers transactions
        that committed late. ``since=None`` lists the tasks that have annotations.
        """
        if since is None:
            items = [
                {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
                {"filter": "filter:tasks:cancelled_annotations", "operator": "greater", "type": "Number", "value": 0},
            ]
            filters = {"conjunction": "or", "items": items}
        else:
            value = (parse_ls_datetime(since) - PULL_OVERLAP).strftime(_LS_DATETIME_FORMAT)
            items = [
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater_or_equal",
                    "type": "Datetime",
                    "value": value,
                }
            ]
            filters = {"conjunction": "and", "items": items}
        query = json.dumps({"filters": filters, "ordering": ["tasks:id"]})
        page = 1
        while True:
            try:
                pager = self._call(
                    f"list changed tasks of project {ls_id} (page {page})",
                    partial(self.sdk.tasks.list, project=ls_id, fields="all", query=query, page=page, page_size=PAGE_SIZE),
                )
            except LabelStudioError as error:
                if page > 1 and error.status == 404:  # past the last page
                    return
                raise
            tasks = pager.items or []
            for task in tasks:
                task = task.model_dump(mode="json")
                yield {key: task.get(key) for key in ("id", "data", "updated_at", "annotations")}
            if len(tasks) < PAGE_SIZE:
                return
            page += 1

    def prediction_versions(self, ls_id: int) -> dict[str, int]:
        """The model versions of the project's predictions with how many each has, newest first."""
        path = f"api/projects/{ls_id}/model-versions/"
        return self._call(f"list the model versions of project {ls_id}", partial(self._json, "GET", path))

    def delete_prediction_version(self, ls_id: int, model_version: str) -> int:
        """Remove every prediction of ``model_version`` in the project (one query); returns how many."""
        answer = self._call(
            f"delete the predictions of {model_version!r} in project {ls_id}",
            partial(self._json, "DELETE", f"api/projects/{ls_id}/model-versions/", json={"model_version": model_version}),
        )
        return int(answer.get("deleted_predictions", 0))

    def _json(self, method: str, path: str, **options):
        """A request the SDK has no method for, through its HTTP client (same auth); errors as ``ApiError``."""
        response = self.sdk._client_wrapper.httpx_client.request(path, method=method, **options)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=body)
        return body

    # --- setting a project up for the loop ---------------------------------------------------------

    def ensure_uncertainty_view(self, ls_id: int) -> int:
        """A Data Manager tab listing the tasks lowest prediction score first, with the score and the
        model version shown; the existing one of that title is brought up to date, not doubled."""
        data = {
            "title": UNCERTAIN_FIRST_VIEW,
            "ordering": ["tasks:predictions_score"],
            "hiddenColumns": {"explore": HIDDEN_COLUMNS, "labeling": [*HIDDEN_COLUMNS, "tasks:annotators", "tasks:completed_at"]},
            "filters": {"conjunction": "and", "items": []},
            "type": "list",
            "target": "tasks",
        }
        views = self._call(f"list the views of project {ls_id}", partial(self._json, "GET", "api/dm/views/", params={"project": ls_id}))
        for view in views:
            if (view.get("data") or {}).get("title") == UNCERTAIN_FIRST_VIEW:
                update = partial(self._json, "PATCH", f"api/dm/views/{view['id']}/", json={"project": ls_id, "data": data})
                self._call(f"update view {view['id']}", update)
                return view["id"]
        view = self._call(
            f"create the view {UNCERTAIN_FIRST_VIEW!r} in project {ls_id}",
            partial(self._json, "POST", "api/dm/views/", json={"project": ls_id, "data": data}),
        )
        return view["id"]

    def connect_ml_backend(self, ls_id: int, url: str, basic_auth: tuple[str, str] | None = None) -> int:
        """Connect the ML backend at ``url`` to the project, as Settings → Model → Connect Model does
        (Label Studio checks there and then that it answers); one already connected at ``url`` is kept."""
        for backend in self._call(f"list the ML backends of project {ls_id}", lambda: self.sdk.ml.list(project=ls_id)):
            if (backend.url or "").rstrip("/") == url.rstrip("/"):
                return backend.id
        auth = dict(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1]) if basic_auth else {}
        backend = self._call(
            f"connect the ML backend {url} to project {ls_id}",
            partial(self.sdk.ml.create, url=url, project=ls_id, title=ML_BACKEND_TITLE, is_interactive=False, **auth),
            idempotent=False,
        )
        return backend.id

    # --- webhooks ----------------------------------------------------------------------------------

    def register_webhook(self, ls_id: int, url: str, secret_header_value: str) -> int:
        """Have Label Studio POST annotation events of project ``ls_id`` to ``url`` with the shared secret
        in ``X-Nerloop-Secret``. An existing webhook of the project with the same URL is updated, not doubled.
        """
        settings = dict(
            actions=list(WEBHOOK_ACTIONS),
            headers={WEBHOOK_SECRET_HEADER: secret_header_value},
            send_payload=True,
            send_for_all_actions=False,
            is_active=True,
        )
        existing = self._call(f"list webhooks of project {ls_id}", lambda: self.sdk.webhooks.list(project=str(ls_id)))
        for webhook in existing:
            if webhook.url == url and webhook.project == ls_id:
                self._call(
                    f"update webhook {webhook.id}", partial(self.sdk.webhooks.update, webhook.id, url=url, **settings)
                )
                return webhook.id
        webhook = self._call(
            f"register a webhook for project {ls_id}",
            lambda: self.sdk.webhooks.create(url=url, project=ls_id, **settings),
        )
        return webhook.id


def client_from_settings(settings: Settings | None = None, *, retries: int | None = None) -> LabelStudioClient | None:
    """The Label Studio client the settings describe (``retries``: fewer, for an interactive command),
    or None when no API key is set."""
    settings = settings or get_settings()
    if not settings.label_studio_api_key:
        return None
    options = {} if retries is None else {"retries": retries}
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, **options)
