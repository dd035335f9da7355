"""render stage of mtcolor-batch."""
