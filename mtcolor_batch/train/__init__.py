"""train stage of mtcolor-batch."""
