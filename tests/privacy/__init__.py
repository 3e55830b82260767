"""Tests of ``recocamp.privacy``."""
