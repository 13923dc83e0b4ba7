"""Audit tools: they read what runs wrote and check, restate or report it (never run on workers)."""
