"""Planned capability (see ARCHITECTURE.md); not implemented yet."""
