"""Temporal workflows. Deterministic: they import only stdlib and ``dubcore`` contracts."""
