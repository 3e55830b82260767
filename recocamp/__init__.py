"""recocamp: a retention engine for online shops.

Read ``DESIGN.md``-style layering from the module names: ``domain``, ``errors`` and
``clock`` are the base; pure stages (``kpis``, ``catalog`` …) build on them; adapters
(``store``, ``sources``) do I/O; shells (``cli``) wire everything together.
"""

__version__ = "0.1.0"
