"""Tests of ``recocamp.worker``."""
