"""Tests of ``recocamp.forecast``."""
