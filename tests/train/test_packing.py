"""Packed documents in training: rows, segment ids, the loss at boundaries, token sidecars.

(The loop tests in test_loop.py and test_multidevice.py train on a folder of documents, so the
smoke run, exact resume and the sharded run all use packed rows.)
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla.testing import assert_close
from train import data as D
from train.config import parse_args
from train.step import build_model, make_eval_step, split_model

from .helpers import tiny_config


def _config(*argv):
    return parse_args(["--preset", "tiny_gla", "--batch_size", "8", "--seq_len", "64",
                       "--eval_batches", "2", "--val_fraction", "0.2", *argv], backend="cpu")


def _documents(rng, n, first_id):
    """n documents of random lengths (1 to 120 tokens, four of 1); document i repeats the one
    id `first_id + i % 26`, unlike its neighbours, so every token tells its document."""
    lengths = rng.integers(1, 120, n)
    lengths[rng.choice(n, 4, replace=False)] = 1
    return [np.full(int(length), first_id + i % 26) for i, length in enumerate(lengths)]


def _text_folder(tmp_path, rng):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, doc in enumerate(_documents(rng, 200, ord("A"))):
        (folder / f"{i:03d}.txt").write_bytes(bytes(doc.astype(np.uint8)))
    return folder


def check_packed_rows(batch, eos, one_id_documents=True):
    """segment_ids change exactly after each separator; the only weight-0 targets are the
    separators' (the next document's first token). With documents of one repeated id
    (`_documents`): every segment is one document, and every counted target is in it."""
    x, y, w, ids = batch["inputs"], batch["targets"], batch["weights"], batch["segment_ids"]
    assert ids.dtype == np.int32 and ids.shape == x.shape
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert np.all(ids[:, 0] == 0)
    np.testing.assert_array_equal(ids[:, 1:] != ids[:, :-1], x[:, :-1] == eos)
    np.testing.assert_array_equal(w == 0, x == eos)
    if not one_id_documents:
        return
    assert (w == 0).any() and (w == 1).any()
    for row_x, row_y, row_w, row_ids in zip(x, y, w, ids, strict=True):
        for s in np.unique(row_ids):
            tokens = row_x[(row_ids == s) & (row_x != eos)]
            assert len(set(tokens.tolist())) <= 1, "a segment mixes documents"
        counted = row_w == 1  # a counted target is the same document's next token or its end
        assert np.all((row_y[counted] == row_x[counted]) | (row_y[counted] == eos))


def test_text_folder_rows_are_packed_documents(tmp_path, rng):
    folder = _text_folder(tmp_path, rng)
    ds = D.make_dataset(_config("--data", "text", "--data_path", str(folder)))
    assert ds.info["documents"] == "one per file"
    for batch in (ds.train_batch(1), ds.train_batch(2), *ds.val_batches):
        check_packed_rows(batch, D.BYTE_EOS)
    again = ds.train_batch(2)
    for key, value in ds.train_batch(2).items():  # still a pure function of (seed, step)
        np.testing.assert_array_equal(value, again[key])


def test_stdlib_rows_are_packed_and_text_files_are_not(tmp_path, rng):
    ds = D.make_dataset(_config())
    assert ds.info["documents"] == "one per file"
    check_packed_rows(ds.train_batch(1), D.BYTE_EOS, one_id_documents=False)
    assert ds.info["train_files"] + ds.info["val_files"] == ds.info["files"]
    one_file = tmp_path / "one.txt"
    one_file.write_bytes(bytes(rng.integers(32, 127, 3000).astype(np.uint8)))
    single = D.make_dataset(_config("--data", "text", "--data_path", str(one_file)))
    assert "segment_ids" not in single.train_batch(1) and single.train_batch(1)["weights"].all()
    for kind in ("random", "mqar"):
        assert "segment_ids" not in D.make_dataset(_config("--data", kind)).train_batch(1)


def _token_file(tmp_path, rng, dtype, eos):
    """60 documents of ids in [20, 46) (`_documents`), each followed by `eos`, as `.bin`."""
    stream = [t for doc in _documents(rng, 60, 20) for t in (doc, [eos])]
    path = tmp_path / "tokens.bin"
    np.concatenate(stream).astype(dtype).tofile(path)
    return path


def test_token_file_sidecar_gives_separator_and_dtype(tmp_path, rng):
    path = _token_file(tmp_path, rng, np.uint32, eos=7)
    sidecar = tmp_path / "tokens.bin.json"
    sidecar.write_text(json.dumps({"eos_id": 7, "dtype": "uint32", "vocab_size": 200}))
    ds = D.make_dataset(_config("--data", "tokens", "--data_path", str(path)))
    assert ds.info["sidecar"] == str(sidecar) and ds.info["documents"] == "end with eos_id 7"
    for batch in (ds.train_batch(3), *ds.val_batches):
        check_packed_rows(batch, 7)
    # Options that agree with it are fine; ones that contradict it are refused.
    D.make_dataset(_config("--data", "tokens", "--data_path", str(path), "--eos_id", "7",
                           "--token_dtype", "uint32"))
    for argv, match in ((["--eos_id", "8"], "--eos_id 8 contradicts eos_id=7"),
                        (["--token_dtype", "uint16"], "--token_dtype uint16 contradicts"),
                        (["--vocab_size", "100"], "vocab_size=200, more than the model's")):
        with pytest.raises(ValueError, match=match):
            D.make_dataset(_config("--data", "tokens", "--data_path", str(path), *argv))
    for bad, match in (("{", "not JSON"), (json.dumps({"eos_id": 7, "dtype": "int8",
                                                       "vocab_size": 200}), "dtype must be"),
                       (json.dumps({"dtype": "uint32", "vocab_size": 200}), "eos_id must be"),
                       (json.dumps({"eos_id": 300, "dtype": "uint32", "vocab_size": 200}),
                        "must be < vocab_size")):
        sidecar.write_text(bad)
        with pytest.raises(ValueError, match=match):
            D.make_dataset(_config("--data", "tokens", "--data_path", str(path)))


def test_token_file_without_sidecar(tmp_path, rng):
    path = _token_file(tmp_path, rng, np.uint16, eos=3)
    argv = ("--data", "tokens", "--data_path", str(path))
    plain = D.make_dataset(_config(*argv))
    assert "segment_ids" not in plain.train_batch(1) and plain.info["documents"] == "no boundaries"
    check_packed_rows(D.make_dataset(_config(*argv, "--eos_id", "3")).train_batch(1), 3)
    with pytest.raises(ValueError, match="eos_id"):
        D.make_dataset(_config(*argv, "--eos_id", "256"))
    with pytest.raises(ValueError, match="applies to --data tokens only"):
        _config("--eos_id", "3")


def test_packed_loss_is_the_sum_over_documents_alone(tmp_path, rng):
    """The eval step on packed rows: its CE sum and weight count equal those of every document
    run alone (each in its own row, from t = 0), with only in-document targets counted."""
    config = tiny_config(tmp_path / "run", _text_folder(tmp_path, rng), "--seq_len", "48",
                         "--val_fraction", "0.2")
    ds = D.make_dataset(config)
    batch = ds.train_batch(1)
    graphdef, params, constants = split_model(build_model(config.model, seed=1))
    eval_step = jax.jit(make_eval_step(graphdef, constants))
    ce, count, _ = eval_step(params, batch)

    x, y, w, ids = (batch[k] for k in ("inputs", "targets", "weights", "segment_ids"))
    rows = {k: [] for k in ("inputs", "targets", "weights")}
    T = x.shape[1]
    for b in range(x.shape[0]):
        for s in np.unique(ids[b]):
            at = np.flatnonzero(ids[b] == s)
            pad = T - len(at)
            filler = rng.integers(1, 256, pad)  # after the document: must not matter
            rows["inputs"].append(np.concatenate([x[b, at], filler]))
            rows["targets"].append(np.concatenate([y[b, at], filler]))
            rows["weights"].append(np.concatenate([w[b, at], np.zeros(pad)]))
    alone = {k: jnp.asarray(np.stack(v), jnp.float32 if k == "weights" else jnp.int32)
             for k, v in rows.items()}
    ce_alone, count_alone, _ = eval_step(params, alone)
    assert float(count) == float(count_alone) == float(w.sum()) < w.size
    assert_close(ce, ce_alone, name="summed cross-entropy")
