"""Shared pytest fixtures for the Leveret test suite."""
