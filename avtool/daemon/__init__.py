"""The filter daemon: lifecycle, event loop, pipeline, policy, reloads, counters, batch-test."""
