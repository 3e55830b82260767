"""Tests of ``recocamp.delivery``."""
