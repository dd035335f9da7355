"""Browser editor for sidecar hints (``mtcolor-batch hints edit``)."""
