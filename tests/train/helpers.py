"""A small text corpus and the command line of a tiny, fast run."""

from pathlib import Path

import numpy as np

from train.config import parse_args


def corpus(tmp_path: Path, rng) -> Path:
    """A folder of 40 text documents, 60 kB in all, with structure to learn (repeated words)
    and noise; as a folder it trains on packed documents (one per file)."""
    words = [bytes(rng.integers(97, 123, int(rng.integers(2, 8))).astype(np.uint8)).decode()
             for _ in range(50)]
    text = " ".join(words[int(i)] for i in rng.integers(0, 50, 12_000))[:60_000]
    folder = tmp_path / "corpus"
    folder.mkdir()
    cuts = np.sort(rng.choice(np.arange(1, len(text)), 39, replace=False))
    for i, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(text)], strict=True)):
        (folder / f"doc{i:02d}.txt").write_text(text[start:end])
    return folder


def tiny_args(run_dir: Path, data_path: Path, *extra: str) -> list[str]:
    return ["--preset", "tiny_gla", "--data", "text", "--data_path", str(data_path),
            "--run_dir", str(run_dir), "--batch_size", "8", "--seq_len", "32",
            "--eval_batches", "2", "--num_devices", "1", "--progress", "off", "--log_every", "1",
            "--lr", "3e-3", "--warmup_steps", "2", *extra]


def tiny_config(run_dir: Path, data_path: Path, *extra: str):
    return parse_args(tiny_args(run_dir, data_path, *extra), backend="cpu")
