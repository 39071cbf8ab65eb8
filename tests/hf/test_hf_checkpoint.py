"""safetensors checkpoints: single file, shards with an index, dtype casts, and every broken-download error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from forgellm.errors import ModelLoadError
from forgellm.hf import iter_checkpoint_tensors, load_checkpoint_index

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"


def make_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(16, 8, generator=generator, dtype=torch.float32),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=generator).to(torch.bfloat16),
        "model.layers.0.mlp.down_proj.qweight": torch.randint(-(2**31), 2**31 - 1, (4, 2), dtype=torch.int32),
        "model.layers.1.input_layernorm.weight": torch.randn(8, generator=generator, dtype=torch.float16),
        "lm_head.weight": torch.randn(16, 8, generator=generator, dtype=torch.float32),
    }


def write_sharded(directory: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """Split `tensors` over two shards (first two in shard 1) and write the index."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    shard_of = {name: SHARD_1 if i < 2 else SHARD_2 for i, name in enumerate(names)}
    for shard in (SHARD_1, SHARD_2):
        save_file({n: t for n, t in tensors.items() if shard_of[n] == shard}, str(directory / shard))
    index = {"metadata": {"total_size": 0}, "weight_map": shard_of}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


@pytest.fixture
def tensors() -> dict[str, torch.Tensor]:
    return make_tensors()


def test_single_file(tmp_path, tensors):
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = dict(iter_checkpoint_tensors(tmp_path))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_sharded_with_index(tmp_path, tensors):
    write_sharded(tmp_path, tensors)
    index = load_checkpoint_index(tmp_path)
    assert [p.name for p in index.shards] == [SHARD_1, SHARD_2]
    assert index.weight_map["lm_head.weight"].name == SHARD_2
    pairs = list(iter_checkpoint_tensors(tmp_path))
    assert sorted(name for name, _ in pairs) == sorted(tensors)
    for name, tensor in pairs:
        assert torch.equal(tensor, tensors[name]), name
    # Shard by shard: everything from shard 1 comes before anything from shard 2.
    assert [name for name, _ in pairs][:2] == list(tensors)[:2]


def test_dtype_cast_only_touches_floating_tensors(tmp_path, tensors):
    write_sharded(tmp_path, tensors)
    loaded = dict(iter_checkpoint_tensors(tmp_path, dtype=torch.bfloat16))
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            assert loaded[name].dtype == torch.bfloat16
            assert torch.equal(loaded[name], tensor.to(torch.bfloat16)), name
        else:
            assert loaded[name].dtype == torch.int32 and torch.equal(loaded[name], tensor)


def test_single_file_wins_over_index(tmp_path, tensors):
    write_sharded(tmp_path, tensors)
    save_file({"only": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    assert [name for name, _ in iter_checkpoint_tensors(tmp_path)] == ["only"]


def test_tensors_stay_memory_mapped_until_iterated(tmp_path, tensors, monkeypatch):
    # Validation reads headers only; tensors are read one at a time as the caller iterates.
    write_sharded(tmp_path, tensors)
    import safetensors

    opened = []
    original = safetensors.safe_open

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr("forgellm.hf.checkpoint.safe_open", spy)
    iterator = iter_checkpoint_tensors(tmp_path)
    first_name, _ = next(iterator)
    assert opened == [SHARD_1] and first_name in tensors


def test_truncated_shard(tmp_path, tensors):
    write_sharded(tmp_path, tensors)
    shard = tmp_path / SHARD_2
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="truncated") as error:
        iter_checkpoint_tensors(tmp_path)  # validated up front, before the first tensor is asked for
    assert SHARD_2 in str(error.value)


def test_corrupt_header_not_json(tmp_path, tensors):
    write_sharded(tmp_path, tensors)
    header = b"{this is not json}"
    (tmp_path / SHARD_1).write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="corrupt") as error:
        list(iter_checkpoint_tensors(tmp_path))
    assert SHARD_1 in str(error.value) and "JSON" in str(error.value)


def test_corrupt_header_longer_than_file(tmp_path, tensors):
    save_file(tensors, str(tmp_path / "model.safetensors"))
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[:8] = (len(data) * 2).to_bytes(8, "little")
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is corrupt"):
        list(iter_checkpoint_tensors(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ModelLoadError, match="too short"):
        list(iter_checkpoint_tensors(tmp_path))


def test_missing_shard(tmp_path, tensors):
    write_sharded(tmp_path, tensors)
    (tmp_path / SHARD_2).unlink()
    with pytest.raises(ModelLoadError, match="missing") as error:
        list(iter_checkpoint_tensors(tmp_path))
    assert SHARD_2 in str(error.value)


def test_index_names_tensor_absent_from_its_shard(tmp_path, tensors):
    write_sharded(tmp_path, tensors)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.norm.weight"] = SHARD_1
    index_path.write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as error:
        list(iter_checkpoint_tensors(tmp_path))
    assert "model.norm.weight" in str(error.value) and SHARD_1 in str(error.value)


def test_index_errors(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="index.json is not valid JSON"):
        list(iter_checkpoint_tensors(tmp_path))
    escape = {"weight_map": {"w": "../elsewhere.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(escape))
    with pytest.raises(ModelLoadError, match="invalid shard name"):
        list(iter_checkpoint_tensors(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ModelLoadError, match="weight_map"):
        list(iter_checkpoint_tensors(tmp_path))


def test_pickle_only_directory_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="safetensors") as error:
        list(iter_checkpoint_tensors(tmp_path))
    assert "pytorch_model" in str(error.value) and "convert" in str(error.value)


def test_no_weights_at_all(tmp_path):
    with pytest.raises(ModelLoadError, match="no weights") as error:
        list(iter_checkpoint_tensors(tmp_path))
    assert str(tmp_path) in str(error.value)
    save_file({"w": torch.ones(1)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    with pytest.raises(ModelLoadError, match="model-00001-of-00001.safetensors"):
        list(iter_checkpoint_tensors(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        list(iter_checkpoint_tensors(tmp_path / "nope"))
