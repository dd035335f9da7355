"""perception stage of mtcolor-batch."""
