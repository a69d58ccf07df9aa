"""The deployment peers of `make bench`: onnxruntime (CPU execution provider) and OpenVINO (CPU) running the
ONNX file model_bench wrote from our own deploy model (interop/onnx.h, as ./export writes it: FP32, or QDQ
for the int8 cases), so both run exactly our graph and weights. Used by bench/torch_peer.py --onnx.

Each function returns a callable that runs one batch of x (float32 NCHW) and waits for the result.
Both get the bench's thread count. onnxruntime: one inter-op thread, every graph optimization, and its
intra-op threads' spinning off under OMP_WAIT_POLICY=passive, the policy the other sides run under
(bench/run.sh). OpenVINO: one stream, the latency hint, f32 precision (its default on a CPU with AVX-512
bf16 is bf16), the batch made static.
"""
import os


def ort_runner(path, x, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get('OMP_WAIT_POLICY', '').lower() == 'passive':
        so.add_session_config_entry('session.intra_op.allow_spinning', '0')
    sess = ort.InferenceSession(path, so, providers=['CPUExecutionProvider'])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def ov_runner(path, x, threads):
    import openvino as ov
    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.input(0): ov.PartialShape(list(x.shape))})
    compiled = core.compile_model(model, 'CPU', {'INFERENCE_NUM_THREADS': threads, 'NUM_STREAMS': 1,
                                                 'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': 'f32'})
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})


def versions():
    """'onnxruntime X openvino Y', 'absent' for one that does not import."""
    out = []
    try:
        import onnxruntime
        out.append(f'onnxruntime {onnxruntime.__version__}')
    except Exception:
        out.append('onnxruntime absent')
    try:
        import openvino
        out.append(f"openvino {openvino.get_version().split('-')[0]}")
    except Exception:
        out.append('openvino absent')
    return ' '.join(out)
