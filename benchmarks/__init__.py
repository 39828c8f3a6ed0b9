"""comux benchmarks (pytest-benchmark), see benchmarks/README.md; plain ``pytest`` skips them."""
