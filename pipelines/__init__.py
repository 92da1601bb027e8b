"""Runnable pipelines, their options and the one builder that wires the steps."""
