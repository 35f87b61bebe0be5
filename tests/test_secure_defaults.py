"""Secure by default and checked augmentation requests (issue 14, findings 6 and 7): `nerloop serve`
refuses to start unprotected unless told --insecure (loopback only, and then says so loudly), /ml
needs the credentials Label Studio's "Connect Model" sends (basic auth) or the API token, secrets never
reach the logs, and augmentation parameters name only allowed models and paths, within bounds,
before anything is queued."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import httpx
import pytest
from sqlmodel import Session, select

from service.models import Job
from support import REPO, add_project, free_port, make_client, make_settings, nerloop_serve, snapshot

API = "/api/v1"


def fields(response) -> list[str]:
    return [d["field"] for d in response.json()["detail"]]


# ---- nerloop serve -------------------------------------------------------------------------------


@pytest.fixture
def serve_cli(tmp_path):
    """``nerloop serve <args>`` with only the ``NERLOOP_*`` given (and a home and database under
    ``tmp_path``): a process of its own, since a server that does start serves until it is stopped."""

    def invoke(*args: str, **env: str) -> subprocess.CompletedProcess:
        settings = make_settings(tmp_path)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
        clean.update(env, NERLOOP_HOME=str(settings.home), NERLOOP_DATABASE_URL=settings.database_url, PYTHONPATH=str(REPO))
        command = [sys.executable, "-m", "service.cli", "serve", *args]
        try:  # cwd: no .env of the checkout
            return subprocess.run(command, env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"`nerloop serve {' '.join(args)}` started serving instead of refusing") from error

    return invoke


@pytest.mark.integration
def test_serve_refuses_to_start_without_its_secrets(serve_cli, tmp_path):
    port = str(free_port())
    refused = serve_cli("--port", port)
    assert refused.returncode == 2 and "refusing to serve without NERLOOP_API_TOKEN" in refused.stdout, refused.stdout + refused.stderr
    assert "--insecure" in refused.stdout

    everywhere = serve_cli("--host", "0.0.0.0", "--port", port, "--insecure")
    assert everywhere.returncode == 2 and "only on a loopback address" in everywhere.stdout, everywhere.stdout + everywhere.stderr

    # A project attached to Label Studio: its webhooks queue trainings, so the secret is needed too.
    with make_client(tmp_path) as client:
        add_project(client, ls_project_id=5)
    attached = serve_cli("--port", port, NERLOOP_API_TOKEN="s3cret")
    assert attached.returncode == 2 and "NERLOOP_WEBHOOK_SECRET" in attached.stdout, attached.stdout + attached.stderr


@pytest.mark.integration
def test_an_insecure_start_says_so_and_a_secure_one_logs_no_secret(tmp_path):
    settings = make_settings(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERLOOP_")}
    env.update(NERLOOP_HOME=str(settings.home), NERLOOP_DATABASE_URL=settings.database_url)
    with nerloop_serve(env, tmp_path / "insecure.log", insecure=True) as base:
        assert httpx.get(f"{base}/api/v1/projects", timeout=5).status_code == 200  # open, as it said
    assert "INSECURE: serving without NERLOOP_API_TOKEN" in (tmp_path / "insecure.log").read_text()

    token, secret, password = "tok-4f1d9a", "hook-77c2e1", "pw-0b93aa"
    env.update(NERLOOP_API_TOKEN=token, NERLOOP_WEBHOOK_SECRET=secret)
    env.update(NERLOOP_ML_BASIC_AUTH_USER="ls", NERLOOP_ML_BASIC_AUTH_PASSWORD=password)
    with nerloop_serve(env, tmp_path / "secure.log") as base:
        assert httpx.get(f"{base}/api/v1/projects", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
        assert httpx.get(f"{base}/api/v1/projects", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        assert httpx.get(f"{base}/ml/health", auth=("ls", password), timeout=5).status_code == 200
        assert httpx.get(f"{base}/ml/health", timeout=5).status_code == 401
    log = (tmp_path / "secure.log").read_text()
    assert "INSECURE" not in log and not [s for s in (token, secret, password) if s in log]


# ---- /ml -----------------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_ml_needs_the_api_token_or_label_studios_basic_auth(tmp_path):
    """Anyone reaching /ml could queue trainings (its webhook) and run inference: with a token set it
    takes that token, or the basic auth Label Studio 1.23's Connect Model sends (it has no other)."""
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 99}, "annotation": {"id": 1}, "task": {"id": 2}}
    predict = {"tasks": [{"data": {"text": "x"}}]}
    with make_client(tmp_path / "token", api_token="s3cret") as client:
        for method, path, body in (("get", "/ml/health", None), ("post", "/ml/predict", predict), ("post", "/ml/webhook", event)):
            kwargs = {"json": body} if body else {}
            denied = getattr(client, method)(path, **kwargs)
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer", (path, denied.text)
            assert getattr(client, method)(path, headers={"Authorization": "Bearer nope"}, **kwargs).status_code == 401
        assert client.post("/ml/predict", json=predict, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    with make_client(tmp_path / "both", api_token="s3cret", ml_basic_auth_user="ls", ml_basic_auth_password="pw") as client:
        assert client.post("/ml/predict", json=predict, headers=basic("ls", "pw")).status_code == 200
        assert client.post("/ml/predict", json=predict, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/ml/predict", json=predict, headers=basic("ls", "s3cret")).status_code == 401


# ---- augmentation parameters ---------------------------------------------------------------------


def test_augmentation_parameters_name_only_allowed_models_and_paths_within_bounds(tmp_path):
    root = tmp_path / "allowed"
    models = ["Helsinki-NLP/opus-mt-en-de", "Helsinki-NLP/opus-mt-de-en"]
    with make_client(tmp_path, translation_models=models, augment_local_root=str(root)) as client:
        project = add_project(client)
        before = snapshot(client)
        for method, params, field in (
            ("backtranslate", {"forward": "/etc"}, "body.params.forward"),
            ("backtranslate", {"backward": f"{root}/../../etc"}, "body.params.backward"),
            ("backtranslate", {"forward": "someone/any-hub-model"}, "body.params.forward"),
            ("backtranslate", {"num_beams": 100000}, "body.params.num_beams"),
            ("backtranslate", {"max_length": 10**9}, "body.params.max_length"),
            ("backtranslate", {"batch_size": 100000}, "body.params.batch_size"),
            ("backtranslate", {"temperature": 1e9}, "body.params.temperature"),
            ("backtranslate", {"top_p": 0.0}, "body.params.top_p"),
            ("backtranslate", {"device": "cuda:0; rm -rf /"}, "body.params.device"),
            ("synonym", {"wordnet_cache": "/etc/cron.d"}, "body.params.wordnet_cache"),
            ("shuffle", {"p": -0.1}, "body.params.p"),
        ):
            response = client.post(f"{API}/projects/{project.id}/augment", json={"method": method, "params": params})
            assert response.status_code == 422 and fields(response) == [field], (params, response.text)
        assert snapshot(client) == before
        with Session(client.app.state.engine) as session:
            assert session.exec(select(Job)).all() == []

        allowed = {"forward": "Helsinki-NLP/opus-mt-en-de", "backward": f"{root}/opus-mt-de-en", "num_beams": 16, "max_length": 512}
        queued = client.post(f"{API}/projects/{project.id}/augment", json={"method": "backtranslate", "params": allowed})
        assert queued.status_code == 202, queued.text
        cache = client.post(f"{API}/projects/{project.id}/augment", json={"method": "synonym", "params": {"wordnet_cache": f"{root}/wn"}})
        assert cache.status_code == 202, cache.text
