"""Label review in the service: suspects stored and shown to reviewers in a real Label Studio, a
reviewer's fix or confirmation coming back through the pull, annotators' agreement in the report.

Detector quality itself is tests/test_label_quality.py's (and bench/label_errors.py's); here the
review job runs it with the tiny encoder and tiny fold trainings, as the worker would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from active_learning.label_quality import annotation_fingerprint
from active_learning.spans import Example
from service.cli import app
from service.db import init_db
from service.label_studio import LabelStudioClient, results_from_spans
from service.models import Job, Project, ReviewConfirmation, Suspect, SuspectStatus, Task
from service.operations import review
from service.settings import get_settings
from service.sync import import_examples, pull, record_annotation
from support import add_project
from test_label_quality import plant
from tiny import LABELS, toy_corpus

TINY_FOLDS = {"epochs": 10, "min_steps": 0, "learning_rate": 3e-3, "batch_size": 16, "freeze_word_embeddings": False}
T0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def ls_payload(ls_id: int, text: str, spans, updated_at: datetime, completed_by: int = 1) -> dict:
    return {
        "id": ls_id,
        "result": results_from_spans(text, spans),
        "completed_by": completed_by,
        "updated_at": updated_at.isoformat().replace("+00:00", "Z"),
        "was_cancelled": False,
        "ground_truth": False,
    }


def flag(session: Session, project: Project, task: Task, reason: str, score: float = 0.1) -> Suspect:
    """A suspect as a review job stores it, for the task's accepted annotation as it is now."""
    annotation = next(a for a in session.exec(select(review.Annotation).where(review.Annotation.task_id == task.id)) if a.accepted)
    kind = reason.split("@")[0]
    suspect = Suspect(
        project_id=project.id,
        task_id=task.id,
        annotation_id=annotation.id,
        annotation_updated_at=annotation.updated_at,
        producer="cross-fit k=4",
        base_model="tiny",
        fingerprint=annotation_fingerprint(Example(task.text, annotation.spans)),
        score=score,
        kinds=[kind],
        issues=[{"kind": kind, "reason": reason, "annotated": [0, 5, "PER"], "suggested": [0, 5, "LOC", 0.9], "quality": 0.1}],
        suggested=[[0, 5, "LOC", 0.9]],
    )
    session.add(suspect)
    session.commit()
    return suspect


# ---- without Label Studio: what a reviewer's change means --------------------------------------------


def test_a_changed_annotation_fixes_its_suspect_and_an_unchanged_save_confirms_it(db_engine):
    with Session(db_engine) as session:
        project = Project(name="review", labels=list(LABELS), ls_project_id=1)
        session.add(project)
        session.flush()
        texts = ["alice met bob", "carol saw paris"]
        tasks = [Task(project_id=project.id, text=text, content_hash=str(i), ls_task_id=100 + i) for i, text in enumerate(texts)]
        session.add_all(tasks)
        session.flush()
        fixed_task, kept_task = tasks
        record_annotation(session, project, 100, ls_payload(1, fixed_task.text, [(0, 5, "PER")], T0))
        record_annotation(session, project, 101, ls_payload(2, kept_task.text, [(0, 5, "PER")], T0))
        session.commit()
        fixed = flag(session, project, fixed_task, "wrong_type@0:5:PER")
        kept = flag(session, project, kept_task, "wrong_type@0:5:PER", score=0.05)

        # The same payload again (a webhook and a pull both seeing it): nothing happened yet.
        record_annotation(session, project, 100, ls_payload(1, fixed_task.text, [(0, 5, "PER")], T0))
        session.commit()
        assert session.get(Suspect, fixed.id).status is SuspectStatus.open

        # The reviewer changes one annotation and saves the other unchanged.
        later = T0 + timedelta(minutes=1)
        record_annotation(session, project, 100, ls_payload(1, fixed_task.text, [(0, 5, "PER"), (10, 13, "PER")], later))
        record_annotation(session, project, 101, ls_payload(2, kept_task.text, [(0, 5, "PER")], later, completed_by=7))
        session.commit()
        fixed, kept = session.get(Suspect, fixed.id), session.get(Suspect, kept.id)
        assert (fixed.status, fixed.stale) == (SuspectStatus.fixed, True) and fixed.resolved_at is not None
        assert (kept.status, kept.stale) == (SuspectStatus.confirmed, False)
        confirmation = session.exec(select(ReviewConfirmation)).one()
        assert (confirmation.task_id, confirmation.reason, confirmation.annotator) == (kept_task.id, "wrong_type@0:5:PER", "7")
        assert review.confirmations(session, project.id) == {(str(kept_task.id), "wrong_type@0:5:PER")}

        summary = review.summary(session, project.id)
        assert summary.by_status == {SuspectStatus.open: 0, SuspectStatus.fixed: 1, SuspectStatus.confirmed: 1}
        assert summary.confirmations == 1


def test_review_list_is_sorted_by_score_and_paged_and_a_review_needs_labels(client, tmp_path, monkeypatch):
    project = add_project(client, ls_project_id=5)
    with Session(client.app.state.engine) as session:
        for i, text in enumerate(["alice met bob", "carol saw paris", "erin went home"]):
            task = Task(project_id=project.id, text=text, content_hash=str(i), ls_task_id=200 + i)
            session.add(task)
            session.flush()
            record_annotation(session, project, 200 + i, ls_payload(10 + i, text, [(0, 5, "PER")], T0))
            session.commit()
            flag(session, project, task, "wrong_type@0:5:PER", score=[0.3, 0.1, 0.2][i])

    page = client.get(f"/api/v1/projects/{project.id}/review", params={"limit": 2}).json()
    assert page["total"] == 3 and [item["score"] for item in page["items"]] == [0.1, 0.2]
    assert page["items"][0]["text"] == "carol saw paris" and page["items"][0]["ls_task_id"] == 201
    rest = client.get(f"/api/v1/projects/{project.id}/review", params={"limit": 2, "offset": 2}).json()
    assert [item["score"] for item in rest["items"]] == [0.3]
    assert client.get(f"/api/v1/projects/{project.id}/review", params={"status": "fixed"}).json()["total"] == 0
    bad = client.get(f"/api/v1/projects/{project.id}/review", params={"status": "done"})
    assert bad.status_code == 422 and "status" in bad.text

    refused = client.post(f"/api/v1/projects/{project.id}/review")  # 3 labelled tasks, 4 folds
    assert refused.status_code == 409 and "4-fold review needs at least 4" in refused.text

    board = client.get(f"/api/v1/projects/{project.id}/dashboard").json()
    assert board["review"]["by_status"]["open"] == 3 and board["review"]["by_kind"] == {"wrong_type": 3}
    assert board["review"]["by_label"] == {"PER": 3}

    # The CLI shows the same list, and refuses a review with the same reason.
    monkeypatch.setenv("NERLOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'nerloop.db'}")
    get_settings.cache_clear()
    try:
        listed = CliRunner().invoke(app, ["review", "--project", str(project.id), "--limit", "2"], env={"COLUMNS": "140"})
        assert listed.exit_code == 0, listed.output
        assert "Suspects of project" in listed.output and "(3)" in listed.output
        assert listed.output.index("carol saw paris") < listed.output.index("erin went home") and "alice met bob" not in listed.output
        refused = CliRunner().invoke(app, ["review", "--project", str(project.id), "--run"])
        assert refused.exit_code == 2 and "needs at least 4" in " ".join(refused.output.split())
    finally:
        get_settings.cache_clear()


def test_agreement_between_annotators_is_in_the_report(client):
    """Two people on one task: PER agrees exactly, LOC only overlaps (3 of 5 spans matched exactly)."""
    project = add_project(client, ls_project_id=6)
    text = "alice met bob in paris"
    with Session(client.app.state.engine) as session:
        task = Task(project_id=project.id, text=text, content_hash="a", ls_task_id=300)
        session.add(task)
        session.flush()
        people = [(0, 5, "PER"), (10, 13, "PER")]
        record_annotation(session, project, 300, ls_payload(20, text, [*people, (17, 22, "LOC")], T0, completed_by=1))
        record_annotation(session, project, 300, ls_payload(21, text, [*people, (14, 22, "LOC")], T0, completed_by=2))
        session.commit()
        task_id = task.id
    agreement = client.get(f"/api/v1/projects/{project.id}/report").json()["agreement"]
    assert agreement["tasks"] == 1
    assert agreement["f1"] == {"exact": pytest.approx(2 * 2 / 6), "overlap": 1.0}
    assert agreement["per_label"] == {"LOC": {"exact": 0.0, "overlap": 1.0}, "PER": {"exact": 1.0, "overlap": 1.0}}
    assert agreement["pairs"][0]["annotators"] == ["1", "2"]
    assert agreement["disagreeing_tasks"] == [{"task_id": task_id, "annotators": ["1", "2"], "disagreement": pytest.approx(1 - 4 / 6)}]
    assert client.get(f"/api/v1/projects/{project.id}/dashboard").json()["agreement"]["tasks"] == 1


# ---- with Label Studio: a suspect reaches a reviewer, the fix comes back ------------------------------


@pytest.fixture
def worker_home(tmp_path, monkeypatch, tiny_encoder):
    """The environment a worker reads its settings from: this test's home and database, the tiny base
    model, the embedded SQLite broker, no Label Studio. Yields the database's engine."""
    monkeypatch.setenv("NERLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NERLOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'nerloop.db'}")
    monkeypatch.setenv("NERLOOP_BASE_MODEL", str(tiny_encoder))
    for name in ("NERLOOP_BROKER_URL", "NERLOOP_LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield init_db(get_settings().database_url)
    get_settings.cache_clear()


@pytest.fixture
def worker_env(worker_home, monkeypatch, label_studio):
    """``worker_home`` with the Label Studio."""
    monkeypatch.setenv("NERLOOP_LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("NERLOOP_LABEL_STUDIO_API_KEY", label_studio.token)
    get_settings.cache_clear()
    return worker_home


def run_review_job(engine, project_id: int) -> dict:
    from workers.tasks import review as review_task

    with Session(engine) as session:
        job = Job(project_id=project_id, kind="review")
        session.add(job)
        session.commit()
        job_id = job.id
    outcome = review_task(job_id=job_id, project_id=project_id, config=TINY_FOLDS)
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job.status.value == "succeeded", job.error
    return outcome


def human_annotations(client: LabelStudioClient, ls_project_id: int) -> dict:
    """Every annotation in Label Studio: id -> (result, updated_at), to prove nerloop changed none."""
    return {
        a["id"]: (a["result"], a["updated_at"])
        for task in client.list_annotations_since(ls_project_id, None)
        for a in task["annotations"]
    }


@pytest.mark.slow  # a review job: 4 tiny fold trainings
def test_suspects_reach_reviewers_in_label_studio_and_a_fix_clears_the_flag(worker_env, label_studio):
    engine = worker_env
    client = LabelStudioClient(label_studio.url, label_studio.token)
    browser = httpx.Client(base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=60)
    corpus = toy_corpus(120, seed=1)
    noisy, planted = plant(corpus)  # one error of each kind, as test_label_quality's detector test
    with Session(engine) as session:
        project = Project(name="review", labels=list(LABELS), ls_project_id=client.create_project("label review", LABELS))
        session.add(project)
        session.flush()
        tasks = import_examples(session, project, [Example(e.text) for e in noisy], client=client, dev_share=0.0).created
        session.commit()
        for task, example in zip(tasks, noisy):  # the annotators' work, in Label Studio
            result = results_from_spans(task.text, example.spans)
            answer = browser.post(f"/api/tasks/{task.ls_task_id}/annotations/", json={"result": result})
            assert answer.status_code == 201, answer.text
        assert pull(session, project, client) == len(noisy)
        session.commit()
        project_id, ls_project_id = project.id, project.ls_project_id
        ls_ids = {task.id: task.ls_task_id for task in tasks}
        text_of = {task.id: task.text for task in tasks}
        index_of = {task.id: i for i, task in enumerate(tasks)}
    before = human_annotations(client, ls_project_id)

    outcome = run_review_job(engine, project_id)
    assert outcome["suspects"] >= 1 and outcome["pushed"] == outcome["suspects"]
    with Session(engine) as session:
        suspects = session.exec(select(Suspect).where(Suspect.project_id == project_id).order_by(Suspect.score)).all()
        assert {s.status for s in suspects} == {SuspectStatus.open} and len(suspects) == outcome["suspects"]
        assert all(s.base_model == get_settings().base_model and s.producer == "cross-fit k=4" for s in suspects)
        assert any(index_of[s.task_id] in planted for s in suspects)
        shown = [(s.id, s.task_id, s.score, s.kinds, s.suggested) for s in suspects]

    # What a reviewer sees: the suggestion as a prediction of its own model version, and the task fields.
    for _, task_id, score, kinds, suggested in shown:
        task = browser.get(f"/api/tasks/{ls_ids[task_id]}").json()
        assert task["data"] == {"text": text_of[task_id], "nerloop_review_score": round(score, 6), "nerloop_review_kinds": ",".join(kinds)}
        predictions = [p for p in browser.get("/api/predictions/", params={"task": ls_ids[task_id]}).json() if p["task"] == ls_ids[task_id]]
        mine = [p for p in predictions if p["model_version"] == review.REVIEW_MODEL_VERSION]
        assert len(mine) == 1 and mine[0]["score"] == pytest.approx(score)
        spans = [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in mine[0]["result"]]
        assert spans == [tuple(s[:3]) for s in suggested]
    # The Data Manager filters and sorts by the field (the reviewer's queue, most likely wrong first).
    scored = {"filter": "filter:tasks:data.nerloop_review_score", "operator": "less", "type": "Number", "value": 2}
    view = {"filters": {"conjunction": "and", "items": [scored]}, "ordering": ["tasks:data.nerloop_review_score"]}
    listed = browser.get("/api/tasks/", params={"project": ls_project_id, "query": json.dumps(view)}).json()["tasks"]
    assert [t["id"] for t in listed] == [ls_ids[task_id] for _, task_id, *_ in shown]
    assert human_annotations(client, ls_project_id) == before  # nerloop changed no annotation

    # A reviewer fixes the worst suspect in Label Studio (the gold spans); the pull brings it back.
    suspect_id, task_id, *_ = shown[0]
    gold = corpus[index_of[task_id]]
    listed = client.list_annotations_since(ls_project_id, None)
    annotation_id = next(t for t in listed if t["id"] == ls_ids[task_id])["annotations"][0]["id"]
    answer = browser.patch(f"/api/annotations/{annotation_id}/", json={"result": results_from_spans(gold.text, gold.spans)})
    assert answer.status_code == 200, answer.text
    with Session(engine) as session:
        assert pull(session, session.get(Project, project_id), client) == 1
        session.commit()
        fixed = session.get(Suspect, suspect_id)
        assert (fixed.status, fixed.stale) == (SuspectStatus.fixed, True)
    after_fix = human_annotations(client, ls_project_id)

    # The next push (the next review's, here the same job's suspects again) takes the fixed task out.
    with Session(engine) as session:
        assert review.push_to_label_studio(session, session.get(Project, project_id), client, outcome["job_id"]) == len(shown) - 1
        session.commit()
        assert session.get(Suspect, suspect_id).shown is False
    assert browser.get(f"/api/tasks/{ls_ids[task_id]}").json()["data"] == {"text": text_of[task_id]}
    predictions = browser.get("/api/predictions/", params={"task": ls_ids[task_id]}).json()
    assert not [p for p in predictions if p["task"] == ls_ids[task_id] and p["model_version"] == review.REVIEW_MODEL_VERSION]
    assert human_annotations(client, ls_project_id) == after_fix
    browser.close()


# ---- a review gives way to the loop ---------------------------------------------------------------------


@pytest.mark.slow  # review jobs with 4 tiny fold trainings
def test_a_review_after_a_promotion_gives_way_to_the_loop_and_one_asked_for_does_not(worker_home):
    from workers import review_job
    from workers.tasks import review as review_task

    engine = worker_home

    def review_job_row(**arguments) -> int:
        with Session(engine) as session:
            job = Job(project_id=project_id, kind="review", arguments=arguments)
            session.add(job)
            session.commit()
            return job.id

    def queued_reviews() -> list[Job]:
        with Session(engine) as session:
            return session.exec(select(Job).where(Job.kind == "review", Job.status == "queued")).all()

    with Session(engine) as session:
        project = add_project_row(session)
        import_examples(session, project, toy_corpus(40, seed=1), dev_share=0.0)
        # A training sent to the broker, not yet taken by a worker; jobs that hold nothing up: a
        # training never sent (the broker was down), an augmentation.
        training = Job(project_id=project.id, kind="train", sent_at=datetime.now(UTC))
        session.add_all([Job(project_id=project.id, kind="train"), training, Job(project_id=project.id, kind="augment")])
        session.commit()
        project_id, training_id = project.id, training.id
        judged = len(review.labelled_set(session, project_id))
    assert review_job.loop_job_waiting() == (training_id, project_id)

    # Queued after a promotion: its own project's training goes first and the next push reviews again.
    dropped = review_task(job_id=review_job_row(after_promotion=True), project_id=project_id, after_promotion=True, config=TINY_FOLDS)
    assert dropped["skipped"].startswith(f"superseded: job {training_id} of this project runs first")
    assert queued_reviews() == []

    # Asked for (``nerloop review --run``): it runs as asked.
    asked = review_task(job_id=review_job_row(), project_id=project_id, config=TINY_FOLDS)
    assert "skipped" not in asked and asked["tasks"] == judged

    # Another project's scoring under way: a review after a promotion queues itself again behind it.
    with Session(engine) as session:
        session.get(Job, training_id).status = "succeeded"
        other = add_project_row(session)
        scoring = Job(project_id=other.id, kind="score_pool", status="running", progress={"stage": "pushing"})
        session.add(scoring)
        session.commit()
        scoring_id, other_id = scoring.id, other.id
    assert review_job.loop_job_waiting() == (scoring_id, other_id)
    behind = review_task(job_id=review_job_row(after_promotion=True), project_id=project_id, after_promotion=True, config=TINY_FOLDS)
    assert behind["skipped"] == f"gave way to job {scoring_id}; queued again behind it"
    [again] = queued_reviews()
    assert again.arguments["gave_way"] == 1 and again.arguments["after_promotion"] is True and again.sent_at is not None

    # Given way MAX_GIVE_WAYS times, it runs to the end whatever waits.
    arguments = {**again.arguments, "config": TINY_FOLDS, "gave_way": review_job.MAX_GIVE_WAYS}
    finished = review_task(job_id=again.id, project_id=project_id, **arguments)
    assert "skipped" not in finished and finished["tasks"] == judged


def add_project_row(session: Session) -> Project:
    project = Project(name="give way", labels=list(LABELS))
    session.add(project)
    session.flush()
    return project
