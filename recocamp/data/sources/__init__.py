"""Where data comes from: one module per kind of source (``csv`` for files)."""
