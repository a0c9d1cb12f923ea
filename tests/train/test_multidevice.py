"""8 fake CPU devices (tests/conftest.py) on a data x fsdp mesh train like one device."""

import jax
import numpy as np
import pytest

from jaxla.testing import assert_close
from train import loop
from train.checkpoint import Checkpointer
from train.sharding import batch_sharding, make_mesh, process_rows, put_from_host, put_rows

from .faults import Killed, kill_after
from .helpers import corpus, tiny_config


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (tests/conftest.py fakes them)")
def test_data_x_fsdp_mesh_matches_one_device(tmp_path, rng):
    data = corpus(tmp_path, rng)
    common = ("--steps", "5", "--eval_every", "5", "--no-checkpoint", "--no-plot")
    one = loop.train(tiny_config(tmp_path / "one", data, *common))
    eight = loop.train(tiny_config(tmp_path / "eight", data, *common, "--num_devices", "8",
                                   "--mesh_data", "2", "--mesh_fsdp", "4"))
    assert eight["summary"]["num_devices"] == 8
    # Parameters and optimizer moments are sharded over fsdp, the batch over all 8 devices.
    state = eight["state"]
    kernel = state["params"]["blocks"][0]["mlp"]["up_proj"]["kernel"][...]
    assert "fsdp" in tuple(kernel.sharding.spec)
    assert len({s.device for s in kernel.addressable_shards}) == 8
    assert kernel.addressable_shards[0].data.shape[1] == kernel.shape[1] // 4
    steps = sorted(one["losses"])
    assert steps == sorted(eight["losses"]) == [1, 2, 3, 4, 5]
    err = assert_close(np.array([eight["losses"][s] for s in steps], np.float32),
                       np.array([one["losses"][s] for s in steps], np.float32), name="losses")
    print(f"8-device vs 1-device losses: relative error {err:.2e}")
    assert_close(np.float32(eight["evals"][-1]["val_loss"]),
                 np.float32(one["evals"][-1]["val_loss"]), name="val loss")


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (tests/conftest.py fakes them)")
def test_checkpoint_on_eight_devices_resumes_on_one(tmp_path, rng):
    data = corpus(tmp_path, rng)
    common = ("--steps", "6", "--save_every", "3", "--eval_every", "6", "--no-plot")
    full = loop.train(tiny_config(tmp_path / "full", data, *common))
    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        loop.train(tiny_config(cut, data, *common, "--num_devices", "8", "--mesh_data", "2",
                               "--mesh_fsdp", "4"), on_step=kill_after(3))
    assert Checkpointer(cut).read_meta(3)["config"]["num_devices"] == 8
    # The checkpoint of the fsdp=4 run is restored onto a 1x1 mesh.
    second = loop.train(loop.parse_args(["--resume", "--run_dir", str(cut), "--progress", "off",
                                         "--num_devices", "1", "--mesh_data", "1",
                                         "--mesh_fsdp", "1"], backend="cpu"))
    assert second["summary"]["num_devices"] == 1
    assert sorted(second["losses"]) == [4, 5, 6]
    steps = list(range(4, 7))
    got = np.array([second["losses"][s] for s in steps], np.float32)
    assert_close(got, np.array([full["losses"][s] for s in steps], np.float32), name="losses")
    assert_close(np.float32(second["evals"][-1]["val_loss"]),
                 np.float32(full["evals"][-1]["val_loss"]), name="val loss")


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (tests/conftest.py fakes them)")
def test_rows_of_one_process_are_the_whole_batch_on_its_devices(rng):
    """One process holds every device, so it loads every row; `put_rows` places row i of the
    batch on the device of row i, as `jax.device_put` would (the two-process case:
    tests/train/test_multiprocess.py)."""
    mesh = make_mesh(fsdp=4)
    sharding = batch_sharding(mesh)
    rows = process_rows(sharding, 16)
    np.testing.assert_array_equal(rows, np.arange(16))
    batch = {"inputs": rng.integers(0, 256, (16, 5)).astype(np.int32),
             "weights": rng.random((16, 5)).astype(np.float32)}
    placed = put_rows(batch, rows, sharding, 16)
    for name, x in batch.items():
        want = jax.device_put(x, sharding)
        assert placed[name].sharding == want.sharding
        for got_shard, want_shard in zip(placed[name].addressable_shards,
                                         want.addressable_shards, strict=True):
            assert got_shard.device == want_shard.device
            np.testing.assert_array_equal(np.asarray(got_shard.data), np.asarray(want_shard.data))
    with pytest.raises(ValueError, match="inputs: 15 rows for the 16 rows of this process"):
        put_rows({"inputs": batch["inputs"][:15]}, rows, sharding, 16)
    # Rows that leave a device of this process without its rows are refused, not padded.
    with pytest.raises(ValueError, match="inputs: a device of this process holds row 0, which "
                                         "is not in rows"):
        put_rows({"inputs": batch["inputs"][8:]}, np.arange(8, 16), sharding, 16)
    state = {"w": rng.standard_normal((8, 12)).astype(np.float32)}
    fsdp = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "fsdp"))
    put = put_from_host(state, {"w": fsdp})
    assert put["w"].sharding == fsdp
    np.testing.assert_array_equal(np.asarray(put["w"]), state["w"])
