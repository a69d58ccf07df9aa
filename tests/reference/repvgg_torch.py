"""PyTorch port of the official RepVGG (DingXiaoH/RepVGG, repvgg.py), of the
QARepVGG S4 block as defined for this project, of ACNet's ACBlock
(DingXiaoH/ACNet, acnet/acb.py) and of OREPA's block (JUGGHM/OREPA_CVPR2022, blocks.py OREPA) as blocks
of the same plain nets.  Oracle code for the checked-in
reference files only: the engine never imports PyTorch.

Faithful to the official code in everything that changes numbers or state-dict
names: RepVGGBlock, conv_bn, _fuse_bn_tensor, get_equivalent_kernel_bias,
switch_to_deploy, get_custom_L2, RepVGG (layer-index group map, stage layout),
the model list.  Left out: the SE option (use_se, off in every listed model),
gradient checkpointing (use_checkpoint) and the print in RepVGGBlock.__init__.
Added: `block_cls` (RepVGGBlock, QARepVGGBlock, ACBlock or OREPABlock) and `stage0_stride` (1 for
the CIFAR model) as keyword arguments of RepVGG, with the official defaults.

Run with /usr/bin/python3 (Debian's python3-torch, 1.13, CPU).
"""
import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups=1):
    # official: Sequential with children named 'conv' (no bias) and 'bn'
    result = nn.Sequential()
    result.add_module('conv', nn.Conv2d(in_channels=in_channels, out_channels=out_channels,
                                        kernel_size=kernel_size, stride=stride, padding=padding,
                                        groups=groups, bias=False))
    result.add_module('bn', nn.BatchNorm2d(num_features=out_channels))
    return result


def identity_kernel(in_channels, groups, dtype=torch.float32, device=None):
    # [in, in/groups, 3, 3] with 1 at [i, i % (in/groups), 1, 1]   (official id_tensor)
    input_dim = in_channels // groups
    kernel_value = np.zeros((in_channels, input_dim, 3, 3), dtype=np.float32)
    for i in range(in_channels):
        kernel_value[i, i % input_dim, 1, 1] = 1
    return torch.from_numpy(kernel_value).to(device=device, dtype=dtype)


class RepVGGBlock(nn.Module):
    # Training form: out = ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))
    #   rbr_dense    = conv_bn 3x3, padding 1, no bias
    #   rbr_1x1      = conv_bn 1x1, same stride, padding 0, no bias
    #   rbr_identity = BatchNorm2d(in) only when in == out and stride == 1
    # Deploy form: out = ReLU(rbr_reparam(x)), rbr_reparam a 3x3 conv with bias.

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1,
                 dilation=1, groups=1, padding_mode='zeros', deploy=False):
        super(RepVGGBlock, self).__init__()
        self.deploy = deploy
        self.groups = groups
        self.in_channels = in_channels

        assert kernel_size == 3
        assert padding == 1

        padding_11 = padding - kernel_size // 2

        self.nonlinearity = nn.ReLU()

        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels=in_channels, out_channels=out_channels,
                                         kernel_size=kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, bias=True,
                                         padding_mode=padding_mode)
        else:
            self.rbr_identity = nn.BatchNorm2d(num_features=in_channels) \
                if out_channels == in_channels and stride == 1 else None
            self.rbr_dense = conv_bn(in_channels=in_channels, out_channels=out_channels,
                                     kernel_size=kernel_size, stride=stride, padding=padding,
                                     groups=groups)
            self.rbr_1x1 = conv_bn(in_channels=in_channels, out_channels=out_channels,
                                   kernel_size=1, stride=stride, padding=padding_11, groups=groups)

    def forward(self, inputs):
        if hasattr(self, 'rbr_reparam'):
            return self.nonlinearity(self.rbr_reparam(inputs))

        if self.rbr_identity is None:
            id_out = 0
        else:
            id_out = self.rbr_identity(inputs)

        return self.nonlinearity(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out)

    # Official custom L2 (replaces the ordinary weight decay on rbr_dense.conv.weight and
    # rbr_1x1.conv.weight; train.py adds weight_decay * 0.5 * get_custom_L2() per block).
    # t3, t1 = gamma / sqrt(running_var + eps) of the 3x3 and 1x1 BNs, detached.
    def get_custom_L2(self):
        K3 = self.rbr_dense.conv.weight
        K1 = self.rbr_1x1.conv.weight
        t3 = (self.rbr_dense.bn.weight / ((self.rbr_dense.bn.running_var + self.rbr_dense.bn.eps).sqrt())).reshape(-1, 1, 1, 1).detach()
        t1 = (self.rbr_1x1.bn.weight / ((self.rbr_1x1.bn.running_var + self.rbr_1x1.bn.eps).sqrt())).reshape(-1, 1, 1, 1).detach()

        l2_loss_circle = (K3 ** 2).sum() - (K3[:, :, 1:2, 1:2] ** 2).sum()   # the 8 outer taps: plain L2
        eq_kernel = K3[:, :, 1:2, 1:2] * t3 + K1 * t1                        # equivalent centre tap
        l2_loss_eq_kernel = (eq_kernel ** 2 / (t3 ** 2 + t1 ** 2)).sum()     # normalised
        return l2_loss_eq_kernel + l2_loss_circle

    # Equivalent kernel and bias, differentiable (official).
    def get_equivalent_kernel_bias(self):
        kernel3x3, bias3x3 = self._fuse_bn_tensor(self.rbr_dense)
        kernel1x1, bias1x1 = self._fuse_bn_tensor(self.rbr_1x1)
        kernelid, biasid = self._fuse_bn_tensor(self.rbr_identity)
        return kernel3x3 + self._pad_1x1_to_3x3_tensor(kernel1x1) + kernelid, bias3x3 + bias1x1 + biasid

    def _pad_1x1_to_3x3_tensor(self, kernel1x1):
        if kernel1x1 is None:
            return 0
        else:
            return torch.nn.functional.pad(kernel1x1, [1, 1, 1, 1])

    # BN fold: W' = W * gamma/std, b' = beta - mean * gamma/std, std = sqrt(var + eps)
    def _fuse_bn_tensor(self, branch):
        if branch is None:
            return 0, 0
        if isinstance(branch, nn.Sequential):
            kernel = branch.conv.weight
            running_mean = branch.bn.running_mean
            running_var = branch.bn.running_var
            gamma = branch.bn.weight
            beta = branch.bn.bias
            eps = branch.bn.eps
        else:
            assert isinstance(branch, nn.BatchNorm2d)
            if not hasattr(self, 'id_tensor'):
                self.id_tensor = identity_kernel(self.in_channels, self.groups,
                                                 dtype=branch.weight.dtype, device=branch.weight.device)
            kernel = self.id_tensor
            running_mean = branch.running_mean
            running_var = branch.running_var
            gamma = branch.weight
            beta = branch.bias
            eps = branch.eps
        std = (running_var + eps).sqrt()
        t = (gamma / std).reshape(-1, 1, 1, 1)
        return kernel * t, beta - running_mean * gamma / std

    def switch_to_deploy(self):
        if hasattr(self, 'rbr_reparam'):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        c = self.rbr_dense.conv
        self.rbr_reparam = nn.Conv2d(in_channels=c.in_channels, out_channels=c.out_channels,
                                     kernel_size=c.kernel_size, stride=c.stride, padding=c.padding,
                                     dilation=c.dilation, groups=c.groups, bias=True)
        self.rbr_reparam.to(dtype=kernel.dtype, device=kernel.device)
        self.rbr_reparam.weight.data = kernel.detach()
        self.rbr_reparam.bias.data = bias.detach()
        for para in self.parameters():
            para.detach_()
        self.__delattr__('rbr_dense')
        self.__delattr__('rbr_1x1')
        if hasattr(self, 'rbr_identity'):
            self.__delattr__('rbr_identity')
        if hasattr(self, 'id_tensor'):
            self.__delattr__('id_tensor')
        self.deploy = True


class QARepVGGBlock(nn.Module):
    # QARepVGG S4 block, as defined for this project:
    #   rbr_dense    = conv_bn 3x3 (no bias), Sequential('conv', 'bn')
    #   rbr_1x1      = plain 1x1 conv, no BN, no bias   (state dict: rbr_1x1.weight)
    #   identity     = x itself, no BN, when in == out and stride == 1
    #   bn           = BatchNorm2d(out) after the sum
    #   out = ReLU(bn(dense(x) + conv1x1(x) + id))
    # Deploy: K = fold(3x3, its BN) + pad(K1) + I;  b = b3;  then fold `bn` into (K, b).

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1,
                 dilation=1, groups=1, padding_mode='zeros', deploy=False):
        super(QARepVGGBlock, self).__init__()
        self.deploy = deploy
        self.groups = groups
        self.in_channels = in_channels

        assert kernel_size == 3
        assert padding == 1
        padding_11 = padding - kernel_size // 2

        self.nonlinearity = nn.ReLU()

        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels=in_channels, out_channels=out_channels,
                                         kernel_size=kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, bias=True,
                                         padding_mode=padding_mode)
        else:
            self.rbr_dense = conv_bn(in_channels=in_channels, out_channels=out_channels,
                                     kernel_size=kernel_size, stride=stride, padding=padding,
                                     groups=groups)
            self.rbr_1x1 = nn.Conv2d(in_channels=in_channels, out_channels=out_channels,
                                     kernel_size=1, stride=stride, padding=padding_11,
                                     groups=groups, bias=False)
            self.has_identity = (out_channels == in_channels and stride == 1)
            self.bn = nn.BatchNorm2d(num_features=out_channels)

    def forward(self, inputs):
        if hasattr(self, 'rbr_reparam'):
            return self.nonlinearity(self.rbr_reparam(inputs))
        id_out = inputs if self.has_identity else 0
        return self.nonlinearity(self.bn(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out))

    def get_equivalent_kernel_bias(self):
        bn3 = self.rbr_dense.bn
        t3 = bn3.weight / (bn3.running_var + bn3.eps).sqrt()
        kernel = self.rbr_dense.conv.weight * t3.reshape(-1, 1, 1, 1)
        bias = bn3.bias - bn3.running_mean * t3
        kernel = kernel + F.pad(self.rbr_1x1.weight, [1, 1, 1, 1])
        if self.has_identity:
            kernel = kernel + identity_kernel(self.in_channels, self.groups,
                                              dtype=kernel.dtype, device=kernel.device)
        # fold the post-sum BN: bn(z) = (z - mean) * t + beta, z = K*x + b
        bn = self.bn
        t = bn.weight / (bn.running_var + bn.eps).sqrt()
        return kernel * t.reshape(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * t

    def switch_to_deploy(self):
        if hasattr(self, 'rbr_reparam'):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        c = self.rbr_dense.conv
        self.rbr_reparam = nn.Conv2d(in_channels=c.in_channels, out_channels=c.out_channels,
                                     kernel_size=c.kernel_size, stride=c.stride, padding=c.padding,
                                     dilation=c.dilation, groups=c.groups, bias=True)
        self.rbr_reparam.to(dtype=kernel.dtype, device=kernel.device)
        self.rbr_reparam.weight.data = kernel.detach()
        self.rbr_reparam.bias.data = bias.detach()
        for para in self.parameters():
            para.detach_()
        self.__delattr__('rbr_dense')
        self.__delattr__('rbr_1x1')
        self.__delattr__('bn')
        self.deploy = True


class ACBlock(nn.Module):
    # ACNet (Ding et al., ICCV 2019), the official acnet/acb.py ACBlock for kernel_size 3 and padding 1
    # (its crop 0), use_affine, no gamma init, line by line where it computes:
    #   square_conv 3x3 padding 1, ver_conv 3x1 padding (1, 0), hor_conv 1x3 padding (0, 1), all with the
    #   block's stride and groups and no bias; square_bn, ver_bn, hor_bn; out = square + ver + hor
    # Added for this project: the ReLU after the sum (a block of the plain nets, as RepVGGBlock; ACNet puts
    # its ACB before a ReLU in conv_bn_relu; relu=False leaves it out) and the deploy conv named rbr_reparam
    # (official: fused_conv).
    has_identity_branch = False

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1,
                 dilation=1, groups=1, padding_mode='zeros', deploy=False, relu=True):
        super(ACBlock, self).__init__()
        assert kernel_size == 3
        assert padding == 1
        # relu=False: the official ACB itself, a conv replacement (ResNet's conv2, whose ReLU follows the add)
        self.nonlinearity = nn.ReLU() if relu else nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels=in_channels, out_channels=out_channels,
                                         kernel_size=kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, bias=True,
                                         padding_mode=padding_mode)
            return
        self.square_conv = nn.Conv2d(in_channels=in_channels, out_channels=out_channels,
                                     kernel_size=(kernel_size, kernel_size), stride=stride,
                                     padding=padding, dilation=dilation, groups=groups, bias=False,
                                     padding_mode=padding_mode)
        self.square_bn = nn.BatchNorm2d(num_features=out_channels)
        # the 1xK and Kx1 sliding windows aligned with the KxK one's middle row and column (official)
        hor_padding = [padding - kernel_size // 2, padding]
        ver_padding = [padding, padding - kernel_size // 2]
        self.ver_conv = nn.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=(kernel_size, 1),
                                  stride=stride, padding=ver_padding, dilation=dilation, groups=groups,
                                  bias=False, padding_mode=padding_mode)
        self.hor_conv = nn.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=(1, kernel_size),
                                  stride=stride, padding=hor_padding, dilation=dilation, groups=groups,
                                  bias=False, padding_mode=padding_mode)
        self.ver_bn = nn.BatchNorm2d(num_features=out_channels)
        self.hor_bn = nn.BatchNorm2d(num_features=out_channels)

    def _fuse_bn_tensor(self, conv, bn):
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return conv.weight * t, bn.bias - bn.running_mean * bn.weight / std

    def _add_to_square_kernel(self, square_kernel, asym_kernel):
        asym_h = asym_kernel.size(2)
        asym_w = asym_kernel.size(3)
        square_h = square_kernel.size(2)
        square_w = square_kernel.size(3)
        square_kernel[:, :, square_h // 2 - asym_h // 2: square_h // 2 - asym_h // 2 + asym_h,
                      square_w // 2 - asym_w // 2: square_w // 2 - asym_w // 2 + asym_w] += asym_kernel

    def get_equivalent_kernel_bias(self):
        hor_k, hor_b = self._fuse_bn_tensor(self.hor_conv, self.hor_bn)
        ver_k, ver_b = self._fuse_bn_tensor(self.ver_conv, self.ver_bn)
        square_k, square_b = self._fuse_bn_tensor(self.square_conv, self.square_bn)
        self._add_to_square_kernel(square_k, hor_k)
        self._add_to_square_kernel(square_k, ver_k)
        return square_k, hor_b + ver_b + square_b

    def forward(self, inputs):
        if hasattr(self, 'rbr_reparam'):
            return self.nonlinearity(self.rbr_reparam(inputs))
        square_outputs = self.square_bn(self.square_conv(inputs))
        vertical_outputs = self.ver_bn(self.ver_conv(inputs))
        horizontal_outputs = self.hor_bn(self.hor_conv(inputs))
        return self.nonlinearity(square_outputs + vertical_outputs + horizontal_outputs)

    def switch_to_deploy(self):
        if hasattr(self, 'rbr_reparam'):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        c = self.square_conv
        self.rbr_reparam = nn.Conv2d(in_channels=c.in_channels, out_channels=c.out_channels,
                                     kernel_size=c.kernel_size, stride=c.stride, padding=c.padding,
                                     dilation=c.dilation, groups=c.groups, bias=True)
        self.rbr_reparam.to(dtype=kernel.dtype, device=kernel.device)
        self.rbr_reparam.weight.data = kernel.detach()
        self.rbr_reparam.bias.data = bias.detach()
        for para in self.parameters():
            para.detach_()
        for name in ('square_conv', 'square_bn', 'hor_conv', 'hor_bn', 'ver_conv', 'ver_bn'):
            self.__delattr__(name)


class OREPABlock(nn.Module):
    # OREPA (Hu et al., CVPR 2022), the official JUGGHM/OREPA_CVPR2022 blocks.py OREPA class for kernel_size 3
    # and padding 1 with its defaults (internal_channels_1x1_3x3 None, init_hyper_para = init_hyper_gamma = 1,
    # weight_only and single_init off), line by line where it computes: the same parameters, buffers and
    # init, fre_init, weight_gen, dwsc2full, get_equivalent_kernel_bias (transI_fusebn) and forward
    # (bn(conv(x, weight_gen()))).  Added for this project: the ReLU (official conv_bn_relu passes
    # nonlinear=nn.ReLU(); relu=False leaves it out) and the deploy conv named rbr_reparam (official:
    # orepa_reparam).
    has_identity_branch = False

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1,
                 dilation=1, groups=1, deploy=False, relu=True):
        super(OREPABlock, self).__init__()
        assert kernel_size == 3 and padding == 1
        # relu=False: official nonlinear=None (its default), nn.Identity (ResNet's conv2)
        self.nonlinear = nn.ReLU() if relu else nn.Identity()
        self.kernel_size, self.in_channels, self.out_channels = kernel_size, in_channels, out_channels
        self.groups, self.stride, self.padding, self.dilation = groups, stride, padding, dilation
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels=in_channels, out_channels=out_channels,
                                         kernel_size=kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, bias=True)
            return
        ig = int(in_channels / groups)
        self.weight_orepa_origin = nn.Parameter(torch.Tensor(out_channels, ig, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight_orepa_origin, a=0.0)
        self.weight_orepa_avg_conv = nn.Parameter(torch.Tensor(out_channels, ig, 1, 1))
        self.weight_orepa_pfir_conv = nn.Parameter(torch.Tensor(out_channels, ig, 1, 1))
        nn.init.kaiming_uniform_(self.weight_orepa_avg_conv, a=0.0)
        nn.init.kaiming_uniform_(self.weight_orepa_pfir_conv, a=0.0)
        self.register_buffer('weight_orepa_avg_avg',
                             torch.ones(kernel_size, kernel_size).mul(1.0 / kernel_size / kernel_size))
        self.weight_orepa_1x1 = nn.Parameter(torch.Tensor(out_channels, ig, 1, 1))
        nn.init.kaiming_uniform_(self.weight_orepa_1x1, a=0.0)
        internal = in_channels if groups <= 4 else 2 * in_channels
        self.weight_orepa_1x1_kxk_idconv1 = nn.Parameter(torch.zeros(internal, ig, 1, 1))
        id_value = np.zeros((internal, ig, 1, 1))
        for i in range(internal):
            id_value[i, i % ig, 0, 0] = 1
        self.register_buffer('id_tensor', torch.from_numpy(id_value).type_as(self.weight_orepa_1x1_kxk_idconv1))
        self.weight_orepa_1x1_kxk_conv2 = nn.Parameter(
            torch.Tensor(out_channels, int(internal / groups), kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight_orepa_1x1_kxk_conv2, a=0.0)
        expand_ratio = 8
        self.weight_orepa_gconv_dw = nn.Parameter(torch.Tensor(in_channels * expand_ratio, 1, kernel_size, kernel_size))
        self.weight_orepa_gconv_pw = nn.Parameter(torch.Tensor(out_channels, int(in_channels * expand_ratio / groups), 1, 1))
        nn.init.kaiming_uniform_(self.weight_orepa_gconv_dw, a=0.0)
        nn.init.kaiming_uniform_(self.weight_orepa_gconv_pw, a=0.0)
        self.vector = nn.Parameter(torch.Tensor(6, out_channels))
        self.bn = nn.BatchNorm2d(out_channels)
        self.fre_init()
        for row, value in enumerate((0.25, 0.25, 0.0, 0.5, 1.0, 0.5)):  # origin, avg, prior, 1x1_kxk, 1x1, dws
            nn.init.constant_(self.vector[row, :], value)

    def fre_init(self):
        prior_tensor = torch.Tensor(self.out_channels, self.kernel_size, self.kernel_size)
        half_fg = self.out_channels / 2
        for i in range(self.out_channels):
            for h in range(3):
                for w in range(3):
                    if i < half_fg:
                        prior_tensor[i, h, w] = math.cos(math.pi * (h + 0.5) * (i + 1) / 3)
                    else:
                        prior_tensor[i, h, w] = math.cos(math.pi * (w + 0.5) * (i + 1 - half_fg) / 3)
        self.register_buffer('weight_orepa_prior', prior_tensor)

    def weight_gen(self):
        weight_orepa_origin = torch.einsum('oihw,o->oihw', self.weight_orepa_origin, self.vector[0, :])
        weight_orepa_avg = torch.einsum('oihw,o->oihw', torch.einsum(
            'oi,hw->oihw', self.weight_orepa_avg_conv.squeeze(3).squeeze(2), self.weight_orepa_avg_avg),
            self.vector[1, :])
        weight_orepa_pfir = torch.einsum('oihw,o->oihw', torch.einsum(
            'oi,ohw->oihw', self.weight_orepa_pfir_conv.squeeze(3).squeeze(2), self.weight_orepa_prior),
            self.vector[2, :])
        conv1 = (self.weight_orepa_1x1_kxk_idconv1 + self.id_tensor).squeeze(3).squeeze(2)
        conv2 = self.weight_orepa_1x1_kxk_conv2
        if self.groups > 1:
            g = self.groups
            t, ig = conv1.size()
            o, tg, h, w = conv2.size()
            weight_orepa_1x1_kxk = torch.einsum('gti,gothw->goihw', conv1.view(g, int(t / g), ig),
                                                conv2.view(g, int(o / g), tg, h, w)).reshape(o, ig, h, w)
        else:
            weight_orepa_1x1_kxk = torch.einsum('ti,othw->oihw', conv1, conv2)
        weight_orepa_1x1_kxk = torch.einsum('oihw,o->oihw', weight_orepa_1x1_kxk, self.vector[3, :])
        weight_orepa_1x1 = torch.einsum('oihw,o->oihw', F.pad(self.weight_orepa_1x1, [1, 1, 1, 1]), self.vector[4, :])
        weight_orepa_gconv = self.dwsc2full(self.weight_orepa_gconv_dw, self.weight_orepa_gconv_pw,
                                            self.in_channels, self.groups)
        weight_orepa_gconv = torch.einsum('oihw,o->oihw', weight_orepa_gconv, self.vector[5, :])
        return (weight_orepa_origin + weight_orepa_avg + weight_orepa_1x1 + weight_orepa_1x1_kxk +
                weight_orepa_pfir + weight_orepa_gconv)

    def dwsc2full(self, weight_dw, weight_pw, groups, groups_conv=1):
        t, ig, h, w = weight_dw.size()
        o, _, _, _ = weight_pw.size()
        tg = int(t / groups)
        i = int(ig * groups)
        ogc = int(o / groups_conv)
        groups_gc = int(groups / groups_conv)
        weight_dw = weight_dw.view(groups_conv, groups_gc, tg, ig, h, w)
        weight_pw = weight_pw.squeeze().view(ogc, groups_conv, groups_gc, tg)
        weight_dsc = torch.einsum('cgtihw,ocgt->cogihw', weight_dw, weight_pw)
        return weight_dsc.reshape(o, int(i / groups_conv), h, w)

    def get_equivalent_kernel_bias(self):
        std = (self.bn.running_var + self.bn.eps).sqrt()
        t = (self.bn.weight / std).reshape(-1, 1, 1, 1)
        return self.weight_gen() * t, self.bn.bias - self.bn.running_mean * self.bn.weight / std

    def forward(self, inputs):
        if hasattr(self, 'rbr_reparam'):
            return self.nonlinear(self.rbr_reparam(inputs))
        out = F.conv2d(inputs, self.weight_gen(), bias=None, stride=self.stride, padding=self.padding,
                       dilation=self.dilation, groups=self.groups)
        return self.nonlinear(self.bn(out))

    def switch_to_deploy(self):
        if hasattr(self, 'rbr_reparam'):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        self.rbr_reparam = nn.Conv2d(in_channels=self.in_channels, out_channels=self.out_channels,
                                     kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, groups=self.groups, bias=True)
        self.rbr_reparam.to(dtype=kernel.dtype, device=kernel.device)
        self.rbr_reparam.weight.data = kernel.detach()
        self.rbr_reparam.bias.data = bias.detach()
        for para in self.parameters():
            para.detach_()
        for name in ('weight_orepa_origin', 'weight_orepa_1x1', 'weight_orepa_1x1_kxk_conv2',
                     'weight_orepa_1x1_kxk_idconv1', 'id_tensor', 'weight_orepa_avg_avg', 'weight_orepa_avg_conv',
                     'weight_orepa_pfir_conv', 'weight_orepa_prior', 'weight_orepa_gconv_dw',
                     'weight_orepa_gconv_pw', 'bn', 'vector'):
            self.__delattr__(name)


class RepVGG(nn.Module):
    # stage0: block 3 -> min(64, int(64 a)), stride `stage0_stride` (official: 2), layer index 0
    # stage1..4: int(64 a), int(128 a), int(256 a), int(512 b) wide, first block of each
    #   stride 2; layer indices 1, 2, ... in order; override_groups_map[idx] = groups
    # gap + linear(int(512 b) -> num_classes)

    def __init__(self, num_blocks, num_classes=1000, width_multiplier=None,
                 override_groups_map=None, deploy=False, block_cls=RepVGGBlock, stage0_stride=2):
        super(RepVGG, self).__init__()
        assert len(width_multiplier) == 4
        self.deploy = deploy
        self.override_groups_map = override_groups_map or dict()
        self.block_cls = block_cls
        assert 0 not in self.override_groups_map

        self.in_planes = min(64, int(64 * width_multiplier[0]))
        self.stage0 = block_cls(in_channels=3, out_channels=self.in_planes, kernel_size=3,
                                stride=stage0_stride, padding=1, deploy=self.deploy)
        self.cur_layer_idx = 1
        self.stage1 = self._make_stage(int(64 * width_multiplier[0]), num_blocks[0], stride=2)
        self.stage2 = self._make_stage(int(128 * width_multiplier[1]), num_blocks[1], stride=2)
        self.stage3 = self._make_stage(int(256 * width_multiplier[2]), num_blocks[2], stride=2)
        self.stage4 = self._make_stage(int(512 * width_multiplier[3]), num_blocks[3], stride=2)
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(int(512 * width_multiplier[3]), num_classes)

    def _make_stage(self, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        blocks = []
        for stride in strides:
            cur_groups = self.override_groups_map.get(self.cur_layer_idx, 1)
            blocks.append(self.block_cls(in_channels=self.in_planes, out_channels=planes,
                                         kernel_size=3, stride=stride, padding=1,
                                         groups=cur_groups, deploy=self.deploy))
            self.in_planes = planes
            self.cur_layer_idx += 1
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                out = block(out)
        out = self.gap(out)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


optional_groupwise_layers = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26]
g2_map = {l: 2 for l in optional_groupwise_layers}
g4_map = {l: 4 for l in optional_groupwise_layers}

# name -> (num_blocks, width_multiplier, override_groups_map), official list
_IMAGENET = {
    'a0':   ([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], None),
    'a1':   ([2, 4, 14, 1], [1, 1, 1, 2.5], None),
    'a2':   ([2, 4, 14, 1], [1.5, 1.5, 1.5, 2.75], None),
    'b0':   ([4, 6, 16, 1], [1, 1, 1, 2.5], None),
    'b1':   ([4, 6, 16, 1], [2, 2, 2, 4], None),
    'b1g2': ([4, 6, 16, 1], [2, 2, 2, 4], g2_map),
    'b1g4': ([4, 6, 16, 1], [2, 2, 2, 4], g4_map),
    'b2':   ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], None),
    'b2g2': ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], g2_map),
    'b2g4': ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], g4_map),
    'b3':   ([4, 6, 16, 1], [3, 3, 3, 5], None),
    'b3g2': ([4, 6, 16, 1], [3, 3, 3, 5], g2_map),
    'b3g4': ([4, 6, 16, 1], [3, 3, 3, 5], g4_map),
}


def cifar_width_multiplier(width=64):
    # every stage `width` channels wide: int(64 a) = int(128 a2) = ... = width
    return [width / 64, width / 128, width / 256, width / 512]


# name -> keyword arguments of RepVGG
BLOCKS = (('repvgg', RepVGGBlock), ('qarepvgg', QARepVGGBlock), ('acb', ACBlock), ('orepa', OREPABlock))
ARCHS = {}
for _k, (_nb, _wm, _gm) in _IMAGENET.items():
    for _prefix, _cls in BLOCKS:
        ARCHS[_prefix + '-' + _k] = dict(num_blocks=_nb, width_multiplier=_wm,
                                         override_groups_map=_gm, num_classes=1000,
                                         block_cls=_cls, stage0_stride=2)
# The OABN paper's CIFAR-10 model: stage0 block 3->64 stride 1, stages of 4, 8, 12, 1
# blocks all 64 wide (first block of each stride 2), 10 classes.
for _prefix, _cls in BLOCKS:
    ARCHS[_prefix + '-cifar'] = dict(num_blocks=[4, 8, 12, 1],
                                     width_multiplier=cifar_width_multiplier(64),
                                     override_groups_map=None, num_classes=10,
                                     block_cls=_cls, stage0_stride=1)

# input resolution the stats are taken at
ARCH_RESOLUTION = {name: (32 if name.endswith('-cifar') else 224) for name in ARCHS}


def create_model(name, deploy=False, **override):
    """Build an arch from ARCHS; keyword arguments override its entries (e.g. width_multiplier)."""
    kw = dict(ARCHS[name])
    kw.update(override)
    return RepVGG(deploy=deploy, **kw)


def repvgg_model_convert(model, do_copy=True):
    """Official whole-model conversion: switch_to_deploy on every block (on a copy)."""
    if do_copy:
        model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, 'switch_to_deploy'):
            module.switch_to_deploy()
    return model


def get_custom_L2(model):
    """Sum of get_custom_L2 over every RepVGGBlock of `model` (official train.py sums per block)."""
    total = 0
    for module in model.modules():
        if hasattr(module, 'get_custom_L2'):
            total = total + module.get_custom_L2()
    return total
