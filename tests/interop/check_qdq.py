"""Checks a QDQ ONNX file written by ./export --qdq against the engine's fake-quantized logits (run by
tests/test_qdq_export.cpp).

    /usr/bin/python3 tests/interop/check_qdq.py MODEL.onnx IO.safetensors MEDIAN_TOL AGREE TOP1_TOL QLINEAR_MIN

IO holds `input` [N, 3, H, W], `labels` [N] and `logits` [N, classes], the engine's. Runs onnx.checker
(full check), checks the QDQ form (int8 weight codes, int32 biases, per-axis scales where per channel),
runs onnxruntime with all its graph optimizations (which fuse DequantizeLinear -> Conv -> QuantizeLinear
into its int8 QLinearConv kernels; the optimized graph's ops are printed), and fails when it has fewer than
QLINEAR_MIN QLinearConv nodes, when the median over the images of max|ort - ours| / max|ours| exceeds
MEDIAN_TOL, or fewer than a fraction AGREE of the argmaxes agree, or the top-1s differ by more than TOP1_TOL
points.
"""
import collections
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from st_numpy import load


def main(model_path, io_path, median_tol, agree_min, top1_tol, qlinear_min):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    print("checker: ok")
    ops = collections.Counter(n.op_type for n in model.graph.node)
    print("ops:", dict(sorted(ops.items())))
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"], ops
    inits = {t.name: t for t in model.graph.initializer}
    for name, t in inits.items():
        if name.endswith("weight_quant.codes"):
            assert t.data_type == onnx.TensorProto.INT8, name
            scale = inits[name.replace(".codes", ".scale")]
            assert list(scale.dims) in ([], [t.dims[0]]), (name, scale.dims)
        if name.endswith("bias_quant.codes"):
            assert t.data_type == onnx.TensorProto.INT32, name

    io, _ = load(io_path)
    x, labels, ours = io["input"], io["labels"].astype(np.int64), io["logits"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.NamedTemporaryFile(suffix=".onnx") as optimized:
        options.optimized_model_filepath = optimized.name
        sess = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        fused = collections.Counter(n.op_type for n in onnx.load(optimized.name).graph.node)
    print("onnxruntime's optimized graph:", dict(sorted(fused.items())))
    if fused["QLinearConv"] < qlinear_min:
        sys.exit(f"FAIL: onnxruntime runs {fused['QLinearConv']} convs with its int8 kernel (QLinearConv), fewer than {qlinear_min}")
    theirs = np.concatenate([sess.run(["logits"], {"input": x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    rel = np.abs(theirs - ours).max(1) / np.abs(ours).max(1)  # per image
    top1_ours = 100.0 * float((ours.argmax(1) == labels).mean())
    top1_ort = 100.0 * float((theirs.argmax(1) == labels).mean())
    agree = float((theirs.argmax(1) == ours.argmax(1)).mean())
    print(f"images {len(x)}: relative logit difference median {np.median(rel):.3g}, 95th percentile "
          f"{np.percentile(rel, 95):.3g}, max {rel.max():.3g}; top-1 ours {top1_ours:.2f}%, "
          f"onnxruntime {top1_ort:.2f}% (difference {abs(top1_ours - top1_ort):.2f} points); argmax agree {100 * agree:.1f}%")
    if np.median(rel) > median_tol:
        sys.exit(f"FAIL: median relative logit difference above {median_tol}")
    if agree < agree_min:
        sys.exit(f"FAIL: fewer than {100 * agree_min}% of the argmaxes agree")
    if abs(top1_ours - top1_ort) > top1_tol:
        sys.exit(f"FAIL: top-1 difference above {top1_tol} points")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
