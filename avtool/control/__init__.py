"""The ``sig`` channel between ``avtool sig`` and the running daemon.

wire.py: the messages (signals, answer lines, the counters; exit statuses), the one definition
both sides use. pidfile.py: the daemon's pid file, and what root believes about the process it
names. fifo.py: the answers pipe, the client's end and the daemon's. client.py: find the daemon,
signal it, read the answer. prometheus.py: the counters in Prometheus' text format.
"""
