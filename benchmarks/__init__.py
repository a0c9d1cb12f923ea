"""Benchmarks: kernel timings side by side with the anchors (FLA, mamba_ssm, cuDNN) and training throughput."""
