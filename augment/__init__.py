"""Label-preserving augmentation for NER: every output keeps character spans that are valid and
mean what they meant in the source.

    from augment import AUGMENTERS, AugmentError, run
    report = run("mention_replacement", sources, n=2, seed=0, labelled=labelled_set)
    report.examples, report.dropped, report.duplicates, report.as_dict()

Methods (``AUGMENTERS`` maps each name to its class): ``backtranslate`` (``needs_accelerator``: it
runs a neural model), ``mention_replacement``, ``token_replacement``, ``synonym``, ``shuffle``.
``ContextAugmenter`` runs any other text augmenter (nlpaug's, say) on the context between mentions
only; ``apply`` runs it with the same checks, deduplication and provenance as ``run``.
"""

from .augmenters import ContextAugmenter
from .base import Allowed, Augmenter, AugmentError
from .pipeline import AUGMENTERS, Report, apply, check, faithful, run

__all__ = ["AUGMENTERS", "Allowed", "AugmentError", "Augmenter", "ContextAugmenter", "Report", "apply", "check", "faithful", "run"]
