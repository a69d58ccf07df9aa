"""Minimal pure-Python (struct + json + torch) safetensors reader/writer, for the reference scripts.

The `safetensors` package is not installed here; this writes the same layout as engine/safetensors.cpp:
u64 little-endian header length N (N % 8 == 0, padded with spaces), N bytes of JSON
{"__metadata__": {...}, "name": {"dtype", "shape", "data_offsets": [begin, end]}, ...} with tensors sorted
by name, then the raw little-endian data buffer.

    from safetensors_io import save_file, load_file, load_metadata
    save_file({"w": torch.ones(2, 3)}, "x.safetensors", metadata={"k": "v"})
    tensors = load_file("x.safetensors")

    python3 tests/reference/safetensors_io.py          # regenerates tests/reference/st_python.safetensors
    python3 tests/reference/safetensors_io.py FILE     # prints FILE's metadata and tensors
"""
import json
import os
import struct
import sys

import torch

DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
}
NAMES = {v: k for k, v in DTYPES.items()}
assert sys.byteorder == "little"


def _to_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def save_file(tensors, path, metadata=None):
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name]
        data = _to_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
    os.replace(tmp, path)


def _read(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"file {path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError(f"file {path}: header length {n} larger than the file")
    return json.loads(raw[8:8 + n].decode("utf-8")), raw[8 + n:]


def load_metadata(path):
    return _read(path)[0].get("__metadata__", {})


def load_file(path):
    header, buf = _read(path)
    out, end = {}, 0
    entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"])
    for name, e in entries:
        b, e_ = e["data_offsets"]
        dtype, shape = NAMES[e["dtype"]], e["shape"]
        if b != end:
            raise ValueError(f"file {path}: tensor '{name}' starts at {b}, expected {end}")
        end = e_
        count = 1
        for d in shape:
            count *= d
        if e_ - b != count * torch.empty((), dtype=dtype).element_size():
            raise ValueError(f"file {path}: tensor '{name}' byte count does not match shape {shape}")
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(bytearray(buf[b:e_]), dtype=dtype).reshape(shape)
    if end != len(buf):
        raise ValueError(f"file {path}: data buffer has {len(buf)} bytes, tensors cover {end}")
    return out


def _make_reference():
    """tests/reference/st_python.safetensors, read by tests/test_safetensors.cpp."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "st_python.safetensors")
    tensors = {
        "weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4 - 0.5,  # [[-0.5,-0.25,0],[0.25,0.5,0.75]]
        "bias": torch.tensor([1.5, -2.0, 3.25], dtype=torch.float32),
        "labels": torch.tensor([0, -1, 7, 2**40], dtype=torch.int64),
        "step": torch.tensor(123456789012, dtype=torch.int64),  # shape []
    }
    save_file(tensors, path, metadata={"format": "pt", "producer": "safetensors_io.py"})
    print("wrote", path)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print("metadata:", load_metadata(sys.argv[1]))
        for k, v in load_file(sys.argv[1]).items():
            print(f"{k}: {v.dtype} {list(v.shape)}\n{v}")
    else:
        _make_reference()
