"""PyTorch twin of the engine's RepQ QAT (Prutianova et al., BMVC 2023): the LSQ quantizer of
layers/quantizer.{h,cpp}, the BN statistics of layers/bn_fold.{h,cpp} and the merged / deploy modes of
the RepVGG block (layers/repvgg_block.{h,cpp}), composed from torch ops in the engine's order, with its
state-dict names. Oracle code for tests/reference/make_repq_refs.py and bench/torch_peer.py only.

    QBlock(block, fold, act, weight)   a RepVGGBlock (repvgg_torch.py) in merged mode: each forward merges
                                       the branches, BNs folded with `fold` statistics in training
                                       ('batch': RepQ-BN, Eq. 2; 'estimated': RepQ-BNEst, Eq. 5-6) and
                                       running ones in eval, then ReLU(conv(Q_a(x), Q_w(M), b)) (Eq. 1),
                                       b rounded to its integer grid in eval (eval_bias)
    QBlock(deployed, None, act, weight) a deployed block (rbr_reparam): ReLU(conv(Q_a(x), Q_w(W), b))
    QACBlock(block, fold, act, weight) the same for an ACBlock (repvgg_torch.py, ACNet's 3x3 + 1x3 + 3x1):
                                       each BN folded with the statistics of its own conv's output, the
                                       kernels padded to 3x3 and summed (layers/reparam.cpp merge_acb)
    set_qat(model, method, bits)       models/model.cpp Model::set_qat for a repvgg_torch.RepVGG of
                                       RepVGGBlocks or ACBlocks (stage0 and the FC FP32, `bits` activations)

Run with /usr/bin/python3 (Debian's python3-torch, 1.13, CPU). The QARepVGG and OREPA blocks are not
twinned.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import repvgg_torch as R


def code_range(bits, codes):
    """codes 'weight' (restricted signed), 'unsigned', 'signed'; as layers/quantizer.cpp code_min/max."""
    if codes == 'weight':
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    if codes == 'signed':
        return -2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def fake_quant(x, s, q_min, q_max):
    """(clamp(round(x / s), q_min, q_max)) * s, z = 0; torch.round is half to even, as nearbyint."""
    return torch.clamp(torch.round(x / s), q_min, q_max) * s


def min_error_errors(v, q_min, q_max):
    """The candidate steps s_k = max|v| * k / 100 / top (k = 1..100, in v's dtype) and the error
    sum (v - v̂)^2 in float64 of each, over at most 65,536 evenly strided values (quantizer.cpp)."""
    max_abs = v.abs().max()
    stride = max(1, v.numel() // 65536)
    sub = v[::stride]
    top = float(max(-q_min, q_max))
    steps, errs = [], []
    for k in range(1, 101):
        s = max_abs * k / 100.0 / top
        steps.append(s)
        errs.append(((sub.double() - fake_quant(sub, s, q_min, q_max).double()) ** 2).sum().item())
    return steps, errs


def min_error_step(v, q_min, q_max):
    """RepQ's MinError init: the first candidate step of least error (1 where max|v| is 0 or not finite)."""
    max_abs = v.abs().max().item()
    if not (max_abs > 0) or not math.isfinite(max_abs):
        return torch.ones((), dtype=v.dtype)
    steps, errs = min_error_errors(v, q_min, q_max)
    return steps[min(range(len(errs)), key=lambda k: (errs[k], k))]


def grad_scale(s, g):
    """s with its gradient scaled by g: s·g + (s − s·g).detach()   (LSQ Sec. 2.2)"""
    sg = s * g
    return sg + (s - sg).detach()


def round_ste(x):
    """round half to even, straight-through gradient"""
    return x + (torch.round(x) - x).detach()


class Quantizer(nn.Module):
    """LSQ fake quantizer: parameter `step` [channels], buffer `init_state` [1]; min-error init from the
    first tensor it sees in training."""

    def __init__(self, bits, codes, channels=1):
        super().__init__()
        self.q_min, self.q_max = code_range(bits, codes)
        self.step = nn.Parameter(torch.ones(channels))
        self.register_buffer('init_state', torch.zeros(1))

    def forward(self, x):
        c = self.step.numel()
        if self.init_state.item() == 0:
            assert self.training, 'quantizer used in eval mode before its step was set'
            with torch.no_grad():
                rows = x.detach().reshape(c, -1)
                self.step.copy_(torch.stack([min_error_step(r, self.q_min, self.q_max) for r in rows]))
                self.init_state.fill_(1)
        n = x.numel() // c
        g = torch.tensor(float(n) * float(self.q_max), dtype=x.dtype).sqrt().reciprocal()  # float, as the C++
        s = grad_scale(self.step, g)
        if c > 1:
            s = s.reshape(c, 1, 1, 1)
        q = torch.clamp(round_ste(x / s), self.q_min, self.q_max)
        return q * s


class ClusterQuantizer(nn.Module):
    """layers/cluster_quantizer.h (ClusterQAT, OABN paper Algorithm 2) in PyTorch: the codebook reset
    to linspace(min, max, 2^bits) when not set (line 2; the engine's trainer also asks for it each
    epoch), nearest entry by argmin (line 5; ties to the first index, the lower entry of a sorted
    codebook), the k-means step with empty entries kept (line 6), straight-through values (8-10)."""

    def __init__(self, bits):
        super().__init__()
        self.register_buffer('codebook', torch.zeros(2 ** bits))
        self.register_buffer('init_state', torch.zeros(1))

    def forward(self, w):
        with torch.no_grad():
            flat = w.detach().reshape(-1)
            if self.training and self.init_state.item() == 0:
                self.codebook.copy_(torch.linspace(flat.min().item(), flat.max().item(), len(self.codebook)))
                self.init_state.fill_(1)
            codes = (flat[:, None] - self.codebook[None, :]).abs().argmin(1)
            if self.training:
                sums = torch.zeros_like(self.codebook).index_add_(0, codes, flat)
                counts = torch.bincount(codes, minlength=len(self.codebook))
                self.codebook.copy_(torch.where(counts > 0, sums / counts.clamp(min=1), self.codebook))
            q = self.codebook[codes].reshape(w.shape)
        return w + (q - w).detach()


def eval_bias(b, s_x, s_w):
    """layers::eval_bias: in eval, the bias as integer kernels hold it, round(b / t) · t with t = s_x · s_w per
    output channel (the int32 codes of ./export --qdq)"""
    t = s_x * s_w
    return torch.round(b / t) * t


def channel_moments(x):
    """mean and biased variance over N, H, W of x [N, C, H, W]"""
    mean = x.mean((0, 2, 3))
    return mean, ((x - mean.reshape(1, -1, 1, 1)) ** 2).mean((0, 2, 3))


def estimate_moments(mean, var, kernel, groups):
    """RepQ-BNEst Eq. 5-6 (no bias): E[y_o] = Σ_i E[x_i] Σ_hw W[o,i], V[y_o] = Σ_i V[x_i] Σ_hw W[o,i]²"""
    o, per_group = kernel.shape[0], kernel.shape[1]

    def through(taps, m):
        t = taps.sum((2, 3)).reshape(groups, o // groups, per_group)
        return (t * m.reshape(groups, 1, per_group)).sum(2).reshape(o)
    return through(kernel, mean), through(kernel ** 2, var)


def update_running(bn, mean, var, count):
    """BatchNorm2d's running update from batch moments, the variance unbiased by count / (count − 1)"""
    with torch.no_grad():
        m = bn.momentum
        bn.running_mean.copy_(bn.running_mean * (1 - m) + mean.detach() * m)
        bn.running_var.copy_(bn.running_var * (1 - m) + var.detach() * (m * count / (count - 1)))
        bn.num_batches_tracked += 1


def fold(kernel, gamma, beta, mean, var, eps):
    """W · t, β − μ t with t = γ / sqrt(σ² + ε)"""
    t = gamma * torch.rsqrt(var + eps)
    return kernel * t.reshape(-1, 1, 1, 1), beta - mean * t


class QBlock(nn.Module):
    """A RepVGGBlock's branches in merged mode (fold 'batch', 'estimated' or 'running'), or its rbr_reparam (fold
    None), with optional quantizers `act_quant` and `weight_quant`; the same names as the engine's block."""

    def __init__(self, block, fold, act=None, weight=None):
        super().__init__()
        self.fold = fold
        conv = block.rbr_reparam if fold is None else self.branch_conv(block)
        self.groups = conv.groups
        self.stride = conv.stride[0]
        if fold is None:
            self.rbr_reparam = block.rbr_reparam
        else:
            self.take_branches(block)
        self.act_quant = act
        self.weight_quant = weight

    @staticmethod
    def branch_conv(block):
        """the branch conv whose stride, groups and output channels are the block's"""
        return block.rbr_dense.conv

    def take_branches(self, block):
        """the block's branch modules under their state-dict names, in the engine's order"""
        self.rbr_identity = block.rbr_identity
        self.rbr_dense = block.rbr_dense
        self.rbr_1x1 = block.rbr_1x1

    def bn_of(self, bn, x, kernel, moments):
        """bn's fold tensors for input conv(x, kernel) (kernel None: x itself), updating its running stats"""
        fold = self.fold if self.training else 'running'
        if fold == 'running':
            return bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
        if kernel is None:
            mean, var = moments()
        elif fold == 'estimated':
            mean, var = estimate_moments(*moments(), kernel, self.groups)
        else:  # padding (kh // 2, kw // 2): 1 for a 3x3, 0 for a 1x1, ACNet's (1, 0) and (0, 1) for 3x1 and 1x3
            padding = (kernel.shape[2] // 2, kernel.shape[3] // 2)
            mean, var = channel_moments(F.conv2d(x, kernel, None, self.stride, padding, 1, self.groups))
        h, w = (x.shape[2] - 1) // self.stride + 1, (x.shape[3] - 1) // self.stride + 1
        count = x.shape[0] * h * w
        update_running(bn, mean, var, count)
        return bn.weight, bn.bias, mean, var, bn.eps

    def kernel_bias(self, x):
        """layers/reparam.cpp merge_repvgg with the statistics of bn_of (input moments computed once)"""
        cache = []

        def moments():
            if not cache:
                cache.append(channel_moments(x))
            return cache[0]
        k3, k1 = self.rbr_dense.conv.weight, self.rbr_1x1.conv.weight
        id_bn = self.bn_of(self.rbr_identity, x, None, moments) if self.rbr_identity is not None else None
        dk, db = fold(k3, *self.bn_of(self.rbr_dense.bn, x, k3, moments))
        ok, ob = fold(k1, *self.bn_of(self.rbr_1x1.bn, x, k1, moments))
        kernel, bias = dk + F.pad(ok, [1, 1, 1, 1]), db + ob
        if id_bn is not None:
            ik, ib = fold(R.identity_kernel(k3.shape[0], self.groups, k3.dtype), *id_bn)
            kernel, bias = kernel + ik, bias + ib
        return kernel, bias

    def forward(self, x):
        if self.fold is None:
            kernel, bias = self.rbr_reparam.weight, self.rbr_reparam.bias
        else:
            kernel, bias = self.kernel_bias(x)
        xq = self.act_quant(x) if self.act_quant is not None else x
        wq = self.weight_quant(kernel) if self.weight_quant is not None else kernel
        if not self.training and self.act_quant is not None and isinstance(self.weight_quant, Quantizer):
            bias = eval_bias(bias, self.act_quant.step, self.weight_quant.step)
        return F.relu(F.conv2d(xq, wq, bias, self.stride, 1, 1, self.groups))


def pad_to_3x3(kernel):
    """layers/reparam.cpp pad_to_3x3: a kernel [O, I, kh, kw] (kh, kw each 1 or 3) zero-padded, centred, to 3x3"""
    ph, pw = (3 - kernel.shape[2]) // 2, (3 - kernel.shape[3]) // 2
    return F.pad(kernel, [pw, pw, ph, ph])


class QACBlock(QBlock):
    """An ACBlock's branches in merged mode (fold 'batch', 'estimated' or 'running'), or its rbr_reparam (fold
    None), as QBlock; the engine's layers/acnet_block.cpp ACBlock::kernel_bias. Each BN's batch statistics
    are those of its own conv's output (the 1x3 and 3x1 convs with their paddings (0, 1) and (1, 0): the
    same output as the engine's conv of the kernel padded to 3x3 with padding 1); the estimated ones
    sum the thin kernel's taps (the padding's zeros add nothing)."""

    @staticmethod
    def branch_conv(block):
        return block.square_conv

    def take_branches(self, block):
        # the official module order (square_conv, square_bn, ver_conv, hor_conv, ver_bn, hor_bn), as the engine
        for name in ('square_conv', 'square_bn', 'ver_conv', 'hor_conv', 'ver_bn', 'hor_bn'):
            setattr(self, name, getattr(block, name))

    def kernel_bias(self, x):
        """layers/reparam.cpp merge_acb with the statistics of bn_of:
        W = W'_3x3 + pad(W'_1x3) + pad(W'_3x1), b = b'_3x3 + b'_1x3 + b'_3x1"""
        cache = []

        def moments():
            if not cache:
                cache.append(channel_moments(x))
            return cache[0]
        ks, kh, kv = self.square_conv.weight, self.hor_conv.weight, self.ver_conv.weight
        sk, sb = fold(ks, *self.bn_of(self.square_bn, x, ks, moments))
        hk, hb = fold(kh, *self.bn_of(self.hor_bn, x, kh, moments))
        vk, vb = fold(kv, *self.bn_of(self.ver_bn, x, kv, moments))
        return sk + pad_to_3x3(hk) + pad_to_3x3(vk), sb + hb + vb


def qblock_class(block):
    """QBlock for a RepVGGBlock, QACBlock for an ACBlock (training or deploy form)"""
    if isinstance(block, R.RepVGGBlock):
        return QBlock
    if isinstance(block, R.ACBlock):
        return QACBlock
    raise TypeError(f'repq_torch twins RepVGGBlock and ACBlock, not {type(block).__name__}')


METHODS = ('repq-bn', 'repq-bnest', 'merged', 'bnest', 'cluster')


def set_qat(model, method, bits, per_channel=False):
    """Model::set_qat (models/model.cpp) on a repvgg_torch.RepVGG of RepVGGBlocks or ACBlocks in training form:
    'merged' deploys every block, the others merge it ('repq-bn' batch, 'repq-bnest' / 'bnest' estimated,
    'cluster' running statistics); every block but stage0 gets an unsigned activation and a weight quantizer of `bits`
    (not 'bnest'); the FC stays FP32."""
    assert method in METHODS
    blocks = [(model, 'stage0')] + [(stage, str(i)) for stage in (model.stage1, model.stage2, model.stage3,
                                                                   model.stage4) for i in range(len(stage))]
    for i, (parent, name) in enumerate(blocks):
        block = getattr(parent, name) if name == 'stage0' else parent[int(name)]
        cls = qblock_class(block)
        if method == 'merged':
            block.switch_to_deploy()
            # the official switch_to_deploy ends with detach_() on every parameter, the new conv's too: QAT of the
            # deploy form trains its weights (as Model::set_qat), so they take gradients again
            for p in block.rbr_reparam.parameters():
                p.requires_grad_(True)
        f = {'merged': None, 'repq-bn': 'batch', 'cluster': 'running'}.get(method, 'estimated')
        act = weight = None
        if method != 'bnest' and i > 0:
            out = (block.rbr_reparam if f is None else cls.branch_conv(block)).out_channels
            act = Quantizer(bits, 'unsigned')
            weight = ClusterQuantizer(bits) if method == 'cluster' else Quantizer(bits, 'weight', out if per_channel else 1)
        q = cls(block, f, act, weight)
        if name == 'stage0':
            parent.stage0 = q
        else:
            parent[int(name)] = q
    return model
