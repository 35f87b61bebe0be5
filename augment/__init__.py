"""Label-preserving augmenters (their own issue)."""
