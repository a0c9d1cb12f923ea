"""Pallas GPU kernels with custom VJPs, one folder per op. No Flax imports here.

Every kernel package (`gla`, `simple_gla`, `selective_scan`) has the same face:

* `unsupported(**inputs) -> reason | None`: why the kernels cannot take inputs of these sizes
  and dtype (`jaxla.ops` falls back to its XLA path on that reason, or raises it).
* `BlockSizes`: a frozen dataclass of tiles and Triton launch parameters, validated when built.
  `BlockSizes.get_default(**dims, **overrides)` gives the defaults for one call's dims (fields in
  `overrides` replace them), and `sizes.for_call(**dims)` fits any sizes to that call (tiles
  clipped to the padded dims, unset launch parameters filled). The package's entry points take
  `block_sizes=` and apply `for_call` themselves; `for_call` is idempotent. The dims are
    gla:            head_dim_k, head_dim_v, seq_len
    simple_gla:     head_dim_k, head_dim_v, dtype
    selective_scan: state_size, batch, seq_len, channels, groups
* The entry points: one `jax.custom_vjp` per kernel family whose static options travel first
  as a hashable `_Static`.
"""
