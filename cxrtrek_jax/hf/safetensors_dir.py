"""The tensors of a Hugging Face checkpoint directory: one model.safetensors, or shards named
model-0000i-of-0000n.safetensors listed by model.safetensors.index.json ({"metadata": {"total_size":
bytes}, "weight_map": {tensor name: shard file}}), as `save_pretrained` writes them. Pickle
checkpoints (`.bin`, `.pt`, ...) are refused: nothing here unpickles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from cxrtrek_jax.hf.errors import HFCheckpointError

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "SAFETENSORS_FILE",
    "SAFETENSORS_INDEX_FILE",
    "read_safetensors_dir",
    "write_safetensors_dir",
]

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _refuse_pickles(directory: str, names: Iterable[str]) -> None:
    pickles = sorted(n for n in names if n.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise HFCheckpointError(
            f"{directory} holds only pickle checkpoints ({', '.join(pickles)}), which are never loaded here "
            "(unpickling can run arbitrary code). Convert them to safetensors first, e.g. in PyTorch: "
            "<its *ForConditionalGeneration class>.from_pretrained(dir).save_pretrained(out_dir, "
            "safe_serialization=True)")


def write_safetensors_dir(tensors: Mapping[str, np.ndarray], directory: str, *,
                          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write `tensors` as model.safetensors, or as shards plus model.safetensors.index.json
    when they exceed `max_shard_bytes`. Returns the file names written."""
    os.makedirs(directory, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for name, value in tensors.items():
        if shards[-1] and shard_bytes + value.nbytes > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = value
        shard_bytes += value.nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, SAFETENSORS_FILE), metadata=metadata)
        return [SAFETENSORS_FILE]
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(files, shards):
        save_file(shard, os.path.join(directory, file), metadata=metadata)
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(directory, SAFETENSORS_INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
    return [*files, SAFETENSORS_INDEX_FILE]


def _read_file(path: str) -> dict[str, np.ndarray]:
    with safe_open(path, framework="numpy") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _read_shards(directory: str, index_path: str) -> dict[str, np.ndarray]:
    with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
        raise HFCheckpointError(f"{index_path} has no 'weight_map' object")
    tensors: dict[str, np.ndarray] = {}
    for file in sorted(set(weight_map.values())):
        path = os.path.join(directory, file)
        if not os.path.exists(path):
            raise HFCheckpointError(f"{index_path} names shard {file}, which does not exist")
        shard = _read_file(path)
        listed = {name for name, f in weight_map.items() if f == file}
        if set(shard) != listed:
            raise HFCheckpointError(
                f"shard {file} does not match {SAFETENSORS_INDEX_FILE}: not in shard "
                f"{sorted(listed - set(shard))}, not in index {sorted(set(shard) - listed)}")
        tensors.update(shard)
    return tensors


def read_safetensors_dir(directory: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory (single file or sharded with an index).

    Refuses pickle checkpoints with a message saying to convert them.
    """
    if os.path.isfile(directory):
        if directory.endswith(_PICKLE_SUFFIXES):
            _refuse_pickles(os.path.dirname(directory) or ".", [os.path.basename(directory)])
        raise HFCheckpointError(f"{directory} is a file; pass the checkpoint directory")
    if not os.path.isdir(directory):
        raise HFCheckpointError(f"checkpoint directory {directory} does not exist")
    index_path = os.path.join(directory, SAFETENSORS_INDEX_FILE)
    if os.path.exists(index_path):
        return _read_shards(directory, index_path)
    single = os.path.join(directory, SAFETENSORS_FILE)
    if os.path.exists(single):
        return _read_file(single)
    _refuse_pickles(directory, os.listdir(directory))
    raise HFCheckpointError(f"{directory} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX_FILE}")
