"""Tiny random-weight models of every family, for tests and benchmarks, and the family report measured on them."""
