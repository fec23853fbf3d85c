"""Scanning mail files and mailboxes (`avtool scan`)."""
