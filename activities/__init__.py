"""Temporal activities: thin adapters that resolve object keys, call one engine, store the
artifact and return keys. One module per capability; each class receives its clients."""
