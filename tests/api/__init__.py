"""Tests of ``recocamp.api``."""
