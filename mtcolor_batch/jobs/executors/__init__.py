"""Executors: how the planned files get processed (here, in order; or on a Ray cluster)."""
