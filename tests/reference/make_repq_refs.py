"""Writes the RepQ reference files of tests/reference/ (see README.md there):

    /usr/bin/python3 tests/reference/make_repq_refs.py      # repq_bn_block.safetensors, repq_bnest_block.safetensors

One RepVGGBlock 8->8, stride 1 (identity branch), input [2, 8, 5, 5], OABN off, in merged mode (repq_torch.QBlock) with 4-bit
quantizers: an unsigned per-tensor input quantizer and a restricted signed weight quantizer (per tensor in
the RepQ-BN file, per output channel in the RepQ-BNEst file), steps initialized by min-error from the first
batch. One training forward, loss = sum(out_train * loss_w), backward, then an eval forward.

The stored results are computed in float64 from the stored float32 inputs and rounded to float32, as
make_model_refs.py does. Quantization is discontinuous, so a case is refused unless float32 and float64 pick
the same initial steps (the same k of the min-error grid) and the same integer codes for every quantized
value, and every ReLU input is away from 0; the script tries seeds seed, seed + 1000, ... and prints the
float32-vs-float64 error of each tensor (the error a correct float32 engine can expect).
"""
import copy
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import repvgg_torch as R  # noqa: E402
import repq_torch as Q  # noqa: E402
from make_model_refs import randomize_bn, rel_err  # noqa: E402
from safetensors_io import save_file  # noqa: E402

BITS = 4
ERRORS = {}  # kind of tensor -> largest float32-vs-float64 error


def build(seed, fold, per_channel):
    torch.manual_seed(seed)
    blk = R.RepVGGBlock(8, 8, kernel_size=3, stride=1, padding=1)
    randomize_bn(blk, seed + 1)
    q = Q.QBlock(blk, fold, Q.Quantizer(BITS, 'unsigned'), Q.Quantizer(BITS, 'weight', 8 if per_channel else 1))
    x = torch.relu(torch.randn(2, 8, 5, 5) + 0.3)  # a block's input follows a ReLU
    loss_w = torch.randn(2, 8, 5, 5)
    return q, x, loss_w


def run(block32, x32, loss_w32, dtype):
    """train forward, loss, backward, eval forward in dtype; the quantizers' inputs, codes and init k"""
    block = copy.deepcopy(block32).to(dtype).train()
    x = x32.to(dtype).requires_grad_(True)
    seen = {}
    def keep_input(name):
        def hook(module, inputs, output):
            seen.setdefault(name, inputs[0].detach())  # the first call: the training forward
        return hook
    for name in ('act_quant', 'weight_quant'):
        getattr(block, name).register_forward_hook(keep_input(name))
    out = block(x)
    loss = (out * loss_w32.to(dtype)).sum()
    loss.backward()
    r = {'out_train': out.detach(), 'loss': loss.detach(), 'grad.input': x.grad}
    for n, p in block.named_parameters():
        r['grad.' + n] = p.grad
    for n, b in block.named_buffers():
        if not n.endswith('num_batches_tracked'):
            r['after.' + n] = b.clone()
    codes, ks = {}, {}
    for name, v in seen.items():
        qz = getattr(block, name)
        step = qz.step.detach()
        r['init.%s.step' % name] = step.clone()
        c = step.numel()
        rows = v.reshape(c, -1)
        ks[name] = [min(range(100), key=lambda k: Q.min_error_errors(row, qz.q_min, qz.q_max)[1][k]) for row in rows]
        codes[name] = torch.clamp(torch.round(v / (step.reshape(-1, 1, 1, 1) if c > 1 else step)), qz.q_min, qz.q_max)
    block.eval()
    with torch.no_grad():
        r['out_eval'] = block(x32.to(dtype))
    return r, codes, ks


def relu_margin(block32, x32):
    """min |conv output before the ReLU| / max, float64"""
    block = copy.deepcopy(block32).double().train()
    pre = []
    orig = Q.F.relu
    Q.F.relu = lambda t: (pre.append(t.detach()), orig(t))[1]
    try:
        block(x32.double())
    finally:
        Q.F.relu = orig
    return (pre[0].abs().min() / pre[0].abs().max()).item()


def make_case(path, fold, per_channel, seed, tries=50):
    print(path)
    for attempt in range(tries):
        s = seed + 1000 * attempt
        block, x, loss_w = build(s, fold, per_channel)
        r64, c64, k64 = run(block, x, loss_w, torch.float64)
        r32, c32, k32 = run(block, x, loss_w, torch.float32)
        same = k32 == k64 and all(torch.equal(c32[n], c64[n]) for n in c64)
        margin = relu_margin(block, x)
        if same and margin > 1e-4:
            break
        print('  seed %d refused: init k or codes differ in float32 (%s) or ReLU margin %.1e' % (s, not same, margin))
    else:
        raise SystemExit('no seed of %d tries gives float32 == float64 codes' % tries)
    tensors = {'input': x, 'loss_w': loss_w}
    for n, t in block.state_dict().items():
        if not n.endswith('num_batches_tracked'):
            tensors['param.' + n] = t.clone()
    for k, t64 in r64.items():
        tensors[k] = t64.float()
        kind = k.split('.')[0] if not k.startswith('grad.') or 'quant' not in k else 'grad.step'
        e = rel_err(r32[k], t64) if t64.abs().max().item() >= 1e-6 else (r32[k].double() - t64).abs().max().item()
        ERRORS[kind] = max(ERRORS.get(kind, 0.0), e)
    meta = dict(format_version='1', kind='repq_block', arch='RepVGGBlock', in_channels='8', out_channels='8',
                stride='1', groups='1', has_identity='true', oabn='off', seed=str(s), bits=str(BITS),
                fold=fold, act_codes='unsigned', weight_codes='restricted signed',
                weight_granularity='channel' if per_channel else 'layer', step_init='min-error',
                init_k_act=str(k64['act_quant']), init_k_weight=str(k64['weight_quant']),
                relu_margin='%.2e' % margin, loss='sum(out_train * loss_w)', bn_eps='1e-05', bn_momentum='0.1',
                computed_in='float64, stored as float32', torch_version=torch.__version__)
    save_file(tensors, path, metadata=meta)
    print('  seed %d, init k act %s weight %s, ReLU margin %.1e: wrote %s (%d tensors, %d bytes)' %
          (s, k64['act_quant'], k64['weight_quant'], margin, os.path.relpath(path), len(tensors),
           os.path.getsize(path)))


def main():
    make_case(os.path.join(HERE, 'repq_bn_block.safetensors'), 'batch', False, 31)
    make_case(os.path.join(HERE, 'repq_bnest_block.safetensors'), 'estimated', True, 32)
    print('float32 vs float64, largest error per kind (relative; absolute for a zero reference):')
    for kind, e in sorted(ERRORS.items()):
        print('  %-12s %.1e' % (kind, e))


if __name__ == '__main__':
    main()
