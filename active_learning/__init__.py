"""The ML core of nerloop: spans, corpora, the tagger, training, metrics, strategies, simulation.

No servers here: this package knows nothing of HTTP, Celery or the database.
"""
