"""Local stand-ins for exchanges: for ``make demo``, the tests and the benchmarks. Never a real venue."""
