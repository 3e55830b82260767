"""Worker commands: ``recocamp worker`` and ``recocamp runs``.

Registers on the same typer app as ``cli.py`` (imported at its end).
"""

from __future__ import annotations
