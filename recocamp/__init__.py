"""recocamp: a retention engine for online shops.

A package per capability, in the order data flows: ``data`` (in) → ``recommender`` and
``forecast`` → ``campaigns`` → ``delivery`` → ``measure``; ``privacy``, ``worker``, ``api``
and ``cli`` on top; ``store`` (every SQL statement) beneath them all. The base modules
(``settings``, ``errors``, ``clock``, ``domain``, ``tokens``, ``ratelimit``, ``metrics``,
``config_files``) import nothing above them. Each package's ``__init__`` says what it owns;
``tests/test_layers.py`` holds the table of who may import whom.
"""

import os

# implicit's advice, and measured: a multi-threaded OpenBLAS pool makes a busy endpoint
# collapse (15 instead of 1,300 requests/s). Set before numpy loads BLAS; recommender/models.py also
# limits threads with threadpoolctl around every fit and scoring call.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
