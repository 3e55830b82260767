"""Tests of ``recocamp.campaigns``."""
