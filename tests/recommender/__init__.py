"""Tests of ``recocamp.recommender``."""
