"""Destinations the archive is delivered to, exactly once (PostgreSQL)."""
