"""Training data without downloads: byte corpora, token arrays, MQAR and random tokens.

Every source gives numpy batches `{"inputs": [B, T] int32, "targets": [B, T] int32,
"weights": [B, T] float32}` (targets are inputs shifted by one; weights 1 where a target counts),
and those of documents also `"segment_ids": [B, T] int32` (packed documents, below).
The training batch of step k (1-based) is a pure function of `(seed, k)`, so a resumed run sees
exactly the batches an uninterrupted one would: the data-loader position is the step. The
validation set is fixed (drawn once from its own seed).

Several processes: each loads only the rows of the global batches (training and validation)
that its devices hold (`make_dataset(config, rows)`). They are the same rows a single process
would load: windows are drawn for the whole batch and only those of `rows` are read; synthetic
batches (MQAR, random) are generated whole and cut (`take_rows`).

* stdlib: the bytes of every `*.py` file under `sysconfig.get_paths()["stdlib"]` (site-packages
  and dist-packages excluded), sorted by path, one document per file; a file goes to validation
  when `crc32(relative path) % 10_000 < val_fraction * 10_000`. Batches are random windows.
* text: the bytes of one file (one document; the last `val_fraction` held out) or of every text
  file under a folder (one document per file; split by path hash like stdlib). A file is text
  when its first 64 KiB hold no NUL byte and decode as UTF-8; a folder's other files are
  skipped, a single binary file is refused. With `--tokenizer` (stdlib and text alike) each
  document is its tokens instead of its bytes, and the separator is the tokenizer's EOS.
* tokens: a 1-D integer `.npy` (memory-mapped) or a raw `.bin` of `token_dtype` (nanoGPT's
  format); the last `val_fraction` is validation. The `<file>.json` beside it that
  `python -m train.tokenize` writes gives its `dtype` and `separator_id` (options that
  contradict it are refused); `--separator_id` names the separator of a file without one.
  Without a separator the array is one stream with no document boundaries.
* mqar: multi-query associative recall (Arora et al., 2023, Zoology; used by the GLA paper): a
  context of key-value pairs, then every key queried once at power-law distributed positions;
  only the query positions carry a target (their value), and the metric is accuracy there.
* random: uniform random tokens (throughput runs).

Packed documents (stdlib, text, and tokens with a separator): the corpus is one stream in which
every document is followed by the separator (for the byte corpora NUL, byte 0, which text files
hold none of: a file with one past the text probe is refused; else the tokenizer's EOS, or a token
file's `separator_id`), the layout `python -m train.tokenize` writes. A row is a random window of
`seq_len + 1` tokens of that stream, so it holds consecutive documents, the first usually entered
mid-way and the last cut at the row end. `segment_ids` counts the separators up to each input
position: a new segment (document) starts at every separator, and at the row start. The separator
thus ends one document and opens the next, as a BOS would: the model sees each segment alone (no
recurrent state, convolution or attention crosses a boundary), and every target counts, none
crossing a boundary in what it is predicted from: a document's last token predicts the separator
(from that document alone: where a document ends), the separator predicts the next document's first
token (from the separator alone: how documents begin). The loss of a packed row is thus the sum of
the losses of its documents run one by one, each as `separator, tokens` with targets `tokens,
separator`, which is also how `python -m train.eval` scores documents.

Data that cannot be used (a missing path, a binary file as text, a split shorter than a
sequence, a token id outside the model's vocabulary) raises `DataError`, one line naming the
option to change.
"""

from __future__ import annotations

import codecs
import math
import queue
import sysconfig
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from train.tokenize import BYTE_SEPARATOR, read_sidecar, sidecar_path

Batch = dict[str, np.ndarray]

_HASH_BUCKETS = 10_000
_TEXT_PROBE_BYTES = 64 * 1024


class DataError(ValueError):
    """Data the run cannot use: `str(error)` is one line naming the option to change."""


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


def read_byte_documents(paths: list[Path]) -> np.ndarray:
    """The bytes of the files in order, each followed by BYTE_SEPARATOR (NUL). A file holding a
    NUL itself (past the text probe) is refused: it would split its document in two."""
    parts = []
    for path in paths:
        data = path.read_bytes()
        at = data.find(bytes([BYTE_SEPARATOR]))
        if at >= 0:
            raise DataError(f"--data_path: {str(path)!r} has a NUL byte at offset {at}, the "
                            f"separator of byte-level documents (remove the byte or the file)")
        parts += [data, bytes([BYTE_SEPARATOR])]
    return np.frombuffer(b"".join(parts), np.uint8)


def split_files(root: Path, files: list[Path], val_fraction: float
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train and validation streams of byte documents (`read_byte_documents`)."""
    train = [p for p in files if not is_val_file(p.relative_to(root).as_posix(), val_fraction)]
    val = [p for p in files if is_val_file(p.relative_to(root).as_posix(), val_fraction)]
    info = {"files": len(files), "train_files": len(train), "val_files": len(val)}
    if not train or not val:  # too few files for a split by file: split the stream instead
        return (*split_tail(read_byte_documents(files), val_fraction), {**info, "split": "tail"})
    return (read_byte_documents(train), read_byte_documents(val),
            {**info, "split": "file hash"})


def split_tail(arr: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, int(len(arr) * val_fraction))
    return arr[:len(arr) - n_val], arr[len(arr) - n_val:]


def why_not_text(path: Path) -> str | None:
    """None when `path` reads as text (no NUL byte and valid UTF-8 in its first 64 KiB), else
    the reason in a few words."""
    with path.open("rb") as f:
        head = f.read(_TEXT_PROBE_BYTES)
    nul = head.find(b"\0")
    if nul >= 0:
        return f"a NUL byte at offset {nul}"
    try:  # not final: the probe may end inside a multi-byte character
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        return f"not UTF-8 at byte {exc.start}"
    return None


def text_corpus(path: str | Path, val_fraction: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bytes of a text file (tail split) or of the text files under a folder (file-hash split),
    one document per file, each followed by BYTE_SEPARATOR."""
    path = Path(path)
    if path.is_file():
        why = why_not_text(path)
        if why is not None:
            raise DataError(f"--data_path: {str(path)!r} is not a text file ({why}); give "
                            f"token arrays as --data tokens")
        arr = read_byte_documents([path])
        return (*split_tail(arr, val_fraction), {"files": 1, "split": "tail"})
    if not path.is_dir():
        raise DataError(f"--data_path: no such file or folder: {str(path)!r}")
    found = sorted(p for p in path.rglob("*") if p.is_file())
    files = [p for p in found if why_not_text(p) is None]
    if not files:
        what = (f"{len(found)} files, none of them UTF-8 text without NUL bytes" if found
                else "it is empty")
        raise DataError(f"--data_path: no text files under {str(path)!r} ({what})")
    train, val, info = split_files(path, files, val_fraction)
    return train, val, {**info, "skipped_files": len(found) - len(files)}


def token_array(path: str | Path, token_dtype: str = "uint16") -> np.ndarray:
    """A memory-mapped 1-D token array from `.npy` or raw `.bin` (`token_dtype` elements)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data_path: no such file: {str(path)!r}")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"--data_path: {str(path)!r} is not a readable .npy file "
                            f"({' '.join(str(exc).split())})") from None
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"--data_path: a token .npy must be 1-D integers, got {arr.shape=}, "
                            f"{arr.dtype=} in {str(path)!r}")
        return arr
    itemsize = np.dtype(token_dtype).itemsize
    size = path.stat().st_size
    if size == 0 or size % itemsize:
        raise DataError(f"--token_dtype: {str(path)!r} has {size} bytes, not a whole number "
                        f"(> 0) of {token_dtype} tokens of {itemsize} bytes")
    return np.memmap(path, dtype=np.dtype(token_dtype), mode="r")


def token_corpus(path: str | Path, token_dtype: str | None, separator_id: int | None,
                 vocab_size: int) -> tuple[np.ndarray, int | None, dict]:
    """`(tokens, separator or None, info)` of a token file: its dtype and separator from the
    options and from its `<file>.json` (`train.tokenize.read_sidecar`), which must agree."""
    path = Path(path)
    try:
        meta = read_sidecar(path) or {}
    except ValueError as exc:
        raise DataError(f"--data_path: {exc}") from None
    side = str(sidecar_path(path))
    if meta.get("dtype") is not None and path.suffix != ".npy":
        if token_dtype is not None and token_dtype != meta["dtype"]:
            raise DataError(f"--token_dtype: {side!r} says dtype {meta['dtype']!r}, got "
                            f"{token_dtype!r}")
        token_dtype = meta["dtype"]
    if meta.get("separator_id") is not None:
        if separator_id is not None and separator_id != meta["separator_id"]:
            raise DataError(f"--separator_id: {side!r} says separator_id "
                            f"{meta['separator_id']}, got {separator_id}")
        separator_id = meta["separator_id"]
    if meta.get("vocab_size") is not None and meta["vocab_size"] > vocab_size:
        raise DataError(f"--vocab_size: {side!r} says the tokens come from a vocabulary of "
                        f"{meta['vocab_size']}, more than the model's vocab_size={vocab_size}")
    if separator_id is not None and separator_id >= vocab_size:
        raise DataError(f"--separator_id: must be < the model's vocab_size={vocab_size}, got "
                        f"{separator_id}")
    arr = token_array(path, token_dtype or "uint16")
    info = {"path": str(path), "split": "tail",
            "documents": ("no separator: no boundaries" if separator_id is None
                          else f"separated by id {separator_id}")}
    if meta:
        info["sidecar"] = side
    return arr, separator_id, info


def check_token_range(arr: np.ndarray, vocab_size: int, chunk: int = 1 << 24):
    """Raise `DataError` unless every token of `arr` is in `[0, vocab_size)` (read in chunks, so
    a memory-mapped array is scanned without loading it whole)."""
    for start in range(0, len(arr), chunk):
        part = np.asarray(arr[start:start + chunk])
        low, top = int(part.min()), int(part.max())
        if low < 0 or top >= vocab_size:
            raise DataError(f"--vocab_size: the data has token id {low if low < 0 else top}, "
                            f"outside the model's vocabulary [0, {vocab_size}) (raise "
                            f"--vocab_size, or check --data_path and --token_dtype)")


def unigram_entropy(arr: np.ndarray, vocab_size: int, max_tokens: int = 50_000_000) -> float:
    """Entropy in nats of the token frequencies (of the first `max_tokens` tokens)."""
    counts = np.bincount(np.asarray(arr[:max_tokens]).astype(np.int64), minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# --------------------------------------------------------------------------------------------
# Batches.


def window_batch(arr: np.ndarray, rng: np.random.Generator, batch_size: int, seq_len: int,
                 separator: int | None = None, *, rows: np.ndarray | None = None) -> Batch:
    """`batch_size` random windows of `seq_len + 1` tokens: inputs, next-token targets.

    With a `separator` the rows are packed documents (module docstring): `segment_ids` counts
    the separators among the inputs up to each position; every target counts. With `rows`
    (global row indices), only those windows of the batch are read: `[len(rows), ...]`.
    """
    n = len(arr) - seq_len
    if n < 1:
        raise ValueError(f"a split of {len(arr)} tokens is too short for seq_len={seq_len}")
    starts = np.sort(rng.integers(0, n, batch_size))  # sorted: friendlier reads of a memmap
    if rows is not None:
        starts = starts[rows]
    w = np.stack([np.asarray(arr[s:s + seq_len + 1]) for s in starts]).astype(np.int32)
    batch = {"inputs": w[:, :-1], "targets": w[:, 1:],
             "weights": np.ones((len(starts), seq_len), np.float32)}
    if separator is not None:
        batch["segment_ids"] = segment_ids_of(batch["inputs"], separator)
    return batch


def segment_ids_of(inputs: np.ndarray, separator: int) -> np.ndarray:
    """`[B, T]` int32: the separators in `inputs [B, T]` up to each position (a separator opens
    the next document; see the module docstring)."""
    return np.cumsum(inputs == separator, axis=1, dtype=np.int32)


def take_rows(batch: Batch, rows: np.ndarray | None) -> Batch:
    """The rows `rows` of every array of `batch` (all of them for None)."""
    return batch if rows is None else {name: x[rows] for name, x in batch.items()}


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


# `make(rng, rows)`: the batch drawn from `rng`, only its rows `rows` (all of them for None).
MakeBatch = Callable[[np.random.Generator, np.ndarray | None], Batch]


class Dataset:
    """The batches of a run: `train_batch(step)` and the fixed `val_batches`, each holding only
    the rows `rows` of the global batch (sorted global row indices; None: every row).

    Attributes: `kind`, `info` (a dict of sizes for the log), `entropy` (unigram entropy of the
    training tokens in nats, None for mqar), `has_accuracy` (MQAR reports accuracy), `rows`.
    """

    def __init__(self, kind: str, make: MakeBatch, *, seed: int, vocab_size: int,
                 eval_batches: int, make_val: MakeBatch | None = None,
                 rows: np.ndarray | None = None, entropy: float | None = None,
                 info: dict | None = None):
        self.kind = kind
        self.seed = seed
        self.vocab_size = vocab_size
        self.entropy = entropy
        self.info = info or {}
        self.has_accuracy = kind == "mqar"
        self.rows = rows
        self._make = make
        make_val = make_val or make
        val_rng = np.random.default_rng([seed, 1, 0x5EED])
        self.val_batches = [self._checked(make_val(val_rng, rows)) for _ in range(eval_batches)]

    def _checked(self, batch: Batch) -> Batch:
        for name in ("inputs", "targets"):
            check_token_range(batch[name], self.vocab_size)
        return batch

    def train_batch(self, step: int) -> Batch:
        """The batch of (1-based) optimizer step `step` (its rows `rows`): a pure function of
        (seed, step)."""
        return self._checked(self._make(np.random.default_rng([self.seed, 0, step]), self.rows))


def make_dataset(config, rows: np.ndarray | None = None) -> Dataset:
    """The `Dataset` a `TrainConfig` asks for, loading only the batch rows `rows` (sorted global
    row indices, e.g. `train.sharding.process_rows`; None: every row)."""
    B, T, V = config.batch_size, config.seq_len, config.model.vocab_size
    if rows is not None and (len(rows) == 0 or np.any(np.diff(rows) <= 0) or rows[0] < 0
                             or rows[-1] >= B):
        raise ValueError(f"rows must be sorted distinct indices below batch_size={B}, got "
                         f"{rows.tolist()}")
    common = dict(seed=config.seed, vocab_size=V, eval_batches=config.eval_batches, rows=rows)
    kind = config.data
    if kind in ("stdlib", "text", "tokens"):
        if kind in ("stdlib", "text") and config.tokenizer:
            train, val, sep, info = tokenized_corpus(config, V)
        elif kind == "stdlib":
            root = stdlib_root()
            train, val, info = split_files(root, stdlib_files(root), config.val_fraction)
            info, sep = {"root": str(root), **info}, BYTE_SEPARATOR
        elif kind == "text":
            train, val, info = text_corpus(config.data_path, config.val_fraction)
            sep = BYTE_SEPARATOR
        else:
            arr, sep, info = token_corpus(config.data_path, config.token_dtype,
                                          config.separator_id, V)
            train, val = split_tail(arr, config.val_fraction)
        if kind != "tokens":
            info["documents"] = f"one per file, separated by id {sep}"
        info.update(train_tokens=int(len(train)), val_tokens=int(len(val)))
        for name, split in (("train", train), ("validation", val)):
            if len(split) <= T:
                raise DataError(f"--seq_len: the {name} split has {len(split)} tokens, fewer "
                                f"than seq_len + 1 = {T + 1} (lower --seq_len or add data)")
            check_token_range(split, V)  # every token, not only those the batches happen to hit
        return Dataset(kind, lambda rng, rows: window_batch(train, rng, B, T, sep, rows=rows),
                       make_val=lambda rng, rows: window_batch(val, rng, B, T, sep, rows=rows),
                       entropy=unigram_entropy(train, max(V, 256)), info=info, **common)
    if kind == "mqar":
        mv = config.mqar_vocab_size or V
        n = config.mqar_num_kv_pairs

        def make(rng, rows):
            return take_rows(mqar_batch(rng, B, T, n, mv, config.mqar_power_a), rows)

        return Dataset(kind, make, info={"num_kv_pairs": n, "vocab_size": mv}, **common)
    if kind == "random":
        return Dataset(kind, lambda rng, rows: take_rows(random_batch(rng, B, T, V), rows),
                       entropy=math.log(V), info={"vocab_size": V}, **common)
    raise ValueError(f"unknown data kind {kind!r}")


def tokenized_corpus(config, vocab_size: int) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """--data text / stdlib through `--tokenizer`: the files (split by path hash as for bytes,
    or a single file's tail) as documents, each followed by the tokenizer's EOS; `(train, val,
    separator, info)`."""
    from jaxla.tokenizer import check_vocab, load_tokenizer
    from train.tokenize import encode_documents, read_documents, separator_of

    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, vocab_size)
    sep = separator_of(tokenizer)

    def encode(files):
        return encode_documents(tokenizer, read_documents(files), sep)[0].astype(np.int32)

    root = stdlib_root() if config.data == "stdlib" else Path(config.data_path)
    if root.is_file():
        train, val = split_tail(encode([root]), config.val_fraction)
        return train, val, sep, {"files": 1, "split": "tail", "tokenizer": tokenizer.name}
    if not root.is_dir():
        raise DataError(f"--data_path: no such file or folder: {str(root)!r}")
    files = (stdlib_files(root) if config.data == "stdlib"
             else sorted(p for p in root.rglob("*") if p.is_file() and why_not_text(p) is None))
    if not files:
        raise DataError(f"--data_path: no text files under {str(root)!r}")
    val_files = [p for p in files if is_val_file(p.relative_to(root).as_posix(),
                                                 config.val_fraction)]
    train_files = [p for p in files if p not in set(val_files)]
    info = {"files": len(files), "tokenizer": tokenizer.name}
    if not train_files or not val_files:
        train, val = split_tail(encode(files), config.val_fraction)
        return train, val, sep, {**info, "split": "tail"}
    return encode(train_files), encode(val_files), sep, {**info, "split": "file hash"}


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
