"""Data sources: the stdlib split, text files and folders, token arrays, MQAR, determinism."""

import math

import numpy as np
import pytest

from train import data as D
from train.config import parse_args


def _config(*argv):
    return parse_args(["--preset", "tiny_gla", "--batch_size", "4", "--seq_len", "16",
                       "--eval_batches", "2", *argv], backend="cpu")


def test_stdlib_split_is_deterministic_and_disjoint():
    root = D.stdlib_root()
    files = D.stdlib_files(root)
    assert len(files) > 200 and files == sorted(files)
    assert not any("site-packages" in p.parts for p in files)
    rel = [p.relative_to(root).as_posix() for p in files]
    val = {r for r in rel if D.is_val_file(r, 0.05)}
    train = set(rel) - val
    assert val and train and not (val & train)
    assert abs(len(val) / len(rel) - 0.05) < 0.03  # a hash split near the asked share
    assert val == {r for r in rel if D.is_val_file(r, 0.05)}  # same answer again
    assert "os.py" in train or "os.py" in val


def test_stdlib_dataset_batches_are_a_function_of_seed_and_step():
    ds = D.make_dataset(_config())
    assert ds.info["train_files"] + ds.info["val_files"] == ds.info["files"]
    b1, b1_again, b2 = ds.train_batch(1), ds.train_batch(1), ds.train_batch(2)
    for key in ("inputs", "targets", "weights"):
        np.testing.assert_array_equal(b1[key], b1_again[key])
    assert not np.array_equal(b1["inputs"], b2["inputs"])
    assert b1["inputs"].shape == (4, 16) and b1["inputs"].dtype == np.int32
    np.testing.assert_array_equal(b1["inputs"][:, 1:], b1["targets"][:, :-1])  # shifted by one
    assert 2.5 < ds.entropy < math.log(256)  # Python source: about 4.7 bits per byte
    other_seed = D.make_dataset(_config("--seed", "1"))
    assert not np.array_equal(other_seed.train_batch(1)["inputs"], b1["inputs"])


def test_text_file_and_folder(tmp_path, rng):
    text = "".join(chr(c) for c in rng.integers(32, 127, 5000)).encode()
    f = tmp_path / "corpus.txt"
    f.write_bytes(text)
    train, val, info = D.text_corpus(f, 0.1)
    assert info["split"] == "tail" and len(val) == 500
    # One document: the file's bytes, then the separator byte 0.
    np.testing.assert_array_equal(np.concatenate([train, val]),
                                  np.frombuffer(text + b"\0", np.uint8))

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for i in range(40):
        (folder / ("sub" if i % 2 else "") / f"f{i}.md").write_bytes(text[i * 100:(i + 1) * 100])
    (folder / "blob.bin").write_bytes(b"\0\1\2" * 100)  # binary: skipped
    train, val, info = D.text_corpus(folder, 0.25)
    assert info["files"] == 40 and info["split"] == "file hash"
    # One document per file, each ending with the separator byte 0 (which text has none of).
    assert info["train_files"] + info["val_files"] == 40 and len(train) + len(val) == 4040
    assert np.sum(train == 0) == info["train_files"] and np.sum(val == 0) == info["val_files"]
    assert train[-1] == 0 and val[-1] == 0
    ds = D.make_dataset(_config("--data", "text", "--data_path", str(folder)))
    assert ds.train_batch(3)["inputs"].max() < 127


@pytest.mark.parametrize("fmt", ["npy", "bin16", "bin32"])
def test_token_arrays(tmp_path, rng, fmt):
    dtype = {"npy": np.int32, "bin16": np.uint16, "bin32": np.uint32}[fmt]
    tokens = rng.integers(0, 200, 3000).astype(dtype)
    if fmt == "npy":
        path = tmp_path / "tokens.npy"
        np.save(path, tokens)
        argv = []
    else:
        path = tmp_path / "tokens.bin"
        tokens.tofile(path)
        argv = ["--token_dtype", "uint16" if fmt == "bin16" else "uint32"]
    ds = D.make_dataset(_config("--data", "tokens", "--data_path", str(path), *argv))
    assert ds.info["train_tokens"] == 2850 and ds.info["val_tokens"] == 150
    b = ds.train_batch(5)
    # Every row is a contiguous window of the training split.
    train = tokens[:2850].astype(np.int64)
    for row in np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1):
        starts = np.flatnonzero(train[:len(train) - 16] == row[0])
        assert any(np.array_equal(train[s:s + 17], row) for s in starts)


def test_out_of_vocab_tokens_are_refused(tmp_path):
    path = tmp_path / "tokens.npy"
    np.save(path, np.full(1000, 300, np.int32))
    with pytest.raises(ValueError, match="vocab_size"):
        D.make_dataset(_config("--data", "tokens", "--data_path", str(path)))


def test_too_short_split_is_refused(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"abc" * 100)
    with pytest.raises(ValueError, match="seq_len"):
        D.make_dataset(_config("--data", "text", "--data_path", str(path), "--seq_len", "64"))


def test_mqar_batches(rng):
    B, T, n, V = 16, 63, 6, 40
    b = D.mqar_batch(rng, B, T, n, V)
    x, y, w = b["inputs"], b["targets"], b["weights"]
    assert x.shape == y.shape == w.shape == (B, T)
    assert np.all(w.sum(axis=1) == n)  # every key queried once
    for row in range(B):
        keys, values = x[row, 0:2 * n:2], x[row, 1:2 * n:2]
        assert len(set(keys)) == n and len(set(values)) == n
        assert np.all((1 <= keys) & (keys < V // 2)) and np.all(values >= V // 2)
        pairs = dict(zip(keys.tolist(), values.tolist(), strict=True))
        pos = np.flatnonzero(w[row])
        assert np.all(pos >= 2 * n) and np.all((pos - 2 * n) % 2 == 0)
        assert sorted(x[row, pos].tolist()) == sorted(keys.tolist())
        for p in pos:  # the target at a query is the value paired with the queried key
            assert y[row, p] == pairs[int(x[row, p])]
        rest = np.ones(T, bool)
        rest[:2 * n] = False
        rest[pos] = False
        assert np.all(x[row, rest] == 0)  # everything else is the filler
    # Zoology's power law (a = 0.01) puts queries close to the context.
    gaps = (np.flatnonzero(D.mqar_batch(rng, 256, T, n, V)["weights"].ravel() > 0) % T - 2 * n) // 2
    assert np.mean(gaps) < 0.5 * ((T + 1 - 2 * n) // 2)
    with pytest.raises(ValueError, match="MQAR"):
        D.mqar_batch(rng, 2, 15, 6, V)


def test_mqar_and_random_datasets():
    ds = D.make_dataset(_config("--data", "mqar", "--mqar_num_kv_pairs", "3"))
    assert ds.has_accuracy and ds.entropy is None and len(ds.val_batches) == 2
    np.testing.assert_array_equal(ds.train_batch(7)["inputs"], ds.train_batch(7)["inputs"])
    rnd = D.make_dataset(_config("--data", "random"))
    assert rnd.train_batch(1)["weights"].all() and not rnd.has_accuracy


@pytest.mark.parametrize("kind", ["text", "tokens", "mqar", "random"])
def test_some_rows_of_a_batch_are_those_rows_of_the_whole_batch(tmp_path, rng, kind):
    """What a process of several loads (`make_dataset(config, rows)`): its rows of every
    training and validation batch, as one process loading the whole batches has them."""
    argv = ["--data", kind, "--batch_size", "8", "--mqar_num_kv_pairs", "3"]
    if kind in ("text", "tokens"):
        path = tmp_path / ("corpus.txt" if kind == "text" else "tokens.npy")
        tokens = rng.integers(97, 123, 5000)
        if kind == "text":
            path.write_bytes(tokens.astype(np.uint8).tobytes())
        else:
            np.save(path, tokens.astype(np.int32))
        argv += ["--data_path", str(path)]
    rows = np.sort(rng.choice(8, 3, replace=False))
    ds, ds_rows = D.make_dataset(_config(*argv)), D.make_dataset(_config(*argv), rows)
    step = int(rng.integers(1, 1000))
    pairs = [(ds.train_batch(step), ds_rows.train_batch(step)),
             *zip(ds.val_batches, ds_rows.val_batches, strict=True)]
    for whole, part in pairs:
        assert sorted(part) == sorted(whole)
        for key in whole:
            np.testing.assert_array_equal(part[key], whole[key][rows])
    for bad in ([3, 1], [2, 2], [8], []):
        with pytest.raises(ValueError, match=r"rows must be sorted distinct indices below "
                                             r"batch_size=8, got \["):
            D.make_dataset(_config(*argv), np.array(bad, np.int64))


class _ReadsRecorded:
    """A token array that records the start of every slice read from it."""

    def __init__(self, tokens):
        self.tokens, self.starts = tokens, []

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, window: slice):
        self.starts.append(window.start)
        return self.tokens[window]


def test_rows_of_a_window_batch_read_only_their_windows(rng):
    arr = _ReadsRecorded(rng.integers(0, 256, 5000))
    seed = int(rng.integers(2**31))
    D.window_batch(arr, np.random.default_rng(seed), 8, 16)
    every_start, arr.starts = arr.starts, []
    rows = np.array([1, 6])
    part = D.window_batch(arr, np.random.default_rng(seed), 8, 16, rows=rows)
    assert arr.starts == [every_start[1], every_start[6]]
    assert part["inputs"].shape == part["weights"].shape == (2, 16)


def test_prefetcher_yields_steps_in_order_and_reraises():
    ds = D.make_dataset(_config("--data", "random"))
    pf = D.Prefetcher(ds, 3, 6, lambda b: b)
    got = [next(pf) for _ in range(4)]
    pf.close()
    assert [s for s, _ in got] == [3, 4, 5, 6]
    np.testing.assert_array_equal(got[0][1]["inputs"], ds.train_batch(3)["inputs"])

    def boom(b):
        raise RuntimeError("device_put failed")

    pf = D.Prefetcher(ds, 1, 2, boom)
    with pytest.raises(RuntimeError, match="device_put failed"):
        next(pf)
    pf.close()
