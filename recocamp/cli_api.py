"""Shop API and privacy commands: ``recocamp serve`` and ``recocamp privacy …``.

Registers on the same typer app as ``cli.py`` (imported at its end).
"""

from __future__ import annotations
