"""Background work on Celery: the app, its queues and the task names (``celery_app``, all the API and
CLI import, to enqueue by task name), a job's life on a worker (``lifecycle``), and the tasks
(``tasks``: training with evaluation and promotion, sharded pool scoring with a bulk push to Label
Studio, annotation sync, augmentation, the beat's sweep).

Run a worker with ``nerloop worker --queues gpu,cpu`` or ``celery -A workers.celery_app worker -Q gpu,cpu``.
"""
