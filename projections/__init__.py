"""Projection workers: views built from the store's ordered log."""
