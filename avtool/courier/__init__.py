"""Courier's side of the filter: the socket protocol (pure), control files and header edits."""
