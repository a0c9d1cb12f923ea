"""Packed documents in training and evaluation: rows, segment ids, the loss at a boundary,
token files with and without a sidecar.

The rule (train/data.py): every document is followed by the separator; a new segment starts at
each separator, which ends one document (its last token's target) and opens the next (its own
target is that document's first token); every target counts. (The loop tests in test_loop.py
and test_multidevice.py train on a folder of documents, so the smoke run, exact resume and the
sharded run all use packed rows.)
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxla.models import CausalLM, LMConfig
from jaxla.testing import assert_close
from train import data as D
from train.config import ConfigError, parse_args
from train.eval import evaluate
from train.step import build_model, make_eval_step, split_model
from train.tokenize import main as tokenize_main

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


def _text_folder(tmp_path, rng, n=200):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, doc in enumerate(_documents(rng, n, ord("A"))):
        (folder / f"{i:03d}.txt").write_bytes(bytes(doc.astype(np.uint8)))
    return folder


def check_packed_rows(batch, sep, one_id_documents=True):
    """A new segment exactly at each separator (and at the row start), every weight 1. With
    documents of one repeated id (`_documents`): a segment holds one document (after its
    opening separator), and every target is that document's next token or the separator that
    ends it, or for the opening separator the document's first token."""
    x, y, w, ids = batch["inputs"], batch["targets"], batch["weights"], batch["segment_ids"]
    assert ids.dtype == np.int32 and ids.shape == x.shape
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(ids[:, 1:] != ids[:, :-1], x[:, 1:] == sep)
    assert np.all(w == 1)
    if not one_id_documents:
        return
    assert (x == sep).any()
    for row_x, row_y, row_ids in zip(x, y, ids, strict=True):
        for s in np.unique(row_ids):
            at = np.flatnonzero(row_ids == s)
            tokens = row_x[at][row_x[at] != sep]
            assert len(set(tokens.tolist())) <= 1, "a segment mixes documents"
            if len(tokens):  # each target stays in the document (or ends it)
                assert np.all((row_y[at] == tokens[0]) | (row_y[at] == sep))


def test_text_folder_rows_are_packed_documents(tmp_path, rng):
    ds = D.make_dataset(_config("--data", "text", "--data_path", str(_text_folder(tmp_path, rng))))
    assert ds.info["documents"] == "one per file, separated by id 0"
    for batch in (ds.train_batch(1), ds.train_batch(2), *ds.val_batches):
        check_packed_rows(batch, D.BYTE_SEPARATOR)
    again = ds.train_batch(2)
    for key, value in ds.train_batch(2).items():  # still a pure function of (seed, step)
        np.testing.assert_array_equal(value, again[key])


def test_every_byte_source_is_packed_and_synthetic_data_is_not(tmp_path, rng):
    check_packed_rows(D.make_dataset(_config()).train_batch(1), D.BYTE_SEPARATOR,
                      one_id_documents=False)
    one_file = tmp_path / "one.txt"  # one document
    one_file.write_bytes(bytes(rng.integers(32, 127, 3000).astype(np.uint8)))
    single = D.make_dataset(_config("--data", "text", "--data_path", str(one_file)))
    batch = single.val_batches[0]  # validation: the file's tail and its separator
    assert (batch["inputs"] == 0).sum() <= batch["inputs"].shape[0]  # only the one at the end
    np.testing.assert_array_equal(batch["segment_ids"], np.cumsum(batch["inputs"] == 0, axis=1))
    for kind in ("random", "mqar"):
        assert "segment_ids" not in D.make_dataset(_config("--data", kind)).train_batch(1)
    with pytest.raises(ValueError, match="NUL byte at offset 70000"):  # past the text probe
        late_nul = tmp_path / "late_nul.txt"
        late_nul.write_bytes(b"a" * 70_000 + b"\0" + b"b" * 10)
        D.text_corpus(late_nul, 0.1)


def _tokenized(tmp_path, rng):
    """The documents of `_text_folder` through `python -m train.tokenize` (bytes, separator 0)."""
    out = tmp_path / "tokens.bin"
    assert tokenize_main([str(_text_folder(tmp_path, rng)), "--out", str(out)]) == 0
    return out


def test_tokenize_output_trains_on_packed_documents(tmp_path, rng, capsys):
    path = _tokenized(tmp_path, rng)
    capsys.readouterr()
    ds = D.make_dataset(_config("--data", "tokens", "--data_path", str(path)))
    assert ds.info["sidecar"] == f"{path}.json" and ds.info["documents"] == "separated by id 0"
    for batch in (ds.train_batch(3), *ds.val_batches):
        check_packed_rows(batch, 0)
    # Options that agree with the sidecar are fine; ones that contradict it are refused.
    D.make_dataset(_config("--data", "tokens", "--data_path", str(path), "--separator_id", "0",
                           "--token_dtype", "uint16"))
    for argv, match in ((["--separator_id", "3"], "--separator_id: .* says separator_id 0, got 3"),
                        (["--token_dtype", "uint32"], "--token_dtype: .* says dtype 'uint16'"),
                        (["--vocab_size", "100"], "--vocab_size: .* vocabulary of 256")):
        with pytest.raises(D.DataError, match=match):
            D.make_dataset(_config("--data", "tokens", "--data_path", str(path), *argv))


def test_bad_sidecars_are_one_line_naming_the_field(tmp_path, rng):
    path = tmp_path / "tokens.bin"
    rng.integers(0, 200, 3000).astype(np.uint16).tofile(path)
    sidecar = tmp_path / "tokens.bin.json"
    for text, match in (("{", "not JSON"), ("[1]", "must hold a JSON object"),
                        (json.dumps({"dtype": "int8"}), "dtype must be one of uint16"),
                        (json.dumps({"dtype": "uint16", "separator_id": -1}),
                         "separator_id must be an integer >= 0, got -1"),
                        (json.dumps({"dtype": "uint16", "separator_id": 1.5}),
                         "separator_id must be an integer >= 0, got 1.5")):
        sidecar.write_text(text)
        with pytest.raises(D.DataError, match=match) as exc:
            D.make_dataset(_config("--data", "tokens", "--data_path", str(path)))
        assert str(exc.value).startswith("--data_path: ") and "\n" not in str(exc.value)


def test_token_file_without_sidecar(tmp_path, rng):
    stream = [t for doc in _documents(rng, 60, 20) for t in (*doc, 3)]
    path = tmp_path / "tokens.bin"
    np.asarray(stream, np.uint16).tofile(path)
    argv = ("--data", "tokens", "--data_path", str(path))
    plain = D.make_dataset(_config(*argv))
    assert "segment_ids" not in plain.train_batch(1)
    assert plain.info["documents"] == "no separator: no boundaries"
    check_packed_rows(D.make_dataset(_config(*argv, "--separator_id", "3")).train_batch(1), 3)
    with pytest.raises(D.DataError, match="--separator_id: must be < the model's vocab_size"):
        D.make_dataset(_config(*argv, "--separator_id", "256"))
    with pytest.raises(ConfigError, match="--separator_id: only --data tokens takes it"):
        _config("--separator_id", "3")


def test_packed_loss_is_the_sum_over_documents_alone(tmp_path, rng):
    """The eval step on packed rows: its CE sum and target count equal those of every segment
    run alone (each in its own row from t = 0, padded after it with weight 0)."""
    config = tiny_config(tmp_path / "run", _text_folder(tmp_path, rng), "--seq_len", "48",
                         "--val_fraction", "0.2",
                         "--initializer_range", "0.3")  # outputs that depend on the context
    batch = D.make_dataset(config).train_batch(1)
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
    assert float(count) == float(count_alone) == w.size
    assert_close(ce, ce_alone, name="summed cross-entropy")
    unpacked = {k: v for k, v in batch.items() if k != "segment_ids"}  # the ids do matter:
    assert abs(float(eval_step(params, unpacked)[0]) / float(ce) - 1) > 1e-4


def test_eval_scores_each_document_alone(rng):
    """`train.eval.evaluate` on a stream of documents equals the sum of every document scored
    alone as `separator, tokens, separator` (one window holds the whole stream)."""
    sep, V, L = 5, 32, 64
    model = CausalLM(LMConfig.tiny("gla", vocab_size=V, use_short_conv=True,
                                   initializer_range=0.3),  # outputs that depend on the context
                     rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    docs = [rng.integers(6, V, int(n)) for n in (*rng.integers(2, 12, 5), 1)]
    rng.shuffle(docs)
    stream = np.concatenate([[sep], *(np.append(d, sep) for d in docs)])
    total, n = evaluate(model, stream, L, 1, sep)

    alone = np.zeros((len(docs), L + 1), np.int32)  # row i: separator, document i, separator
    for i, d in enumerate(docs):
        alone[i, :len(d) + 2] = [sep, *d, sep]
    weights = np.arange(L)[None, :] < np.array([len(d) + 1 for d in docs])[:, None]
    logits = nnx.jit(lambda model, x: model(x))(model, jnp.asarray(alone[:, :-1]))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(alone[:, 1:]))
    assert n == int(weights.sum()) == len(stream) - 1
    assert_close(np.float32(total), jnp.sum(ce * weights), name="summed cross-entropy")
    assert abs(evaluate(model, stream, L, 1)[0] / total - 1) > 1e-4  # the ids do matter
