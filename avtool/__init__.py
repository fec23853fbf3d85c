"""avtool: the anti-virus filter for the Courier mail server, on ClamAV's clamd."""

__version__ = "0.1.0.dev0"
