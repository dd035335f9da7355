"""scan stage of mtcolor-batch."""
