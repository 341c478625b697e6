"""Benchmark clients for other libraries, each run in a venv of its own (bench/compare.py).

They import nothing from kairos_core: the library under test is the only thing in their venv
besides the standard library.
"""
