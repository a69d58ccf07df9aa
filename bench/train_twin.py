#!/usr/bin/env python3
"""PyTorch twin of `./train cifar10`, for an accuracy comparison with the engine.

Oracle and peer only: the engine never depends on PyTorch. Run with Debian's python3-torch (1.13, CPU):

    /usr/bin/python3 bench/train_twin.py --data ../shared/data/cifar-10-batches-bin \
        --limit-train 25000 --epochs 4 --tmax 4 [--oabn-k 3] --json twin.json

Recipe (the same as ./train cifar10):
  - model: tests/reference/repvgg_torch.py (official RepVGG port), arch `repvgg-cifar` by default,
    PyTorch default init (Conv2d/Linear Kaiming-uniform a=sqrt(5), BN gamma 1 beta 0) under --seed;
  - SGD lr 0.1, momentum 0.9, weight decay 1e-4 as plain L2 on ALL parameters (SGD weight_decay);
  - CosineAnnealingLR(T_max = --tmax epochs), stepped once per epoch; cross-entropy; batch 128;
    training shuffles every epoch and drops the last partial batch; eval keeps every image;
  - train augmentation: random 32 x 32 crop of the image zero-padded by 4 (padding is pixel value 0,
    before normalization, as torchvision RandomCrop(32, padding=4) on a uint8 image), random
    horizontal flip p = 0.5, then v / 255 and normalization by CIFAR_MEAN / CIFAR_STD;
    eval: normalization only. Plain tensor ops, no torchvision;
  - OABN (--oabn-k K): every identity-branch BN (rbr_identity) uses gamma clipped to
    [-K running_var, K running_var] (running_var from before the forward's update), straight-through
    to the unclipped gamma; the same clip in eval. See OABatchNorm2d.

Data: CIFAR-10 binary layout (data_batch_1..5.bin, test_batch.bin; records of 1 label byte and
3072 bytes of R, G, B planes, 32 x 32). --limit-train N keeps N evenly spread records of
data_batch_1..5 read in that order (record floor(i * 50000 / N)), as ./train does; --limit-val N the same
of test_batch.bin, which is sorted by class in the shared copy.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'reference'))
import repvgg_torch  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
RECORD = 1 + 3 * 32 * 32


# ---------------------------------------------------------------------------------------------
# OABN: outlier-aware BN on the identity branch

class OABatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose gamma is clipped to [-k running_var, k running_var] in the forward.

    running_var is the one from before this forward's update. Straight-through: the gradient of the
    clipped gamma is passed unchanged to the unclipped gamma, clipped channels included:
        g = gamma + (clamp(gamma, -k rv, k rv) - gamma).detach()
    Eval mode applies the same clip. The state dict is that of nn.BatchNorm2d.
    """

    def __init__(self, num_features, k, **kw):
        super().__init__(num_features, **kw)
        self.k = float(k)

    def clipped_weight(self):
        bound = self.k * self.running_var          # tensor; the forward below updates running_var in place,
        lo = -bound                                # but bound / lo are new tensors taken before that
        clipped = torch.max(torch.min(self.weight, bound), lo)
        return self.weight + (clipped - self.weight).detach()

    def forward(self, x):
        g = self.clipped_weight()
        # nn.BatchNorm2d.forward's bookkeeping (momentum 0.1 fixed, track_running_stats True)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
        else:
            momentum = 0.0
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean, self.running_var, g, self.bias,
                            use_batch_stats, momentum, self.eps)


def apply_oabn(model, k):
    """Replaces every identity-branch BN (RepVGGBlock.rbr_identity) by an OABatchNorm2d with the same
    state. Call before the optimizer is built. Returns the number of BNs replaced."""
    n = 0
    for m in model.modules():
        bn = getattr(m, 'rbr_identity', None)
        if isinstance(bn, nn.BatchNorm2d) and not isinstance(bn, OABatchNorm2d):
            ob = OABatchNorm2d(bn.num_features, k, eps=bn.eps, momentum=bn.momentum)
            ob.to(device=bn.weight.device, dtype=bn.weight.dtype)
            ob.load_state_dict(bn.state_dict())
            ob.train(bn.training)
            m.rbr_identity = ob
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Data

def read_cifar(paths, limit=0):
    """Records of the files in order; with `limit`, the evenly spread subset floor(i * size / limit) that
    ./train keeps (datasets/dataset.h spread_subset). -> (uint8 [N,3,32,32], int64 [N])."""
    chunks = []
    for p in paths:
        raw = np.fromfile(p, dtype=np.uint8)
        if raw.size % RECORD:
            raise SystemExit(f'{p}: size {raw.size} is not a multiple of {RECORD}')
        chunks.append(raw.reshape(-1, RECORD))
    raw = np.concatenate(chunks)
    if limit and limit < raw.shape[0]:
        raw = raw[(np.arange(limit, dtype=np.int64) * raw.shape[0]) // limit]
    labels = raw[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise SystemExit(f'label {labels.max()} out of range 0-9 in {paths}')
    images = raw[:, 1:].reshape(-1, 3, 32, 32)
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


class Normalizer:
    def __init__(self):
        self.mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def __call__(self, u8):
        # uint8 [B,3,H,W] -> float32, (v / 255 - mean) / std
        return (u8.float() / 255.0 - self.mean) / self.std


def augment(u8, gen):
    """Random 32x32 crop of the image zero-padded by 4 (offsets top, left in [0, 8]) and a horizontal
    flip with p = 0.5, as one gather. uint8 [B,3,32,32] -> uint8 [B,3,32,32] (padding = pixel 0)."""
    B = u8.shape[0]
    padded = F.pad(u8, (4, 4, 4, 4))                              # [B,3,40,40], zeros
    top = torch.randint(0, 9, (B,), generator=gen)
    left = torch.randint(0, 9, (B,), generator=gen)
    flip = torch.rand(B, generator=gen) < 0.5
    ar = torch.arange(32)
    rows = top[:, None] + ar[None, :]                             # [B,32]
    cols = left[:, None] + torch.where(flip[:, None], 31 - ar[None, :], ar[None, :])   # [B,32]
    b = torch.arange(B)[:, None, None, None]
    c = torch.arange(3)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


# ---------------------------------------------------------------------------------------------
# Train / eval

def train_epoch(model, opt, images, labels, batch_size, norm, gen):
    model.train()
    n = images.shape[0]
    perm = torch.randperm(n, generator=gen)
    nb = n // batch_size                                          # drop the last partial batch
    loss_sum, correct, seen = 0.0, 0, 0
    for i in range(nb):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        x = norm(augment(images[idx], gen))
        y = labels[idx]
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * y.numel()
        correct += (out.argmax(1) == y).sum().item()
        seen += y.numel()
        if not math.isfinite(loss.item()):
            raise SystemExit(f'non-finite loss at batch {i}')
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


@torch.no_grad()
def evaluate(model, images, labels, batch_size, norm):
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, images.shape[0], batch_size):
        x = norm(images[i:i + batch_size])
        y = labels[i:i + batch_size]
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction='sum').item()
        correct += (out.argmax(1) == y).sum().item()
    n = max(images.shape[0], 1)
    return loss_sum / n, 100.0 * correct / n


def main():
    ap = argparse.ArgumentParser(description='PyTorch twin of ./train cifar10 (accuracy comparison).')
    ap.add_argument('--data', required=True, help='CIFAR-10 binary folder (data_batch_1..5.bin, test_batch.bin)')
    ap.add_argument('--limit-train', type=int, default=0, help='N evenly spread training images (0: all)')
    ap.add_argument('--limit-val', type=int, default=0, help='N evenly spread test images (0: all)')
    ap.add_argument('--epochs', type=int, default=450)
    ap.add_argument('--tmax', type=int, default=0, help='cosine T_max in epochs (default: --epochs)')
    ap.add_argument('--batch-size', type=int, default=128)
    ap.add_argument('--lr', type=float, default=0.1)
    ap.add_argument('--momentum', type=float, default=0.9)
    ap.add_argument('--wd', type=float, default=1e-4, help='plain L2 on all parameters (SGD weight_decay)')
    ap.add_argument('--oabn-k', type=float, default=0.0, help='OABN clip on the identity BNs (0: off)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--arch', default='repvgg-cifar', choices=sorted(a for a in repvgg_torch.ARCHS if a.endswith('-cifar')))
    ap.add_argument('--json', default='', help='write the config and per-epoch rows here')
    args = ap.parse_args()
    tmax = args.tmax or args.epochs

    torch.set_num_threads(args.threads)
    paths = [os.path.join(args.data, f'data_batch_{b}.bin') for b in range(1, 6)]
    for p in paths + [os.path.join(args.data, 'test_batch.bin')]:
        if not os.path.exists(p):
            raise SystemExit(f'missing {p}')
    tr_x, tr_y = read_cifar(paths, args.limit_train)
    va_x, va_y = read_cifar([os.path.join(args.data, 'test_batch.bin')], args.limit_val)

    torch.manual_seed(args.seed)
    model = repvgg_torch.create_model(args.arch)
    n_oabn = 0
    if args.oabn_k > 0:
        if args.arch.startswith('qarepvgg'):
            raise SystemExit('--oabn-k: qarepvgg blocks have no identity BN')
        n_oabn = apply_oabn(model, args.oabn_k)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tmax)
    gen = torch.Generator().manual_seed(args.seed)   # shuffling and augmentation
    norm = Normalizer()

    config = dict(vars(args), tmax=tmax, train_images=int(tr_x.shape[0]), val_images=int(va_x.shape[0]),
                  params=n_params, oabn_bns=n_oabn, torch_version=torch.__version__,
                  steps_per_epoch=int(tr_x.shape[0]) // args.batch_size)
    print(f'twin {args.arch}: {n_params} params, train {tr_x.shape[0]} val {va_x.shape[0]}, '
          f'epochs {args.epochs} tmax {tmax}, batch {args.batch_size}, lr {args.lr}, wd {args.wd}, '
          f'oabn_k {args.oabn_k or "off"} ({n_oabn} identity BNs), seed {args.seed}, threads {args.threads}',
          flush=True)

    for name, y in (('train', tr_y), ('val', va_y)):
        hist = torch.bincount(y, minlength=10).tolist()
        print(f'twin {name} labels per class: {hist}', flush=True)
        if min(hist) == 0:
            print(f'twin WARNING: the {name} subset lacks classes (the record order of some copies is '
                  f'sorted by label; the first N records are not a class-balanced sample)', flush=True)

    rows = []
    header = f'{"epoch":>5} {"lr":>10} {"train_loss":>10} {"train_top1":>10} {"test_loss":>10} {"test_top1":>9} {"seconds":>8}'
    print(header, flush=True)
    for epoch in range(1, args.epochs + 1):
        lr = opt.param_groups[0]['lr']
        t0 = time.perf_counter()
        tr_loss, tr_top1 = train_epoch(model, opt, tr_x, tr_y, args.batch_size, norm, gen)
        t1 = time.perf_counter()
        te_loss, te_top1 = evaluate(model, va_x, va_y, 256, norm)
        t2 = time.perf_counter()
        sched.step()
        row = dict(epoch=epoch, lr=lr, train_loss=tr_loss, train_top1=tr_top1, test_loss=te_loss,
                   test_top1=te_top1, seconds=t2 - t0, train_seconds=t1 - t0)
        rows.append(row)
        line = (f'{epoch:>5} {lr:>10.6f} {tr_loss:>10.4f} {tr_top1:>10.2f} {te_loss:>10.4f} '
                f'{te_top1:>9.2f} {t2 - t0:>8.1f}')
        print(line, flush=True)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(config=config, rows=rows), f, indent=1)

    final = rows[-1]['test_top1'] if rows else float('nan')
    print('\nper-epoch table')
    print(header)
    for r in rows:
        print(f'{r["epoch"]:>5} {r["lr"]:>10.6f} {r["train_loss"]:>10.4f} {r["train_top1"]:>10.2f} '
              f'{r["test_loss"]:>10.4f} {r["test_top1"]:>9.2f} {r["seconds"]:>8.1f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=config, rows=rows, final_test_top1=final), f, indent=1)
    print(f'twin final test_top1={final:.2f}')


if __name__ == '__main__':
    main()
