"""Runners execute a split pipeline: locally (`local`) or on Kubernetes (`kubernetes`)."""
