"""jobs stage of mtcolor-batch."""
