"""Conformance: the properties (seeded, directed case generators) and the pytest plugin."""
