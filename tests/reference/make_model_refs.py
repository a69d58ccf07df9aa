"""Writes the model-level reference files of tests/reference/ (see README.md there).

    /usr/bin/python3 tests/reference/make_model_refs.py                  # the checked-in files
    /usr/bin/python3 tests/reference/make_model_refs.py --cifar-width 64 --out /tmp/refs
                                                           # full-width CIFAR models (~12 MB each)
    /usr/bin/python3 tests/reference/make_model_refs.py --resnet-width 8 --out /tmp/refs
                                                           # the ResNet-18 files at base width 8 (2-6 MB each)

Every case is built in float32 with fixed seeds (torch.manual_seed), its BN state
randomised, and stored in float32.  The stored outputs, gradients and running stats
are computed in float64 from those exact float32 values and then rounded to float32,
so they are the true results for the stored inputs to float32 rounding.  The same
case is also run wholly in float32, and the largest float32-vs-float64 error of each
kind of tensor is printed (that is the error a correct float32 engine can expect).
"""
import argparse
import copy
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import repvgg_torch as R  # noqa: E402
import resnet_torch as RN  # noqa: E402
from safetensors_io import save_file, load_file  # noqa: E402

FORMAT_VERSION = '1'
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
DEPLOY_RTOL = 1e-5   # out_deploy vs out_eval, float32, relative to max |out_eval|


def rel_err(a, b):
    """max |a - b| / max |b|: one relative error for a whole tensor."""
    a, b = a.double(), b.double()
    scale = max(b.abs().max().item(), 1e-30)
    return (a - b).abs().max().item() / scale


ZERO = 1e-6   # a reference tensor with max |ref| below this is "zero": its error is absolute


def note_error(group, key, t32, t64):
    """Record the float32-vs-float64 error of one tensor under (group, kind of tensor)."""
    kind = key.split('.')[0]
    if t64.abs().max().item() < ZERO:
        kind, e = kind + ' (zero ref, abs)', (t32.double() - t64.double()).abs().max().item()
    else:
        e = rel_err(t32, t64)
    k = (group, kind)
    ERRORS[k] = max(ERRORS.get(k, 0.0), e)


def randomize_bn(model, seed):
    """Non-trivial BN state: gamma ~ 1 + 0.3 N, beta ~ 0.2 N, mean ~ 0.2 N, var ~ U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            assert m.eps == BN_EPS and m.momentum == BN_MOMENTUM
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def state_tensors(model):
    """state dict without num_batches_tracked (unused: momentum is fixed at 0.1)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if not k.endswith('num_batches_tracked')}


def run_case(model32, x32, dtype, loss_kind, aux, custom_l2=False):
    """Train forward + loss + backward, eval forward, deploy conversion and forward, in `dtype`.

    loss_kind 'weighted': loss = (out * aux).sum();  'ce': loss = cross_entropy(out, aux), mean.
    """
    model = copy.deepcopy(model32).to(dtype)
    x = x32.to(dtype)
    r = {}
    # training mode: BN uses batch statistics and updates the running ones
    model.train()
    pre_relu = []   # every ReLU's input in the training forward, to find kinks (see make_case)
    hooks = [m.register_forward_hook(lambda mod, inp, out: pre_relu.append(inp[0].detach().clone()))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    out = model(x)
    for h in hooks:
        h.remove()
    if loss_kind == 'weighted':
        loss = (out * aux.to(dtype)).sum()
    else:
        loss = F.cross_entropy(out, aux)
    loss.backward()
    r['out_train'] = out.detach()
    r['loss'] = loss.detach()
    for n, p in model.named_parameters():
        r['grad.' + n] = p.grad.detach().clone()
    for n, b in model.named_buffers():
        if not n.endswith('num_batches_tracked'):
            r['after.' + n] = b.detach().clone()
    if custom_l2:
        # official train.py order: after the forward, so with the updated running_var
        model.zero_grad(set_to_none=True)
        l2 = R.get_custom_L2(model)
        l2.backward()
        r['custom_l2'] = l2.detach()
        for n, p in model.named_parameters():
            r['l2grad.' + n] = (p.grad.detach().clone() if p.grad is not None
                                else torch.zeros_like(p.detach()))
    model.zero_grad(set_to_none=True)
    # eval mode on the updated state
    model.eval()
    with torch.no_grad():
        r['out_eval'] = model(x)
        deploy = R.repvgg_model_convert(model)
        deploy.eval()
        for n, t in deploy.state_dict().items():
            r['deploy.' + n] = t.detach().clone()
        r['out_deploy'] = deploy(x)
    return r, pre_relu


KINK_SAFETY = 10.0   # every ReLU input at least this many float32 errors away from 0


def kink_safety(pre64, pre32):
    """min over the ReLUs of min |input| / max |float32 - float64 error| of that ReLU's input,
    and the number of inputs whose sign differs between float32 and float64."""
    ratio, flips = float('inf'), 0
    for a, b in zip(pre64, pre32):
        err = max((b.double() - a).abs().max().item(), 1e-12)
        ratio = min(ratio, a.abs().min().item() / err)
        flips += ((a > 0) != (b > 0)).sum().item()
    return ratio, flips


def train_forward_relu_inputs(model32, x32, dtype):
    model = copy.deepcopy(model32).to(dtype).train()
    pre = []
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out: pre.append(inp[0].detach().clone()))
    with torch.no_grad():
        model(x32.to(dtype))
    return pre


ERRORS = {}   # (group, kind of tensor) -> largest float32-vs-float64 error over the cases


def make_case(path, model32, x32, loss_kind, aux, meta, custom_l2=False, allow_kinks=False, group=None):
    r64, pre64 = run_case(model32, x32, torch.float64, loss_kind, aux, custom_l2)
    r32, pre32 = run_case(model32, x32, torch.float32, loss_kind, aux, custom_l2)
    # A ReLU input so near 0 that float32 and float64 disagree on its sign changes the
    # gradients upstream by O(1/N): such a case is no good as a float32 reference.
    ratio, flips = kink_safety(pre64, pre32)
    print('  ReLU kink safety %.1f (min over ReLUs of min|input| / float32 error), sign flips %d'
          % (ratio, flips))
    if ratio < KINK_SAFETY:
        msg = '%s: kink safety %.1f < %g: gradients ill-conditioned in float32' % (path, ratio, KINK_SAFETY)
        if not allow_kinks:
            raise AssertionError(msg)
        print('  WARNING: ' + msg)
    meta = dict(meta, relu_kink_safety='%.1f' % ratio)
    # the brief's check, in float32: deploy output equals the eval-mode output
    e = rel_err(r32['out_deploy'], r32['out_eval'])
    assert e <= DEPLOY_RTOL, '%s: float32 out_deploy vs out_eval rel err %.3g' % (path, e)
    e64 = rel_err(r64['out_deploy'], r64['out_eval'])
    assert e64 <= 1e-12, '%s: float64 out_deploy vs out_eval rel err %.3g' % (path, e64)
    print('  out_deploy vs out_eval: float32 %.2e, float64 %.2e' % (e, e64))
    for k in r64:
        note_error(group or meta['kind'], k, r32[k], r64[k])

    tensors = {'input': x32}
    if loss_kind == 'weighted':
        tensors['loss_w'] = aux
    else:
        tensors['labels'] = aux
    for n, t in state_tensors(model32).items():
        tensors['param.' + n] = t
    for k, v in r64.items():
        tensors[k] = v.to(torch.float32)
    meta = dict(meta)
    meta.update(format_version=FORMAT_VERSION, producer='tests/reference/make_model_refs.py',
                torch_version=torch.__version__, computed_in='float64, stored as float32',
                bn_eps=repr(BN_EPS), bn_momentum=repr(BN_MOMENTUM),
                input_shape=json.dumps(list(x32.shape)),
                output_shape=json.dumps(list(r64['out_train'].shape)))
    save_file(tensors, path, metadata=meta)
    # read back: same keys, same values
    back = load_file(path)
    assert set(back) == set(tensors)
    for k in tensors:
        assert torch.equal(back[k], tensors[k].contiguous()), k
    print('  wrote %s (%d tensors, %d bytes)' % (os.path.relpath(path), len(tensors),
                                                  os.path.getsize(path)))


def orepa_live(blk, seed):
    """Every OREPA branch live: the official init zeroes idconv1 and the prior branch's row of vector."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        k = blk.weight_orepa_1x1_kxk_idconv1
        k.copy_(0.3 * torch.randn(k.shape, generator=g))
        blk.vector.copy_(0.2 + 0.8 * torch.rand(blk.vector.shape, generator=g))


def block_case(path, cls, cin, cout, stride, groups, input_shape, seed, custom_l2=False, live=None):
    print(path)
    torch.manual_seed(seed)
    blk = cls(cin, cout, kernel_size=3, stride=stride, padding=1, groups=groups)
    randomize_bn(blk, seed + 1)
    if live:
        live(blk, seed + 2)
    x = torch.randn(*input_shape)
    with torch.no_grad():
        out_shape = copy.deepcopy(blk).train()(x).shape
    loss_w = torch.randn(out_shape)
    meta = dict(kind='block', arch=cls.__name__, in_channels=str(cin), out_channels=str(cout),
                stride=str(stride), groups=str(groups), seed=str(seed),
                has_identity=str(cin == cout and stride == 1 and getattr(cls, 'has_identity_branch', True)).lower(),
                loss='sum(out_train * loss_w)')
    make_case(path, blk, x, 'weighted', loss_w, meta, custom_l2)


def model_case(path, arch, width, seed, batch=2, res=32, allow_kinks=False, tries=200):
    """Full model.  Seeds seed, seed + 1000, ... are tried until the case is kink-safe
    (KINK_SAFETY), so that float32 gradients are well defined; the seed used is stored."""
    print(path)
    wm = R.cifar_width_multiplier(width)
    best = None
    for attempt in range(tries):
        s = seed + 1000 * attempt
        torch.manual_seed(s)
        model = R.create_model(arch, width_multiplier=wm)
        randomize_bn(model, s + 1)
        x = torch.randn(batch, 3, res, res)
        labels = torch.randint(0, R.ARCHS[arch]['num_classes'], (batch,), dtype=torch.int64)
        ratio, _ = kink_safety(train_forward_relu_inputs(model, x, torch.float64),
                               train_forward_relu_inputs(model, x, torch.float32))
        if best is None or ratio > best[0]:
            best = (ratio, s, model, x, labels)
        if ratio >= KINK_SAFETY:
            break
    ratio, seed, model, x, labels = best
    print('  seed %d (attempt %d)' % (seed, attempt + 1))
    a = R.ARCHS[arch]
    meta = dict(kind='model', arch=arch, block=a['block_cls'].__name__, seed=str(seed),
                num_blocks=json.dumps(a['num_blocks']), width_multiplier=json.dumps(wm),
                widths=json.dumps([min(64, int(64 * wm[0]))] + [int(c * m) for c, m in
                                                                 zip((64, 128, 256, 512), wm)]),
                stage0_stride=str(a['stage0_stride']), num_classes=str(a['num_classes']),
                override_groups_map=json.dumps(a['override_groups_map'] or {}),
                loss='cross_entropy(out_train, labels), mean over the batch')
    make_case(path, model, x, 'ce', labels, meta, allow_kinks=allow_kinks)


def pool_tie_safety(model32, x32):
    """The max pools' analogue of kink_safety: a window whose two largest inputs are so close that float32
    and float64 disagree on which is larger sends the gradient to another input.  Returns min over the
    windows whose max is > 0 (an all-zero window after a ReLU passes nothing back: its ReLUs are off) of
    (largest - second largest) / max |float32 - float64 error| of the pool's input, and the number of
    such windows whose argmax differs between float32 and float64."""
    def pool_inputs(dtype):
        model = copy.deepcopy(model32).to(dtype).train()
        got = []
        for m in model.modules():
            if isinstance(m, nn.MaxPool2d):
                m.register_forward_hook(lambda mod, inp, out: got.append((mod, inp[0].detach().clone())))
        with torch.no_grad():
            model(x32.to(dtype))
        return got

    def windows(m, x):   # [N, C, k*k, L], the padding -inf as max_pool2d's
        p = m.padding
        n, c = x.shape[:2]
        cols = F.unfold(F.pad(x, [p, p, p, p], value=float('-inf')), m.kernel_size, stride=m.stride)
        return cols.reshape(n, c, m.kernel_size * m.kernel_size, -1)

    ratio, flips = float('inf'), 0
    for (m, a), (_, b) in zip(pool_inputs(torch.float64), pool_inputs(torch.float32)):
        err = max((b.double() - a).abs().max().item(), 1e-12)
        wa, wb = windows(m, a), windows(m, b.double())
        top = wa.topk(2, dim=2).values
        live = top[:, :, 0] > 0
        gap = (top[:, :, 0] - top[:, :, 1])[live]
        if gap.numel():
            ratio = min(ratio, gap.min().item() / err)
        flips += (wa.argmax(2) != wb.argmax(2))[live].sum().item()
    return ratio, flips


def resnet_case(path, arch, seed, batch=2, res=32, num_classes=None, tries=200):
    """torchvision's ResNet-18 twin (resnet_torch.py) of `arch`, e.g. 'acb-resnet18-cifar-w2'.  Seeds seed,
    seed + 1000, ... are tried until both the ReLUs (kink_safety) and the max pool (pool_tie_safety) are
    safe; every OREPA block made live (orepa_live)."""
    print(path)
    kw = RN.arch_kwargs(arch)
    classes = num_classes or kw['num_classes']
    for attempt in range(tries):
        s = seed + 1000 * attempt
        torch.manual_seed(s)
        model = RN.create_model(arch, num_classes=classes)
        randomize_bn(model, s + 1)
        orepa = [m for m in model.modules() if isinstance(m, R.OREPABlock)]
        for i, blk in enumerate(orepa):
            orepa_live(blk, s + 2 + i)
        x = torch.randn(batch, 3, res, res)
        labels = torch.randint(0, classes, (batch,), dtype=torch.int64)
        relu, _ = kink_safety(train_forward_relu_inputs(model, x, torch.float64),
                              train_forward_relu_inputs(model, x, torch.float32))
        pool, pool_flips = pool_tie_safety(model, x)
        if relu >= KINK_SAFETY and pool >= KINK_SAFETY and pool_flips == 0:
            break
    else:
        raise AssertionError('%s: no kink-safe seed in %d tries' % (path, tries))
    print('  seed %d (attempt %d), max-pool tie safety %s' % (s, attempt + 1,
                                                               'n/a' if pool == float('inf') else '%.1f' % pool))
    w = kw['width']
    meta = dict(kind='model', family='resnet', arch=arch, block=kw['block_cls'].__name__, seed=str(s),
                num_blocks=json.dumps([2, 2, 2, 2]), width=str(w), widths=json.dumps([w, w, 2 * w, 4 * w, 8 * w]),
                stem='cifar: 3x3 stride 1 block, no pool' if kw['cifar'] else
                     'imagenet: plain 7x7 stride 2 block, max_pool(3, 2, 1)',
                stage0_stride=str(1 if kw['cifar'] else 2), num_classes=str(classes),
                maxpool_tie_safety='n/a' if pool == float('inf') else '%.1f' % pool,
                orepa_live=str(bool(orepa)).lower(),
                loss='cross_entropy(out_train, labels), mean over the batch')
    make_case(path, model, x, 'ce', labels, meta, group=arch)


def oabn_clip_case(path, k=3.0, seed=7):
    """OABN identity-BN clip: gamma clipped to [-k var, k var] (var = running_var before the
    forward), train-mode BN, straight-through gradient to the unclipped gamma."""
    print(path)
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = 4, 6, 5, 5
    x = 1.5 * torch.randn(n, c, h, w, generator=g) + 0.3
    running_mean = 0.3 * torch.randn(c, generator=g)
    running_var = 0.2 + 0.8 * torch.rand(c, generator=g)
    # gamma / (k var): channels 0, 1, 5 outside the bound (above, below, above), 2, 3, 4 inside
    factor = torch.tensor([1.6, -1.4, 0.5, -0.3, 0.9, 2.2])
    gamma = (factor * k * running_var).to(torch.float32)
    beta = 0.2 * torch.randn(c, generator=g)
    loss_w = torch.randn(n, c, h, w, generator=g)
    bound = k * running_var
    assert ((gamma.abs() > bound).tolist() == [True, True, False, False, False, True])

    def run(dtype):
        xi = x.to(dtype).requires_grad_()
        gm = gamma.to(dtype).requires_grad_()
        bt = beta.to(dtype).requires_grad_()
        rm, rv = running_mean.to(dtype).clone(), running_var.to(dtype).clone()
        kb = k * rv                                        # bound from the running_var before the update
        gc = torch.max(torch.min(gm, kb), -kb)             # clamp(gamma, -k var, k var)
        gs = gm + (gc - gm).detach()                       # straight-through
        out = F.batch_norm(xi, rm, rv, gs, bt, training=True, momentum=BN_MOMENTUM, eps=BN_EPS)
        loss = (out * loss_w.to(dtype)).sum()
        loss.backward()
        return {'gamma_clipped': gc.detach(), 'out': out.detach(), 'loss': loss.detach(),
                'grad.input': xi.grad, 'grad.gamma': gm.grad, 'grad.beta': bt.grad,
                'after.running_mean': rm, 'after.running_var': rv}

    r64, r32 = run(torch.float64), run(torch.float32)
    for key in r64:
        note_error('oabn_clip', key, r32[key], r64[key])
    tensors = {'input': x, 'gamma': gamma, 'beta': beta, 'running_mean': running_mean,
               'running_var': running_var, 'loss_w': loss_w, 'k': torch.tensor(k)}
    for key, v in r64.items():
        tensors[key] = v.to(torch.float32)
    meta = dict(kind='oabn_clip', k=repr(k), seed=str(seed), format_version=FORMAT_VERSION,
                producer='tests/reference/make_model_refs.py', torch_version=torch.__version__,
                computed_in='float64, stored as float32', bn_eps=repr(BN_EPS),
                bn_momentum=repr(BN_MOMENTUM), input_shape=json.dumps([n, c, h, w]),
                clip='gamma_clipped = clamp(gamma, -k*running_var, k*running_var), '
                     'running_var before the update; straight-through gradient to gamma',
                loss='sum(out * loss_w)')
    save_file(tensors, path, metadata=meta)
    back = load_file(path)
    for key in tensors:
        assert torch.equal(back[key], tensors[key].contiguous()), key
    print('  wrote %s (%d tensors, %d bytes)' % (os.path.relpath(path), len(tensors),
                                                  os.path.getsize(path)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=HERE, help='output folder (default: tests/reference)')
    ap.add_argument('--cifar-width', type=int, default=16,
                    help='channel width of the CIFAR models (paper: 64; checked in: 16)')
    ap.add_argument('--resnet-width', type=int, default=2,
                    help='base width of the ResNet-18 models (torchvision: 64; checked in: 2)')
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)   # deterministic reductions
    o = lambda name: os.path.join(args.out, name)  # noqa: E731
    w = args.cifar_width
    block_case(o('repvgg_block_s1.safetensors'), R.RepVGGBlock, 8, 8, 1, 1, (2, 8, 7, 7),
               seed=1, custom_l2=True)
    block_case(o('repvgg_block_s2g2.safetensors'), R.RepVGGBlock, 8, 16, 2, 2, (2, 8, 9, 9),
               seed=2)
    block_case(o('qarepvgg_block_s1.safetensors'), R.QARepVGGBlock, 8, 8, 1, 1, (2, 8, 7, 7),
               seed=3)
    block_case(o('acb_block_s1.safetensors'), R.ACBlock, 8, 8, 1, 1, (2, 8, 7, 7), seed=6)
    block_case(o('acb_block_s2g2.safetensors'), R.ACBlock, 8, 16, 2, 2, (2, 8, 9, 9), seed=7)
    block_case(o('orepa_block_s1.safetensors'), R.OREPABlock, 8, 8, 1, 1, (2, 8, 7, 7), seed=8, live=orepa_live)
    block_case(o('orepa_block_s2g2.safetensors'), R.OREPABlock, 8, 16, 2, 2, (2, 8, 9, 9), seed=9, live=orepa_live)
    kinks = w != 16   # the checked-in width must be kink-free; others only warn
    model_case(o('repvgg_cifar_w%d.safetensors' % w), 'repvgg-cifar', w, seed=4, allow_kinks=kinks)
    model_case(o('qarepvgg_cifar_w%d.safetensors' % w), 'qarepvgg-cifar', w, seed=5,
               allow_kinks=kinks)
    oabn_clip_case(o('oabn_clip.safetensors'))
    rw = args.resnet_width
    # the ImageNet stem (plain 7x7 stride 2, max pool) at 64x64 and 10 classes (a 1000-class fc would be
    # most of the file); the CIFAR stem with each re-parameterized block
    resnet_case(o('resnet18_w%d.safetensors' % rw), 'resnet18-w%d' % rw, seed=10, res=64, num_classes=10)
    resnet_case(o('acb_resnet18_cifar_w%d.safetensors' % rw), 'acb-resnet18-cifar-w%d' % rw, seed=11)
    resnet_case(o('orepa_resnet18_cifar_w%d.safetensors' % rw), 'orepa-resnet18-cifar-w%d' % rw, seed=12)
    print('largest float32-vs-float64 error per kind of tensor: max|d| / max|ref|, or max|d|')
    print('where the reference is zero (max|ref| < %g):' % ZERO)
    for group, kind in sorted(ERRORS):
        print('  %-24s %-26s %.2e' % (group, kind, ERRORS[(group, kind)]))


if __name__ == '__main__':
    main()
