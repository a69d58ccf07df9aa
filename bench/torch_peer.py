#!/usr/bin/env python3
"""The peers' side of `make bench`: PyTorch (eager and torch.compile), onnxruntime and OpenVINO, timed
on one case; all of them, or one (--peer NAME).

    build/peers-venv/bin/python bench/torch_peer.py --case infer-cifar-deploy --onnx M.onnx [--peer ort --threads 2 --warmup 2 --reps 5]
    -> peers infer-cifar-deploy torch=X torch_cl=X compile=X compile_cl=X ort=X ov=X unit=img/s
    bench/torch_peer.py --versions
    -> torch 2.x onnxruntime 1.x openvino 2025.x

The peers (a name's value: its rate; "-" where it does not apply, "absent" where its package does not
import, "failed:REASON" where it raised):
  torch, torch_cl       PyTorch eager, in its default NCHW layout and with model and input in
                        channels_last (.to(memory_format=torch.channels_last))
  compile, compile_cl   the same under torch.compile (default mode; the FP32 cases), compiled in the
                        untimed calls before the warm-up
  ort, ov               onnxruntime and OpenVINO on --onnx, the ONNX file of our own model that model_bench
                        writes (FP32 deploy form; QDQ for the int8 cases): bench/onnx_peer.py

Cases (PyTorch's models from tests/reference/repvgg_torch.py, PyTorch default init under
torch.manual_seed(0); synthetic data: randn inputs, random labels; the timed unit is one call, the median
over --reps after --warmup untimed calls):
  train-cifar         one SGD step (zero_grad, forward, cross-entropy, backward, step; lr 0.1,
                      momentum 0.9, wd 1e-4) of repvgg-cifar in training form, batch 128, 32x32
  train-cifar-oabn    the same with OABN k = 3 on the identity BNs (bench/train_twin.py)
  infer-cifar-deploy  forward of the deployed repvgg-cifar (switch_to_deploy), eval, no_grad, batch 128
  train-a0            one SGD step of repvgg-a0 in training form, batch 32, 224x224
  infer-a0-deploy     forward of the deployed repvgg-a0, eval, no_grad, batch 32, 224x224
  infer-a0-deploy-b1  the same at batch 1 (latency)
  infer-resnet18-deploy  forward of the deployed torchvision ResNet-18 (resnet_torch twin), batch 32, 224x224
  train-cifar-<qat>   one SGD step of repvgg-cifar after tests/reference/repq_torch.py set_qat(model,
                      qat, 4 bits), qat one of bnest (FP, merged, estimated BN), merged (deployed blocks,
                      QAT), repq-bn, repq-bnest, cluster (ClusterQAT: running-statistics fold, a 4-bit
                      k-means codebook per layer, repq_torch.ClusterQuantizer); the steps (and codebooks)
                      initialized by an untimed forward first and kept out of the weight decay
                      (trainer/step.cpp make_optimizer)
  train-cifar-acb-repq-bn  the repq-bn step of acb-cifar (ACNet's blocks: repq_torch.QACBlock, each BN
                      folded with the batch statistics of its own 3x3, 1x3 or 3x1 conv, run with its own
                      padding)
  infer-*-int8        PyTorch's own int8 path on the deployed model: torch.ao.quantization eager-mode
                      static quantization with the 'onednn' engine (Debian's torch 1.13 has onednn and
                      qnnpack, no fbgemm), each rbr_reparam conv fused with its ReLU (ConvReLU2d),
                      per-channel symmetric s8 weights, per-tensor u8 activations (min-max observers,
                      calibrated on 2 batches of the synthetic input); stage0 and the FC stay FP32 as in
                      ./ptq's default (a QuantStub after stage0, a DeQuantStub before the FC). Batch 128
                      (cifar), 32 (a0) and 1 (a0-int8-b1, latency); the _cl numbers are the same model
                      with a channels_last input (quantized convs run NHWC inside)
  infer-*-int8-a7     the same with 7-bit activations (the observers' reduce_range, codes 0..127), as ours
  ceiling             one 3x3 conv forward (pad 1, no bias), input [32,256,56,56] -> 256 channels,
                      no_grad: the float32 conv throughput PyTorch reaches on this machine
  gpu-<case>          each of the above on the GPU (model, data and optimizer on cuda, each call ends
                      with torch.cuda.synchronize()); exits 2 when PyTorch has no usable CUDA

--serve (used by `make bench`, which alternates ours and the peers one call at a time, each peer in its own
process, --peer NAME: one that crashes takes only itself down, and torch.compile's two models do not
share dynamo's caches, where a recompile would make its shapes dynamic): after the warm-up,
print "ready" and the peers, each a name (timed) or NAME=VALUE (not timed: "-", "absent", "failed:..."),
then for every line read from stdin time one call of each timed peer, in that order, and print their
seconds (-1 for a call that raised; its error goes to stderr).

Exits 2 with a message on stderr when PyTorch cannot be imported (model_bench then prints NAME=absent).
The peers are peers here, never dependencies of the engine.
"""
import argparse
import os
import statistics
import sys
import time

CASES = {
    # name: (arch, batch, resolution, mode, oabn_k)
    'train-cifar': ('repvgg-cifar', 128, 32, 'train', 0.0),
    'train-cifar-oabn': ('repvgg-cifar', 128, 32, 'train', 3.0),
    'infer-cifar-deploy': ('repvgg-cifar', 128, 32, 'infer-deploy', 0.0),
    'train-a0': ('repvgg-a0', 32, 224, 'train', 0.0),
    'infer-a0-deploy': ('repvgg-a0', 32, 224, 'infer-deploy', 0.0),
    'infer-a0-deploy-b1': ('repvgg-a0', 1, 224, 'infer-deploy', 0.0),
    'infer-resnet18-deploy': ('resnet18', 32, 224, 'infer-deploy', 0.0),
    'train-cifar-bnest': ('repvgg-cifar', 128, 32, 'train-bnest', 0.0),
    'train-cifar-merged-qat': ('repvgg-cifar', 128, 32, 'train-merged', 0.0),
    'train-cifar-repq-bn': ('repvgg-cifar', 128, 32, 'train-repq-bn', 0.0),
    'train-cifar-acb-repq-bn': ('acb-cifar', 128, 32, 'train-repq-bn', 0.0),
    'train-cifar-repq-bnest': ('repvgg-cifar', 128, 32, 'train-repq-bnest', 0.0),
    'train-cifar-cluster': ('repvgg-cifar', 128, 32, 'train-cluster', 0.0),
    'infer-cifar-int8': ('repvgg-cifar', 128, 32, 'infer-int8', 0.0),
    'infer-a0-int8': ('repvgg-a0', 32, 224, 'infer-int8', 0.0),
    'infer-a0-int8-b1': ('repvgg-a0', 1, 224, 'infer-int8', 0.0),
    'infer-cifar-int8-a7': ('repvgg-cifar', 128, 32, 'infer-int8-a7', 0.0),
    'infer-a0-int8-a7': ('repvgg-a0', 32, 224, 'infer-int8-a7', 0.0),
}
CEILING = dict(n=32, c=256, hw=56, k=256)   # 2 * 32*56*56 * 256 * 256*9 = 118.4 GFLOP per forward


def time_reps(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def failed(e):
    """A peer's error as one token of the bench line: absent, or failed:Type:message (60 chars at most)."""
    if isinstance(e, ImportError):
        return 'absent'
    return ('failed:' + '_'.join(f'{type(e).__name__}: {e}'.split()))[:60]


def warm(peers, warmup):
    """Calls each peer warmup times; one that raises becomes its failed:REASON."""
    for name, fn in peers.items():
        if callable(fn):
            try:
                for _ in range(warmup):
                    fn()
            except Exception as e:
                peers[name] = failed(e)


def serve(peers, warmup):
    warm(peers, warmup)
    timed = [(n, fn) for n, fn in peers.items() if callable(fn)]
    print(' '.join(['ready'] + [n if callable(fn) else f'{n}={fn}' for n, fn in peers.items()]), flush=True)
    for _ in sys.stdin:
        times = []
        for name, fn in timed:
            t0 = time.perf_counter()
            try:
                fn()
                times.append(f'{time.perf_counter() - t0:.6f}')
            except Exception as e:
                print(f'torch_peer: {name}: {type(e).__name__}: {e}', file=sys.stderr)
                times.append('-1')
        print(' '.join(times), flush=True)


def quantize_int8(torch, deployed, x, reduce_range=False):
    """The deployed model in torch.ao eager static quantization (see the docstring), calibrated on x."""
    import torch.nn as nn
    import warnings
    from torch.ao import quantization as tq
    torch.backends.quantized.engine = 'onednn'
    warnings.simplefilter('ignore')   # torch 2 deprecates this API at every call; it is still what it has

    class Int8(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.stage0, self.quant, self.dequant, self.linear = m.stage0, tq.QuantStub(), tq.DeQuantStub(), m.linear
            self.blocks = nn.Sequential(*[b for s in (m.stage1, m.stage2, m.stage3, m.stage4) for b in s])
            self.gap = m.gap

        def forward(self, x):
            out = self.quant(self.stage0(x))
            out = self.gap(self.blocks(out))
            return self.linear(self.dequant(out).flatten(1))

    q = Int8(deployed).eval()
    for b in q.blocks:
        tq.fuse_modules(b, [['rbr_reparam', 'nonlinearity']], inplace=True)
    q.qconfig = tq.QConfig(activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, reduce_range=reduce_range),
                           weight=tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                        qscheme=torch.per_channel_symmetric))
    q.stage0.qconfig = None
    q.linear.qconfig = None
    tq.prepare(q, inplace=True)
    with torch.no_grad():
        for _ in range(2):
            q(x)
    return tq.convert(q, inplace=True)


def build_case(torch, name, device, channels_last, compiled=False):
    """One call of the case (and its images per call) in one layout, eager or under torch.compile."""
    import torch.nn.functional as F
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, '..', 'tests', 'reference'))
    sys.path.insert(0, here)
    import repvgg_torch
    import repq_torch
    import resnet_torch
    from train_twin import apply_oabn

    arch, batch, res, mode, oabn_k = CASES[name]
    torch.manual_seed(0)
    resnet = 'resnet' in arch
    model = (resnet_torch if resnet else repvgg_torch).create_model(arch)
    num_classes = (model.fc if resnet else model.linear).out_features
    x = torch.randn(batch, 3, res, res).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(memory_format=layout)
    y = torch.randint(0, num_classes, (batch,)).to(device)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

    if mode.startswith('train'):
        if oabn_k > 0:
            apply_oabn(model, oabn_k)
        model.train()
        model.to(device)
        if mode != 'train':
            repq_torch.set_qat(model, mode[len('train-'):], 4)
            model.to(device)
        model.to(memory_format=layout)
        if mode != 'train':
            with torch.no_grad():
                model(x)   # the quantizers' steps initialize on the first batch: not timed
        named = list(model.named_parameters())
        groups = [{'params': [p for n, p in named if not n.endswith('.step')]}]
        steps = [p for n, p in named if n.endswith('.step')]
        if steps:
            groups.append({'params': steps, 'weight_decay': 0.0})
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
        net = torch.compile(model) if compiled else model

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            sync()
        return step, batch

    # infer-deploy: converted from the freshly initialised BN state (speed does not depend on it)
    deployed = repvgg_torch.repvgg_model_convert(model)
    if mode in ('infer-int8', 'infer-int8-a7'):
        deployed = quantize_int8(torch, deployed, x, reduce_range=mode == 'infer-int8-a7')
    deployed.eval()
    deployed.to(device)
    deployed.to(memory_format=layout)
    net = torch.compile(deployed) if compiled else deployed

    def forward():
        with torch.no_grad():
            net(x)
        sync()
    return forward, batch


def compiled_case(torch, name, device, channels_last):
    """build_case under torch.compile, compiled here by one call (not part of the warm-up or the timing).
    Raises ImportError under PyTorch 1.x (no torch._dynamo): the peer is absent there."""
    import logging
    import torch._dynamo
    from torch._inductor import cpp_builder
    # inductor's C++ build warns that the CUDA wheel finds no CUDA runtime: not used on the CPU
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    # Debian's python3-torch (1.13, the tests' oracle) keeps its libtorch_cpu.so in python's LIBDIR
    # (/usr/lib/x86_64-linux-gnu), which inductor puts before torch's own lib dir when it links its C++
    # kernels: they then miss torch 2's SLEEF symbols, its ISA probe fails (pick_vec_isa() says
    # INVALID_VEC_ISA) and it generates scalar code. Linking libpython is not needed on Linux: drop LIBDIR.
    python_args = cpp_builder._get_python_related_args
    cpp_builder._get_python_related_args = lambda: (python_args()[0], [])
    # all peers in one process (without --peer): two compiled models of one class, more recompiles than
    # the default limit allows
    for limit in ('cache_size_limit', 'recompile_limit'):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    fn, batch = build_case(torch, name, device, channels_last, compiled=True)
    fn()
    return fn, batch


PEERS = ('torch', 'torch_cl', 'compile', 'compile_cl', 'ort', 'ov')


def build_peer(torch, name, case, device, onnx, threads):
    """One peer of a model case: a callable timing one call, or its value in the bench line."""
    mode = CASES[case][3]
    if name in ('torch', 'torch_cl'):
        return build_case(torch, case, device, name == 'torch_cl')[0]
    if name in ('compile', 'compile_cl'):
        if 'int8' in mode:
            return '-'   # torch.ao's eager int8 modules: nothing for torch.compile to lower
        return compiled_case(torch, case, device, name == 'compile_cl')[0]
    if not (onnx and device == 'cpu' and mode.startswith('infer')):
        return '-'
    import numpy as np
    import onnx_peer
    _, batch, res, _, _ = CASES[case]
    x = np.random.default_rng(0).standard_normal((batch, 3, res, res), dtype=np.float32)
    return (onnx_peer.ort_runner if name == 'ort' else onnx_peer.ov_runner)(onnx, x, threads)


def build_peers(torch, names, case, device, onnx, threads):
    """name -> build_peer's answer, failed(e) for one that raised."""
    peers = {}
    for name in names:
        try:
            peers[name] = build_peer(torch, name, case, device, onnx, threads)
        except Exception as e:
            peers[name] = failed(e)
    return peers


def versions():
    import onnx_peer
    try:
        import torch
        t = torch.__version__
    except Exception:
        t = 'absent'
    return f'torch {t} {onnx_peer.versions()}'


def main():
    ap = argparse.ArgumentParser(description='The peers\' timings for make bench.')
    names = sorted(CASES) + ['ceiling']
    ap.add_argument('--case', choices=names + ['gpu-' + n for n in names])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--onnx', help='our model as ONNX, for onnxruntime and OpenVINO (the infer cases)')
    ap.add_argument('--peer', choices=PEERS, help='only this peer (default: all)')
    ap.add_argument('--serve', action='store_true', help='time one call per stdin line (see above)')
    ap.add_argument('--versions', action='store_true', help="print the peers' versions and exit")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if args.versions:
        print(versions())
        return
    if not args.case:
        ap.error('--case is required')
    if args.reps < 1 or args.warmup < 0:
        ap.error('--reps must be >= 1 and --warmup >= 0')

    try:
        import torch
    except Exception as e:   # ImportError, or a broken install raising something else
        print(f'torch_peer: PyTorch is not importable ({type(e).__name__}: {e})', file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    case, device = args.case, 'cpu'
    if case.startswith('gpu-'):
        case, device = case[4:], 'cuda'
        if not torch.cuda.is_available():
            print(f'torch_peer: this PyTorch ({torch.__version__}) has no usable CUDA', file=sys.stderr)
            sys.exit(2)
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    peer_names = [args.peer] if args.peer else PEERS

    if case == 'ceiling':
        import torch.nn.functional as F
        c = CEILING
        torch.manual_seed(0)
        x = torch.randn(c['n'], c['c'], c['hw'], c['hw']).to(device)
        w = (torch.randn(c['k'], c['c'], 3, 3) * 0.02).to(device)

        def conv():
            with torch.no_grad():
                F.conv2d(x, w, padding=1)
            sync()
        peers = {n: conv if n == 'torch' else '-' for n in peer_names}
        units, unit = 2.0 * c['n'] * c['hw'] * c['hw'] * c['k'] * c['c'] * 9 / 1e9, 'GFLOP/s'
    else:
        peers, units, unit = build_peers(torch, peer_names, case, device, args.onnx, args.threads), CASES[case][1], 'img/s'
    if args.serve:
        return serve(peers, args.warmup)
    warm(peers, args.warmup)
    rates = [f'{n}={units / time_reps(fn, args.reps):.2f}' if callable(fn) else f'{n}={fn}' for n, fn in peers.items()]
    print(f'peers {args.case} {" ".join(rates)} unit={unit}')


if __name__ == '__main__':
    main()
