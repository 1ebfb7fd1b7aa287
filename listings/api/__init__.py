"""The catalog's read-only REST API (mounted at /api/v1/catalog/)."""
