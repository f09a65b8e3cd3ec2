"""The wire contract: strict pydantic models for everything that crosses our edge (DESIGN sections 2-5)."""
