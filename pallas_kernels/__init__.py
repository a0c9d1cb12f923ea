"""Pallas GPU kernels with custom VJPs, one folder per op. No Flax imports here."""
