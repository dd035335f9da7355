"""output stage of mtcolor-batch."""
