"""Training data without downloads: byte corpora, token arrays, MQAR and random tokens.

Every source gives numpy batches `{"inputs": [B, T] int32, "targets": [B, T] int32,
"weights": [B, T] float32}` (targets are inputs shifted by one; weights 1 where a target counts),
plus `"segment_ids": [B, T] int32` where the data has documents (packed rows, below).
The training batch of step k (1-based) is a pure function of `(seed, k)`, so a resumed run sees
exactly the batches an uninterrupted one would: the data-loader position is the step. The
validation set is fixed (drawn once from its own seed).

* stdlib: the bytes of every `*.py` file under `sysconfig.get_paths()["stdlib"]` (site-packages
  and dist-packages excluded), sorted by path, one document per file; a file goes to validation
  when `crc32(relative path) % 10_000 < val_fraction * 10_000`. Batches are random windows.
* text: the bytes of one file (one document; the last `val_fraction` held out) or of every file
  under a folder (one document per file; split by path hash like stdlib; files with a NUL byte
  are skipped as binary).
* tokens: a 1-D integer `.npy` (memory-mapped) or a raw `.bin` of `token_dtype` (nanoGPT's
  format); the last `val_fraction` is validation. Documents end with the separator `eos_id`
  (`--eos_id`, or the sidecar's); without one the array is one stream with no boundaries.
  Sidecar: a JSON file named `<token file>.json` (e.g. `train.bin.json`, as written by the
  tokenizer) with `{"eos_id": int, "dtype": "uint16" | "uint32" | "int32", "vocab_size": int}`;
  when present it gives the separator and a `.bin` file's dtype (options that contradict it
  are refused), and the model's vocab_size must cover its vocab_size.
* mqar: multi-query associative recall (Arora et al., 2023, Zoology; used by the GLA paper): a
  context of key-value pairs, then every key queried once at power-law distributed positions;
  only the query positions carry a target (their value), and the metric is accuracy there.
* random: uniform random tokens (throughput runs).

Packed documents (stdlib, text folders, tokens with a separator): the corpus is one stream in
which every document is followed by its separator token (byte 0, NUL, for the byte corpora: text
files contain none; `eos_id` for token files). A row is a window of `seq_len + 1` tokens of that
stream: consecutive documents, the first usually entered mid-way (that continuation starts a new
segment at the row start, as every row does) and the last cut at the row end. `segment_ids`
counts the separators before each input position, so a new segment starts right after every
separator and the model sees each document alone (no state, convolution or attention across a
boundary). The loss at a boundary: the separator is the last token of its document and the
target of the document's last token (the model learns where documents end); the target of the
separator itself is the next document's first token, which nothing in the document predicts,
so its weight is 0. No other target crosses a boundary, in training and in evaluation.
"""

from __future__ import annotations

import json
import math
import queue
import sysconfig
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

Batch = dict[str, np.ndarray]

_HASH_BUCKETS = 10_000
# The separator that ends every document of a byte corpus (stdlib, text folders): NUL, which
# text files do not contain (files with a NUL byte are skipped as binary).
BYTE_EOS = 0
TOKEN_DTYPES = ("uint16", "uint32", "int32")


# --------------------------------------------------------------------------------------------
# Byte corpora.


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Every `*.py` file of the standard library, sorted (installed packages excluded)."""
    root = stdlib_root() if root is None else root
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py")
                  if p.is_file() and not skip.intersection(p.relative_to(root).parts))


def is_val_file(relpath: str, val_fraction: float) -> bool:
    """The deterministic train/val split of files: a hash of the relative path."""
    return zlib.crc32(relpath.encode()) % _HASH_BUCKETS < val_fraction * _HASH_BUCKETS


def _read_documents(paths: list[Path]) -> np.ndarray:
    """The bytes of the files in order, each followed by the separator BYTE_EOS."""
    end = bytes([BYTE_EOS])
    return np.frombuffer(b"".join(p.read_bytes() + end for p in paths), np.uint8)


def split_files(root: Path, files: list[Path], val_fraction: float
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train and validation streams of documents (one per file, each ending with BYTE_EOS)."""
    train = [p for p in files if not is_val_file(p.relative_to(root).as_posix(), val_fraction)]
    val = [p for p in files if is_val_file(p.relative_to(root).as_posix(), val_fraction)]
    info = {"files": len(files), "train_files": len(train), "val_files": len(val)}
    if not train or not val:  # too few files for a split by file: split the stream instead
        return (*split_tail(_read_documents(files), val_fraction), {**info, "split": "tail"})
    return _read_documents(train), _read_documents(val), {**info, "split": "file hash"}


def split_tail(arr: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, int(len(arr) * val_fraction))
    return arr[:len(arr) - n_val], arr[len(arr) - n_val:]


def _is_binary(path: Path) -> bool:
    return bytes([BYTE_EOS]) in path.read_bytes()


def text_corpus(path: str | Path, val_fraction: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bytes of a text file (tail split, no separator) or of the text files under a folder
    (file-hash split, each file a document ending with BYTE_EOS); `info["documents"]` says
    which."""
    path = Path(path)
    if path.is_file():
        arr = np.fromfile(path, np.uint8)
        return (*split_tail(arr, val_fraction), {"files": 1, "split": "tail",
                                                 "documents": "one (no boundaries)"})
    if not path.is_dir():
        raise FileNotFoundError(f"--data_path {str(path)!r} is neither a file nor a folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not _is_binary(p))
    if not files:
        raise ValueError(f"no text files under {str(path)!r}")
    train, val, info = split_files(path, files, val_fraction)
    return train, val, {**info, "documents": "one per file"}


def token_sidecar(path: str | Path) -> dict | None:
    """The tokenizer's description of a token file, `<path>.json`, or None when there is none:
    `{"eos_id": int, "dtype": "uint16" | "uint32" | "int32", "vocab_size": int}`."""
    side = Path(str(path) + ".json")
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(side)!r}: not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{str(side)!r} must hold a JSON object, got {type(meta).__name__}")
    for key in ("eos_id", "vocab_size"):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{str(side)!r}: {key} must be an int >= 0, got {key}={value!r}")
    if meta.get("dtype") not in TOKEN_DTYPES:
        raise ValueError(f"{str(side)!r}: dtype must be one of {TOKEN_DTYPES}, "
                         f"got dtype={meta.get('dtype')!r}")
    if meta["eos_id"] >= meta["vocab_size"]:
        raise ValueError(f"{str(side)!r}: eos_id={meta['eos_id']} must be < "
                         f"vocab_size={meta['vocab_size']}")
    return meta


def token_array(path: str | Path, token_dtype: str | None = None) -> np.ndarray:
    """A memory-mapped 1-D token array from `.npy` or raw `.bin` (`token_dtype` elements,
    uint16 when None)."""
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{str(path)!r}: a token .npy must be 1-D integers, got "
                             f"{arr.shape=}, {arr.dtype=}")
        return arr
    return np.memmap(path, dtype=np.dtype(token_dtype or "uint16"), mode="r")


def token_corpus(path: str | Path, token_dtype: str | None, eos_id: int | None,
                 vocab_size: int) -> tuple[np.ndarray, int | None, dict]:
    """The token array of `path`, its separator (None: no document boundaries) and log info,
    from the options and the sidecar (`token_sidecar`), which must agree."""
    meta = token_sidecar(path)
    side = f"{str(path)}.json"
    if meta is not None:
        if token_dtype is not None and token_dtype != meta["dtype"]:
            raise ValueError(f"--token_dtype {token_dtype} contradicts dtype={meta['dtype']!r} "
                             f"in {side!r}")
        if eos_id is not None and eos_id != meta["eos_id"]:
            raise ValueError(f"--eos_id {eos_id} contradicts eos_id={meta['eos_id']} in {side!r}")
        if meta["vocab_size"] > vocab_size:
            raise ValueError(f"{side!r} says vocab_size={meta['vocab_size']}, more than the "
                             f"model's vocab_size={vocab_size}; raise --vocab_size")
        token_dtype, eos_id = meta["dtype"], meta["eos_id"]
    arr = token_array(path, token_dtype)
    if meta is not None and str(arr.dtype) != meta["dtype"]:
        raise ValueError(f"{str(path)!r} holds {arr.dtype} tokens but {side!r} says "
                         f"dtype={meta['dtype']!r}")
    if eos_id is not None and eos_id >= vocab_size:
        raise ValueError(f"--eos_id {eos_id} must be < the model's vocab_size={vocab_size}")
    info = {"path": str(path), "split": "tail",
            "documents": "no boundaries" if eos_id is None else f"end with eos_id {eos_id}"}
    if meta is not None:
        info["sidecar"] = side
    return arr, eos_id, info


def unigram_entropy(arr: np.ndarray, vocab_size: int, max_tokens: int = 50_000_000) -> float:
    """Entropy in nats of the token frequencies (of the first `max_tokens` tokens)."""
    counts = np.bincount(np.asarray(arr[:max_tokens]).astype(np.int64), minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# --------------------------------------------------------------------------------------------
# Batches.


def window_batch(arr: np.ndarray, rng: np.random.Generator, batch_size: int, seq_len: int,
                 eos_id: int | None = None) -> Batch:
    """`batch_size` random windows of `seq_len + 1` tokens: inputs, next-token targets.

    With a separator `eos_id` the rows are packed documents (module docstring): `segment_ids`
    count the separators before each input position, and the targets of separators (the next
    document's first token) get weight 0.
    """
    n = len(arr) - seq_len
    if n < 1:
        raise ValueError(f"a split of {len(arr)} tokens is too short for seq_len={seq_len}")
    starts = np.sort(rng.integers(0, n, batch_size))  # sorted: friendlier reads of a memmap
    w = np.stack([np.asarray(arr[s:s + seq_len + 1]) for s in starts]).astype(np.int32)
    inputs = w[:, :-1]
    if eos_id is None:
        return {"inputs": inputs, "targets": w[:, 1:],
                "weights": np.ones((batch_size, seq_len), np.float32)}
    ends = inputs == eos_id
    segment_ids = (np.cumsum(ends, axis=1, dtype=np.int32) - ends).astype(np.int32)
    return {"inputs": inputs, "targets": w[:, 1:], "weights": (~ends).astype(np.float32),
            "segment_ids": segment_ids}


def mqar_batch(rng: np.random.Generator, batch_size: int, seq_len: int, num_kv_pairs: int,
               vocab_size: int, power_a: float = 0.01) -> Batch:
    """A multi-query associative recall batch.

    Each sequence `s` of `seq_len + 1` tokens starts with `num_kv_pairs` pairs `k_i v_i` (distinct
    keys from `[1, vocab/2)`, distinct values from `[vocab/2, vocab)`), then 0s, where every key
    is placed once more, at even offsets `2 g` after the context with the gaps `g` drawn without
    replacement from p(g) ~ (g + 1)^(a - 1). The model reads `s[:-1]`; the only targets are the
    values, at the positions of the queried keys.
    """
    n, L = num_kv_pairs, seq_len + 1
    context = 2 * n
    slots = (L - context) // 2  # query positions context + 2g, g < slots
    half = vocab_size // 2
    if slots < n or half - 1 < n:
        raise ValueError(f"MQAR needs seq_len + 1 >= 4 * num_kv_pairs and vocab_size / 2 > "
                         f"num_kv_pairs; got {seq_len=}, {num_kv_pairs=}, {vocab_size=}")
    keys = np.argsort(rng.random((batch_size, half - 1)), axis=1)[:, :n] + 1
    values = np.argsort(rng.random((batch_size, vocab_size - half)), axis=1)[:, :n] + half
    seq = np.zeros((batch_size, L), np.int32)
    seq[:, 0:context:2] = keys
    seq[:, 1:context:2] = values
    # Sampling without replacement from p by the Gumbel top-k trick.
    logp = (power_a - 1.0) * np.log(np.arange(1, slots + 1, dtype=np.float64))
    gumbel = -np.log(-np.log(rng.random((batch_size, slots))))
    gaps = np.argsort(-(logp + gumbel), axis=1)[:, :n]
    pos = context + 2 * gaps  # position of each queried key in seq
    rows = np.arange(batch_size)[:, None]
    seq[rows, pos] = keys
    targets = np.zeros((batch_size, seq_len), np.int32)
    weights = np.zeros((batch_size, seq_len), np.float32)
    targets[rows, pos] = values
    weights[rows, pos] = 1.0
    return {"inputs": seq[:, :-1], "targets": targets, "weights": weights}


def random_batch(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int
                 ) -> Batch:
    w = rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)
    return {"inputs": w[:, :-1], "targets": w[:, 1:],
            "weights": np.ones((batch_size, seq_len), np.float32)}


# --------------------------------------------------------------------------------------------
# The dataset of a run.


class Dataset:
    """The batches of a run: `train_batch(step)` and the fixed `val_batches`.

    Attributes: `kind`, `info` (a dict of sizes for the log), `entropy` (unigram entropy of the
    training tokens in nats, None for mqar), `has_accuracy` (MQAR reports accuracy).
    """

    def __init__(self, kind: str, make: Callable[[np.random.Generator], Batch], *,
                 seed: int, vocab_size: int, eval_batches: int,
                 make_val: Callable[[np.random.Generator], Batch] | None = None,
                 entropy: float | None = None, info: dict | None = None):
        self.kind = kind
        self.seed = seed
        self.vocab_size = vocab_size
        self.entropy = entropy
        self.info = info or {}
        self.has_accuracy = kind == "mqar"
        self._make = make
        make_val = make_val or make
        val_rng = np.random.default_rng([seed, 1, 0x5EED])
        self.val_batches = [self._checked(make_val(val_rng)) for _ in range(eval_batches)]

    def _checked(self, batch: Batch) -> Batch:
        top = int(batch["inputs"].max(initial=0))
        top = max(top, int(batch["targets"].max(initial=0)))
        if top >= self.vocab_size:
            raise ValueError(f"data has token id {top} >= the model's vocab_size="
                             f"{self.vocab_size}; raise --vocab_size")
        return batch

    def train_batch(self, step: int) -> Batch:
        """The batch of (1-based) optimizer step `step`: a pure function of (seed, step)."""
        return self._checked(self._make(np.random.default_rng([self.seed, 0, step])))


def make_dataset(config) -> Dataset:
    """The `Dataset` a `TrainConfig` asks for."""
    B, T, V = config.batch_size, config.seq_len, config.model.vocab_size
    common = dict(seed=config.seed, vocab_size=V, eval_batches=config.eval_batches)
    kind = config.data
    if kind in ("stdlib", "text", "tokens"):
        if kind == "stdlib":
            root = stdlib_root()
            train, val, info = split_files(root, stdlib_files(root), config.val_fraction)
            info = {"root": str(root), **info, "documents": "one per file"}
            eos = BYTE_EOS
        elif kind == "text":
            train, val, info = text_corpus(config.data_path, config.val_fraction)
            eos = None if Path(config.data_path).is_file() else BYTE_EOS
        else:
            arr, eos, info = token_corpus(config.data_path, config.token_dtype, config.eos_id, V)
            train, val = split_tail(arr, config.val_fraction)
        info.update(train_tokens=int(len(train)), val_tokens=int(len(val)))
        for name, split in (("train", train), ("validation", val)):
            if len(split) <= T:
                raise ValueError(f"the {name} split has {len(split)} tokens, fewer than "
                                 f"seq_len + 1 = {T + 1}; lower --seq_len or add data")
        return Dataset(kind, lambda rng: window_batch(train, rng, B, T, eos),
                       make_val=lambda rng: window_batch(val, rng, B, T, eos),
                       entropy=unigram_entropy(train, max(V, 256)), info=info, **common)
    if kind == "mqar":
        mv = config.mqar_vocab_size or V
        n = config.mqar_num_kv_pairs

        def make(rng):
            return mqar_batch(rng, B, T, n, mv, config.mqar_power_a)

        return Dataset(kind, make, info={"num_kv_pairs": n, "vocab_size": mv}, **common)
    if kind == "random":
        return Dataset(kind, lambda rng: random_batch(rng, B, T, V), entropy=math.log(V),
                       info={"vocab_size": V}, **common)
    raise ValueError(f"unknown data kind {kind!r}")


class Prefetcher:
    """Builds the batches of steps `first..last` on a background thread, `depth` ahead.

    `put` (e.g. `jax.device_put` with the batch sharding) runs on that thread too, so host work
    and host-to-device copies overlap the step in flight. Errors surface on `next()`.
    """

    def __init__(self, dataset: Dataset, first: int, last: int, put: Callable[[Batch], object],
                 depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(dataset, first, last, put),
                                        daemon=True, name="train-data")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, dataset, first, last, put):
        try:
            for step in range(first, last + 1):
                if not self._put((step, put(dataset.train_batch(step)))):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            self._put(("error", exc))

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        item = self._q.get()
        if item[0] == "error":
            raise item[1]
        return item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
