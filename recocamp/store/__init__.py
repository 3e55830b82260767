"""The store: schema (``schema``), engines and migrations (``engine``), queries (``queries``)."""
