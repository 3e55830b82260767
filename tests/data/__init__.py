"""Tests of ``recocamp.data``."""
