"""model stage of mtcolor-batch."""
