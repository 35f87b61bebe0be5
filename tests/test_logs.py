"""Log records carry the project and job they are about, as JSON lines or appended to text lines."""

import io
import json
import logging

import pytest

from service import logs


def capture(kind: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.install(handler, kind)
    logger = logging.getLogger(f"test-logs-{kind}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_the_bound_fields_only_inside_the_block():
    logger, stream = capture("json")
    with logs.bound(project_id=3, job_id=None):
        with logs.bound(job_id=7):
            logger.info("training %s", "v2")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.warning("outside")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["message"], first["project_id"], first["job_id"], first["level"]) == ("training v2", 3, 7, "INFO")
    assert second["project_id"] == 3 and "job_id" not in second and "ValueError: boom" in second["exception"]
    assert "project_id" not in third and third["message"] == "outside"


def test_text_lines_append_the_fields_and_unknown_formats_are_refused():
    logger, stream = capture("text")
    token = logs.bind(project_id=4, task="nerloop.train")
    logger.info("hello")
    logs.unbind(token)
    logger.info("bye")
    hello, bye = stream.getvalue().splitlines()
    assert hello.endswith("hello project_id=4 task=nerloop.train") and bye.endswith("bye")
    with pytest.raises(ValueError, match="NERLOOP_LOG_FORMAT"):
        logs.formatter("xml")
