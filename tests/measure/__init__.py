"""Tests of ``recocamp.measure``."""
