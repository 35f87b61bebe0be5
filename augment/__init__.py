"""Label-preserving augmentation for NER: every output keeps character spans that are valid and
mean what they meant in the source.

    from augment import METHODS, AugmentError, run
    report = run("mention_replacement", sources, n=2, seed=0, labelled=labelled_set)
    report.examples, report.dropped, report.duplicates, report.as_dict()

Methods (``METHODS`` maps each to its Celery queue): ``backtranslate`` (gpu), ``mention_replacement``,
``token_replacement``, ``synonym``, ``shuffle`` (cpu). ``ContextAugmenter`` runs any other text
augmenter (nlpaug's, say) on the context between mentions only; ``apply`` runs it with the same
checks, deduplication and provenance as ``run``.
"""

from .augmenters import ContextAugmenter
from .base import AugmentError, Augmenter
from .pipeline import AUGMENTERS, METHODS, Report, apply, check, faithful, run

__all__ = ["AUGMENTERS", "METHODS", "AugmentError", "Augmenter", "ContextAugmenter", "Report", "apply", "check", "faithful", "run"]
