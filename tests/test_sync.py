"""Syncing with Label Studio: imports, webhooks and the pull, against a real Label Studio 1.23.2.

Webhook payloads are the ones Label Studio really POSTs, caught by a local HTTP listener.
"""

import copy
from datetime import datetime, timedelta

import httpx
import pytest
from sqlmodel import Session, select

from active_learning.spans import Example, SpanError
from service.label_studio import LabelStudioClient, results_from_spans
from service.models import Annotation, Project, Task, TaskState
from service.sync import (
    SyncError,
    accepted_examples,
    content_hash,
    delete_annotations,
    handle_webhook,
    import_examples,
    is_dev,
    pull,
    record_annotation,
)

LABELS = ["PER", "ORG"]
SECRET = "webhook-secret-for-tests"


@pytest.fixture
def session(db_engine):
    with Session(db_engine) as session:
        yield session


def make_project(session, ls_project_id=None, **fields) -> Project:
    project = Project(name="news", labels=LABELS, ls_project_id=ls_project_id, **fields)
    session.add(project)
    session.commit()
    return project


def ls_annotation(ls_id, spans, text, updated_at="2026-01-01T10:00:00.000000Z", **fields) -> dict:
    """An annotation shaped as Label Studio 1.23.2 sends it (see the captured payloads below)."""
    return {
        "id": ls_id,
        "result": results_from_spans(text, spans),
        "completed_by": 1,
        "was_cancelled": False,
        "ground_truth": False,
        "updated_at": updated_at,
        **fields,
    }


# --- the database alone --------------------------------------------------------------------------


def test_content_hash_and_dev_split_are_fixed_by_the_text():
    digest = content_hash("Paris is in France.")
    assert digest == content_hash("Paris is in France.") and len(digest) == 64
    hashes = [content_hash(f"text {i}") for i in range(2000)]
    share = sum(is_dev(h, 0.2) for h in hashes) / len(hashes)
    assert 0.17 < share < 0.23
    assert not any(is_dev(h, 0.0) for h in hashes) and all(is_dev(h, 1.0) for h in hashes)


def test_import_dedupes_and_labelled_examples_become_ground_truth(session):
    project = make_project(session)
    examples = [
        Example("Ann works at Acme.", [(0, 3, "PER"), (13, 17, "ORG")]),
        Example("Nothing here."),
        Example("Nothing here."),  # a duplicate within the batch
        Example("Confirmed empty.", meta={"labelled": True, "source": "ls-export"}),
    ]
    result = import_examples(session, project, examples, dev_share=0.0)
    assert [t.text for t in result.created] == ["Ann works at Acme.", "Nothing here.", "Confirmed empty."]
    assert result.duplicates == 1
    states = {t.text: t.state for t in result.created}
    assert states == {
        "Ann works at Acme.": TaskState.labelled,
        "Nothing here.": TaskState.pool,
        "Confirmed empty.": TaskState.labelled,
    }
    truth = session.exec(select(Annotation)).all()
    assert {(a.annotator, a.ground_truth, a.accepted) for a in truth} == {("import", True, True)}
    assert sorted(a.spans for a in truth) == [[], [[0, 3, "PER"], [13, 17, "ORG"]]]

    again = import_examples(session, project, [Example("Nothing here."), Example("New one.")])
    assert [t.text for t in again.created] == ["New one."] and again.duplicates == 1


def test_import_refuses_unknown_labels_before_writing(session):
    project = make_project(session)
    with pytest.raises(SpanError, match=r"examples\[1\]: spans\[0\]: unknown label 'LOC'"):
        import_examples(session, project, [Example("Fine."), Example("Rome.", [(0, 4, "LOC")])])
    assert session.exec(select(Task)).all() == []


def test_accepted_annotation_rule_and_idempotence(session):
    project = make_project(session)
    (task,) = import_examples(session, project, [Example("Ann met Bob.")]).created
    task.ls_task_id = 7
    text = task.text
    first = ls_annotation(101, [(0, 3, "PER")], text, updated_at="2026-01-01T10:00:00Z")
    assert record_annotation(session, project, 7, first)
    assert not record_annotation(session, project, 7, copy.deepcopy(first))  # a repeat changes nothing
    assert task.state == TaskState.labelled

    newer = ls_annotation(102, [(8, 11, "PER")], text, updated_at="2026-01-02T10:00:00Z")
    assert record_annotation(session, project, 7, newer)
    accepted = {a.ls_annotation_id: a.accepted for a in session.exec(select(Annotation))}
    assert accepted == {101: False, 102: True}  # the most recently updated one counts

    assert record_annotation(session, project, 7, {**first, "ground_truth": True, "updated_at": "2026-01-01T11:00:00Z"})
    accepted = {a.ls_annotation_id: a.accepted for a in session.exec(select(Annotation))}
    assert accepted == {101: True, 102: False}  # ground truth wins
    # An older version arriving late is ignored.
    assert not record_annotation(session, project, 7, {**first, "result": []})

    assert record_annotation(
        session, project, 7, {**first, "was_cancelled": True, "updated_at": "2026-01-03T00:00:00Z"}
    )
    assert record_annotation(
        session, project, 7, {**newer, "was_cancelled": True, "updated_at": "2026-01-03T00:00:00Z"}
    )
    assert task.state == TaskState.pool  # skipped annotations never count
    assert delete_annotations(session, project, [101, 102, 999]) == 2
    assert task.state == TaskState.pool and session.exec(select(Annotation)).all() == []


def test_record_annotation_names_what_it_cannot_store(session):
    project = make_project(session)
    (task,) = import_examples(session, project, [Example("Rome is old.")]).created
    task.ls_task_id = 8
    with pytest.raises(SyncError, match="annotation 5 of task 8: spans\\[0\\]: unknown label 'LOC'"):
        record_annotation(session, project, 8, ls_annotation(5, [(0, 4, "LOC")], task.text))
    with pytest.raises(SyncError, match="Label Studio task 9 is not a task of project 'news'"):
        record_annotation(session, project, 9, ls_annotation(6, [], task.text))


def test_accepted_examples_split_by_the_dev_flag(session):
    project = make_project(session)
    import_examples(session, project, [Example("Ann.", [(0, 3, "PER")]), Example("Pool.")], dev_share=0.0)
    import_examples(session, project, [Example("Acme.", [(0, 4, "ORG")])], dev_share=1.0)
    train, dev = accepted_examples(session, project)
    assert [(e.text, e.spans) for e in train] == [("Ann.", [(0, 3, "PER")])]
    assert [(e.text, e.spans) for e in dev] == [("Acme.", [(0, 4, "ORG")])]
    assert train[0].meta["task_id"] is not None


# --- with Label Studio ---------------------------------------------------------------------------


@pytest.fixture
def ls(label_studio):
    client = LabelStudioClient(label_studio.url, label_studio.token)
    browser = httpx.Client(
        base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=60
    )
    yield client, browser
    browser.close()


def annotate(browser, ls_task_id: int, text: str, spans, **fields) -> dict:
    """What the annotator's browser does on Submit (or Skip, with was_cancelled)."""
    answer = browser.post(
        f"/api/tasks/{ls_task_id}/annotations/", json={"result": results_from_spans(text, spans), **fields}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def attached_project(session, client, title) -> Project:
    # Label Studio knows LOC too: an annotation with it is one nerloop must refuse, not store.
    return make_project(session, ls_project_id=client.create_project(title, LABELS + ["LOC"]))


def test_annotations_arrive_through_real_webhooks(session, ls, webhook_listener):
    client, browser = ls
    project = attached_project(session, client, "webhooks end to end")
    texts = ["Ann works at Acme.", "Bob lives here.", "Cid is nice."]
    examples = [Example(t) for t in texts] + [Example("Dee.", [(0, 3, "PER")]), Example(texts[0])]
    result = import_examples(session, project, examples, client=client)
    session.commit()
    assert result.duplicates == 1
    ann, bob, cid, dee = result.created
    assert all(t.ls_task_id for t in (ann, bob, cid)) and dee.ls_task_id is None  # labelled: not served again
    client.register_webhook(project.ls_project_id, webhook_listener.url, SECRET)

    # Created: the payload carries the annotation and its task.
    created = annotate(browser, ann.ls_task_id, ann.text, [(0, 3, "PER")], lead_time=4.2)
    headers, payload = webhook_listener.next()
    assert headers["X-Nerloop-Secret"] == SECRET
    assert payload["action"] == "ANNOTATION_CREATED"
    assert payload["project"]["id"] == project.ls_project_id  # the sender, as handle_webhook checks it
    assert payload["annotation"]["id"] == created["id"] and payload["annotation"]["completed_by"] == 1
    assert payload["task"]["id"] == ann.ls_task_id and payload["task"]["data"] == {"text": ann.text}
    assert handle_webhook(session, project, payload) == {
        "action": "ANNOTATION_CREATED",
        "annotation": created["id"],
        "changed": True,
    }
    assert handle_webhook(session, project, copy.deepcopy(payload))["changed"] is False  # delivered twice
    stored = session.exec(select(Annotation).where(Annotation.ls_annotation_id == created["id"])).one()
    assert (stored.spans, stored.annotator, stored.accepted, ann.state) == (
        [[0, 3, "PER"]],
        "1",
        True,
        TaskState.labelled,
    )

    # Updated.
    update = browser.patch(
        f"/api/annotations/{created['id']}/",
        json={"result": results_from_spans(ann.text, [(0, 3, "PER"), (13, 17, "ORG")])},
    )
    assert update.status_code == 200, update.text
    _, updated = webhook_listener.next()
    assert updated["action"] == "ANNOTATION_UPDATED"
    assert handle_webhook(session, project, updated)["changed"] is True
    assert stored.spans == [[0, 3, "PER"], [13, 17, "ORG"]]
    assert handle_webhook(session, project, payload)["changed"] is False  # the CREATED one again, late

    # Skipped, and one with a label nerloop does not know.
    annotate(browser, bob.ls_task_id, bob.text, [], was_cancelled=True)
    _, skipped = webhook_listener.next()
    assert handle_webhook(session, project, skipped)["changed"] is True
    assert bob.state == TaskState.pool
    annotate(browser, cid.ls_task_id, cid.text, [(0, 3, "LOC")])
    _, unknown = webhook_listener.next()
    with pytest.raises(SyncError, match="unknown label 'LOC'"):
        handle_webhook(session, project, unknown)

    # Deleted: ids only.
    assert browser.delete(f"/api/annotations/{created['id']}/").status_code == 204
    _, deleted = webhook_listener.next()
    assert deleted["action"] == "ANNOTATIONS_DELETED"
    assert deleted["annotations"] == [{"id": created["id"]}] and "task" not in deleted
    assert handle_webhook(session, project, deleted) == {"action": "ANNOTATIONS_DELETED", "deleted": 1}
    assert handle_webhook(session, project, deleted)["deleted"] == 0
    assert ann.state == TaskState.pool

    # A payload for another project is refused.
    stranger = copy.deepcopy(payload)
    stranger["project"]["id"] = project.ls_project_id + 1000
    with pytest.raises(SyncError, match="reached project 'news'"):
        handle_webhook(session, project, stranger)

    # The webhooks missed nothing: a pull finds nothing to change.
    assert pull(session, project, client) == 0
    assert project.last_pulled_at is not None
    train, dev = accepted_examples(session, project)
    assert [e.text for e in train + dev] == ["Dee."]


def test_pull_reconciles_what_webhooks_missed(session, ls):
    client, browser = ls
    project = attached_project(session, client, "pull only")
    texts = ["Ann works at Acme.", "Bob lives here.", "Cid is nice."]
    ann, bob, cid = import_examples(session, project, [Example(t) for t in texts], client=client).created
    session.commit()
    assert pull(session, project, client) == 0 and project.last_pulled_at is None

    first = annotate(browser, ann.ls_task_id, ann.text, [(0, 3, "PER")])
    second = annotate(browser, bob.ls_task_id, bob.text, [(0, 3, "PER")])
    assert pull(session, project, client) == 2
    mark = project.last_pulled_at
    assert isinstance(mark, datetime) and mark.utcoffset() == timedelta(0)
    assert ann.state == bob.state == TaskState.labelled
    assert pull(session, project, client) == 0  # the overlap re-reads them; nothing changes

    # Updated, deleted, and a task made in Label Studio directly, annotated there.
    update = browser.patch(
        f"/api/annotations/{first['id']}/", json={"result": results_from_spans(ann.text, [(13, 17, "ORG")])}
    )
    assert update.status_code == 200
    assert browser.delete(f"/api/annotations/{second['id']}/").status_code == 204
    (outsider_id,) = client.import_tasks(project.ls_project_id, [{"text": "Eve came from outside."}])
    annotate(browser, outsider_id, "Eve came from outside.", [(0, 3, "PER")])
    annotate(browser, cid.ls_task_id, cid.text, [(0, 3, "LOC")])  # refused by nerloop: logged and skipped

    assert pull(session, project, client) == 3
    assert project.last_pulled_at > mark
    assert ann.state == TaskState.labelled and bob.state == TaskState.pool and cid.state == TaskState.pool
    adopted = session.exec(select(Task).where(Task.ls_task_id == outsider_id)).one()
    assert adopted.content_hash == content_hash(adopted.text) and adopted.state == TaskState.labelled
    train, dev = accepted_examples(session, project)
    assert sorted((e.text, tuple(e.spans)) for e in train + dev) == [
        ("Ann works at Acme.", ((13, 17, "ORG"),)),
        ("Eve came from outside.", ((0, 3, "PER"),)),
    ]
    session.commit()
