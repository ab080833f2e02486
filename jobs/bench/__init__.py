"""Benchmarks (``shopseq bench <name>``): one module each over the timing and memory helpers of :mod:`shopseq.jobs.bench.kit`."""
