"""Tests of ``recocamp.cli``."""
