"""Background work on Celery: the app and its queues (``celery_app``, all the API and CLI import, to
enqueue by task name), job bookkeeping (``jobs``), and the tasks (``tasks``: training with evaluation
and promotion, sharded pool scoring with a bulk push to Label Studio, annotation sync).

Run a worker with ``nerloop worker --queues gpu,cpu`` or ``celery -A workers.celery_app worker -Q gpu,cpu``.
"""
