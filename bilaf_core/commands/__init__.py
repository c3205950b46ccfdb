"""One module per CLI sub-command (discovered automatically by :mod:`bilaf_core.cli`)."""
