"""Checks an ONNX file written by ./export against the engine's logits (run by tests/test_interop.cpp).

    /usr/bin/python3 tests/interop/check_onnx.py MODEL.onnx IO.safetensors TOL

IO holds `input` [N, 3, H, W] and `logits` [N, classes], the engine's. Runs onnx.checker (full check:
with shape inference), checks the interface (opset 13, "input" float32 with a symbolic batch dim,
"logits"), runs onnxruntime on all N images and on the first alone (another batch size), and fails
when max|ort - ours| / max|ours| exceeds TOL. Prints what it measured.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort

from st_numpy import load


def main(model_path, io_path, tol):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    print("checker: ok")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)], model.opset_import
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "logits", (inp.name, out.name)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, dims[2].dim_value, dims[3].dim_value]
    print("ops:", sorted({n.op_type for n in model.graph.node}))

    io, _ = load(io_path)
    x, ours = io["input"], io["logits"]
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    theirs = sess.run(["logits"], {"input": x})[0]
    one = sess.run(["logits"], {"input": x[:1]})[0]
    rel = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    rel1 = float(np.abs(one - ours[:1]).max() / np.abs(ours[:1]).max())
    print(f"images {x.shape}: max relative logit difference {rel:.3g} (batch of 1: {rel1:.3g}); "
          f"argmax agree {int((theirs.argmax(1) == ours.argmax(1)).sum())}/{len(x)}")
    if max(rel, rel1) > tol:
        sys.exit(f"FAIL: relative difference above {tol}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
