"""mtcolor-batch: colorize archives of black-and-white scans with MT-Color."""

__version__ = "0.1.0"
