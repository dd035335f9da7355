"""hints stage of mtcolor-batch."""
