"""A small safetensors reader and writer over numpy (no torch; bfloat16 through ml_dtypes).

Format: an 8-byte little-endian header length n, n bytes of JSON
`{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`,
then the tensors' bytes (offsets relative to the end of the header), little-endian, C order.
A Hugging Face folder holds `model.safetensors`, or shards listed by
`model.safetensors.index.json` (`{"weight_map": {name: shard file}}`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {v: k for k, v in DTYPES.items()}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_file(path) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file, as numpy arrays (copies, host memory)."""
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{str(path)!r} is not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{str(path)!r} is not a safetensors file (bad header)") from None
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{str(path)!r}: tensor {name} has dtype {info['dtype']}, which this "
                             f"reader does not know")
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]].newbyteorder("<"))
        out[name] = arr.reshape(info["shape"]).astype(DTYPES[info["dtype"]], copy=True)
    return out


def write_file(tensors: dict[str, np.ndarray], path, metadata: dict[str, str] | None = None):
    """Write `tensors` (numpy arrays of the dtypes in DTYPES) as one .safetensors file."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in NAMES:
            raise ValueError(f"tensor {name} has dtype {arr.dtype}, which safetensors cannot hold")
        buf = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(buf)]}
        chunks.append(buf)
        offset += len(buf)
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for buf in chunks:
            f.write(buf)


def read_folder(folder) -> dict[str, np.ndarray]:
    """The tensors of a Hugging Face folder: `model.safetensors` or the shards of its index."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        out = {}
        for shard in sorted(set(weight_map.values())):
            out.update(read_file(folder / shard))
        return out
    if (folder / SINGLE_FILE).is_file():
        return read_file(folder / SINGLE_FILE)
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(others) == 1:
        return read_file(folder / others[0])
    torch_files = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.pt"))
    hint = (f"; it has {', '.join(torch_files)}: re-save it with save_pretrained("
            f"safe_serialization=True)" if torch_files else "")
    raise FileNotFoundError(f"{str(folder)!r} has no {SINGLE_FILE} or {INDEX_FILE}{hint}")
