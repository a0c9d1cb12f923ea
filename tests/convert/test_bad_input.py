"""Bad checkpoints: one clear error each (API ValueError, CLI exit status 2)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxla.convert import export_checkpoint, import_checkpoint
from jaxla.convert.__main__ import main as convert_main
from jaxla.models import CausalLM, LMConfig
from jaxla.models.safetensors_io import read_folder, write_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"


def _copy(tmp_path, name="mamba"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _edit_tensors(folder, fn):
    tensors = read_folder(folder)
    fn(tensors)
    write_file(tensors, folder / "model.safetensors")


def test_missing_tensor_is_named(tmp_path, rng):
    folder = _copy(tmp_path)
    layer = int(rng.integers(2))
    name = f"backbone.layers.{layer}.mixer.x_proj.weight"
    _edit_tensors(folder, lambda t: t.pop(name))
    with pytest.raises(ValueError, match=rf"missing 1 tensor\(s\): {name}"):
        import_checkpoint(folder)


def test_extra_tensor_is_named(tmp_path, rng):
    folder = _copy(tmp_path, "minimax")
    _edit_tensors(folder, lambda t: t.update(
        {"model.layers.0.block_sparse_moe.experts.9.w1.weight":
         rng.standard_normal((48, 32)).astype(np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected 1 tensor\(s\): model\.layers\.0\."
                                         r"block_sparse_moe\.experts\.9\.w1\.weight"):
        import_checkpoint(folder)


def test_wrong_shape_is_named(tmp_path):
    folder = _copy(tmp_path)
    _edit_tensors(folder, lambda t: t.update(
        {"backbone.norm_f.weight": np.ones(31, np.float32)}))
    with pytest.raises(ValueError, match=r"norm\.weight has shape \(31,\)"):
        import_checkpoint(folder)


def test_other_architecture_is_named(tmp_path):
    folder = _copy(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model_type='llama', architectures=\['LlamaForCausal"):
        import_checkpoint(folder)


def test_unsupported_option_is_named(tmp_path):
    folder = _copy(tmp_path, "minimax")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["sliding_window"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="sliding_window=64"):
        import_checkpoint(folder)


def test_export_refuses_what_the_format_cannot_hold(tmp_path):
    from flax import nnx

    model = CausalLM(LMConfig.tiny("gla", gate_low_rank_dim=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="gate_low_rank_dim=8"):
        export_checkpoint(model, tmp_path, "gla")
    with pytest.raises(ValueError, match="layer_pattern"):
        export_checkpoint(model, tmp_path, "mamba")


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(SystemExit) as exc:
        convert_main(["import", str(folder), str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has no model.safetensors" in err and str(folder) in err
