"""The parts of benchmarks/serve_bench.py: workload, load-generating client, CPU accounting, server process,
/metrics scraping, the cases themselves, and the report. The script itself only parses flags and runs the cases.
"""
