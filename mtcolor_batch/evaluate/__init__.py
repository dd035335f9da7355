"""evaluate stage of mtcolor-batch."""
