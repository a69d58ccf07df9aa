"""PyTorch twin of the engine's ResNet-18 (models/resnet.h): torchvision's ResNet and BasicBlock
(torchvision/models/resnet.py, v0.14, layers [2, 2, 2, 2]; written out here, torchvision is not installed)
with each conv and its BN one block of the arch's type, as the engine builds it:

    plain   ConvBNBlock below: torchvision's conv and BN, state-dict names `conv.*`, `bn.*`
    acb     repvgg_torch.ACBlock (ACNet's 3x3 + 1x3 + 3x1, each with a BN)
    orepa   repvgg_torch.OREPABlock (OREPA's six linear branches merged online, one BN)

Names (the engine's, models/resnet.h): `conv1` the stem block (torchvision's conv1 + bn1 + relu),
`layer{s}.{i}.conv1` (conv1 + bn1 + relu), `layer{s}.{i}.conv2` (conv2 + bn2, no ReLU: it follows the add),
`layer{s}.{i}.downsample` (torchvision's Sequential(conv1x1, bn), no ReLU, always plain), `fc`.  The
ImageNet stem is a plain 7x7 stride-2 block and max_pool(3, 2, 1); the CIFAR stem a 3x3 stride-1 block of
the arch's type and no pool.  `-wN` makes the base width N instead of 64 (stages N, 2N, 4N, 8N).

Departures from torchvision, none of which changes a number: each ReLU is its own module and not in
place (the reference scripts hook every nn.ReLU's input; torchvision shares one inplace ReLU per
BasicBlock), and `out = out + identity` for its `out += identity`.  The init is torchvision's
(kaiming_normal_ fan_out on every nn.Conv2d, ACB's included; BNs 1, 0); OREPA's own parameters are not
nn.Conv2d and keep OREPA's init.  The reference files overwrite every value anyway.

Deploy: repvgg_torch.repvgg_model_convert (switch_to_deploy on every block): each block becomes
`rbr_reparam`, one conv with bias, its BN(s) folded with the running statistics.

Run with /usr/bin/python3 (Debian's python3-torch, 1.13, CPU).
"""
import os
import re
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import repvgg_torch as R  # noqa: E402


class ConvBNBlock(nn.Module):
    # torchvision's conv (k x k, padding k // 2, no bias) and its BN as one block, the engine's
    # layers::ConvBNBlock: out = ReLU(bn(conv(x))), the ReLU left out where relu is False.
    # Deploy: rbr_reparam, the conv with the BN folded in (RepVGG _fuse_bn_tensor), bias on.
    has_identity_branch = False

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, groups=1,
                 deploy=False, relu=True):
        super(ConvBNBlock, self).__init__()
        padding = kernel_size // 2 if padding is None else padding
        assert padding == kernel_size // 2
        self.nonlinearity = nn.ReLU() if relu else nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                         groups=groups, bias=True)
            return
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, inputs):
        if hasattr(self, 'rbr_reparam'):
            return self.nonlinearity(self.rbr_reparam(inputs))
        return self.nonlinearity(self.bn(self.conv(inputs)))

    def get_equivalent_kernel_bias(self):
        std = (self.bn.running_var + self.bn.eps).sqrt()
        t = (self.bn.weight / std).reshape(-1, 1, 1, 1)
        return self.conv.weight * t, self.bn.bias - self.bn.running_mean * self.bn.weight / std

    def switch_to_deploy(self):
        if hasattr(self, 'rbr_reparam'):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        c = self.conv
        self.rbr_reparam = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, stride=c.stride,
                                     padding=c.padding, groups=c.groups, bias=True)
        self.rbr_reparam.to(dtype=kernel.dtype, device=kernel.device)
        self.rbr_reparam.weight.data = kernel.detach()
        self.rbr_reparam.bias.data = bias.detach()
        for para in self.parameters():
            para.detach_()
        self.__delattr__('conv')
        self.__delattr__('bn')


def conv3x3_bn(block_cls, in_planes, out_planes, stride=1, relu=True, deploy=False):
    # torchvision's conv3x3 (padding 1, no bias) with its BN, as a block of the arch's type
    return block_cls(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, deploy=deploy, relu=relu)


def conv1x1_bn(in_planes, out_planes, stride=1, deploy=False):
    # torchvision's downsample: Sequential(conv1x1(in, out, stride), norm_layer(out)), no ReLU
    return ConvBNBlock(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, deploy=deploy, relu=False)


class BasicBlock(nn.Module):
    # torchvision's BasicBlock: out = relu(bn2(conv2(relu(bn1(conv1(x))))) + identity), identity = x or
    # downsample(x); conv1 with bn1 and its ReLU is the block `conv1`, conv2 with bn2 the block `conv2`.
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, block_cls=ConvBNBlock, deploy=False):
        super(BasicBlock, self).__init__()
        self.conv1 = conv3x3_bn(block_cls, inplanes, planes, stride, relu=True, deploy=deploy)
        self.conv2 = conv3x3_bn(block_cls, planes, planes, relu=False, deploy=deploy)
        self.downsample = downsample
        self.relu = nn.ReLU()
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.conv2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    # torchvision's ResNet with BasicBlock: conv1 (7x7 stride 2, plain) + max_pool(3, 2, 1) for ImageNet,
    # or a 3x3 stride-1 block of the arch's type and no pool for CIFAR; layer1..4 `width`, 2, 4, 8 x `width`
    # wide, the first block of layers 2..4 stride 2 with a 1x1 downsample; avgpool, flatten, fc.

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, width=64, block_cls=ConvBNBlock, cifar=False,
                 deploy=False):
        super(ResNet, self).__init__()
        self.block_cls, self.deploy = block_cls, deploy
        self.inplanes = width
        if cifar:
            self.conv1 = conv3x3_bn(block_cls, 3, self.inplanes, stride=1, deploy=deploy)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = ConvBNBlock(3, self.inplanes, kernel_size=7, stride=2, padding=3, deploy=deploy)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * BasicBlock.expansion, num_classes)
        for m in self.modules():   # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = conv1x1_bn(self.inplanes, planes * BasicBlock.expansion, stride, deploy=self.deploy)
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, self.block_cls, self.deploy)]
        self.inplanes = planes * BasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes, block_cls=self.block_cls, deploy=self.deploy))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


# The archs of models::arch_names() (models/arch.cpp), name -> keyword arguments of ResNet
BLOCKS = (('', ConvBNBlock), ('acb-', R.ACBlock), ('orepa-', R.OREPABlock))
ARCHS = {}
for _prefix, _cls in BLOCKS:
    ARCHS[_prefix + 'resnet18'] = dict(block_cls=_cls, cifar=False, num_classes=1000)
    ARCHS[_prefix + 'resnet18-cifar'] = dict(block_cls=_cls, cifar=True, num_classes=10)
ARCH_RESOLUTION = {name: (32 if name.endswith('-cifar') else 224) for name in ARCHS}

_NAME = re.compile(r'^((?:acb-|orepa-)?resnet18(?:-cifar)?)(?:-w([1-9][0-9]{0,3}))?$')


def arch_kwargs(name):
    """Keyword arguments of ResNet for an arch name, its `-wN` width suffix included
    (e.g. 'acb-resnet18-cifar-w8': ACB blocks, CIFAR stem, stages 8, 16, 32, 64 wide)."""
    m = _NAME.match(name)
    if not m or m.group(1) not in ARCHS:
        raise KeyError('unknown ResNet arch %r; known: %s, each also with -wN' % (name, ', '.join(ARCHS)))
    return dict(ARCHS[m.group(1)], width=int(m.group(2) or 64))


def create_model(name, deploy=False, **override):
    """Build an arch by name ('resnet18', 'orepa-resnet18-cifar-w8', ...); keyword arguments override
    its entries (e.g. num_classes)."""
    kw = arch_kwargs(name)
    kw.update(override)
    return ResNet(deploy=deploy, **kw)
