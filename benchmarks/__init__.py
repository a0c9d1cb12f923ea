"""Benchmarks: kernel timings side by side with the anchors (FLA, mamba_ssm, cuDNN) and training
throughput.

Output: the scripts print their tables; with the environment variable OUT set they also write
their results (JSON, Markdown tables, logs; each module's docstring names its files) under $OUT.
On our GPU machines $OUT is the one folder that comes back from a run; the shell scripts in
`benchmarks/gpu/` default it to /tmp/out. benchmarks/RESULTS.md holds the results and commands.
"""
