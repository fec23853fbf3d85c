"""Benchmarks (run as scripts: python bench/engine.py) and the corpus generator."""
