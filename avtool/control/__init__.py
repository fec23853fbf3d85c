"""The `sig` channel between `avtool sig` and the running daemon."""
