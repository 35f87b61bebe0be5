"""The Celery app, queues and tasks (their own issue)."""
