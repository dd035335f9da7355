"""Tiny random models and synthetic data for tests, demos and ``models tiny``: built offline in seconds.

Nothing here is used by a real run; it ships because ``mtcolor-batch models tiny`` writes a pipeline-check
bundle with it.
"""
