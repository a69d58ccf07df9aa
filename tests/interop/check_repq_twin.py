"""The RepQ twin's merged mode (tests/reference/repq_torch.py) against the branch form it merges; run by
tests/test_acb.cpp.

    check_repq_twin.py

With RepQ-BN's batch-statistics fold and no quantizers, a merged block is the same function as its branches in
training: conv(x, Σ W_i t_i) + Σ (β_i − μ_i t_i) = Σ BN_i(x ∗ W_i) (layers/bn_fold.h), and with the running
statistics in eval. Checked in float64 for QBlock on a RepVGGBlock and QACBlock on an ACBlock (8->8 stride 1,
8->16 stride 2 groups 2): the training output, the gradients of the input and of every parameter, the running
statistics after the step, the eval output and the deployed block's; and for the whole acb-cifar and
repvgg-cifar nets (width 16) after set_qat(model, 'repq-bn', 4) with the quantizers taken out. Then every
set_qat method runs one training step of acb-cifar with its 4-bit quantizers (a finite loss, a finite gradient
for every parameter that requires one; 'merged' notes the ones that do not). Prints the largest relative
error of each check (max |a - b| / max |b|); exits 1 when one is above 1e-10.
"""
import copy
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import repq_torch as Q  # noqa: E402
import repvgg_torch as R  # noqa: E402

TOL = 1e-10
failures = []


def rel_err(a, b):
    scale = max(b.abs().max().item(), 1e-30)
    return (a - b).abs().max().item() / scale


def report(what, errors):
    """errors: name -> relative error; prints the largest"""
    name, e = max(errors.items(), key=lambda kv: kv[1])
    ok = e <= TOL
    print(f"{'ok  ' if ok else 'FAIL'} {what}: max relative error {e:.1e} ({name}; {len(errors)} tensors)")
    if not ok:
        failures.append(what)


def randomize_bn(module, seed):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(0.2 * torch.randn(c, generator=g, dtype=m.bias.dtype))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=m.running_var.dtype))


def train_step(net, x, w):
    """training output, loss sum(out * w) backward: out, input grad, {param name: grad}, {buffer name: value}"""
    x = x.clone().requires_grad_(True)
    out = net.train()(x)
    (out * w).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers() if not n.endswith("num_batches_tracked")}
    return out.detach(), x.grad, grads, buffers


def compare_step(what, branches, merged, x, w):
    ob, gb, pb, bb = train_step(branches, x, w)
    om, gm, pm, bm = train_step(merged, x, w)
    assert pb.keys() == pm.keys(), (sorted(pb), sorted(pm))
    assert bb.keys() == bm.keys(), (sorted(bb), sorted(bm))
    errors = {"out_train": rel_err(om, ob), "grad.input": rel_err(gm, gb)}
    errors.update({"grad." + n: rel_err(pm[n], pb[n]) for n in pb})
    errors.update({"after." + n: rel_err(bm[n], bb[n]) for n in bb})
    report(what + ", training step (batch statistics)", errors)
    with torch.no_grad():
        report(what + ", eval (running statistics)", {"out_eval": rel_err(merged.eval()(x), branches.eval()(x))})


def check_block(block_cls, qblock_cls, in_c, out_c, stride, groups, hw, seed):
    torch.manual_seed(seed)
    blk = block_cls(in_c, out_c, kernel_size=3, stride=stride, padding=1, groups=groups).double()
    randomize_bn(blk, seed + 1)
    x = torch.relu(torch.randn(2, in_c, hw, hw, dtype=torch.float64) + 0.3)
    o = (hw - 1) // stride + 1
    w = torch.randn(2, out_c, o, o, dtype=torch.float64)
    what = f"{block_cls.__name__} {in_c}->{out_c} stride {stride} groups {groups}, {qblock_cls.__name__} 'batch'"
    assert Q.qblock_class(blk) is qblock_cls
    compare_step(what, copy.deepcopy(blk), qblock_cls(copy.deepcopy(blk), "batch"), x, w)
    deployed = copy.deepcopy(blk).eval()
    deployed.switch_to_deploy()
    with torch.no_grad():
        report(f"{block_cls.__name__} {in_c}->{out_c} stride {stride} groups {groups}, {qblock_cls.__name__} deployed",
               {"out_eval": rel_err(qblock_cls(deployed, None).eval()(x), blk.eval()(x))})


def drop_quantizers(model):
    for m in model.modules():
        if isinstance(m, Q.QBlock):
            m.act_quant = m.weight_quant = None
    return model


def check_model(arch, seed):
    torch.manual_seed(seed)
    model = R.create_model(arch, width_multiplier=R.cifar_width_multiplier(16)).double()
    randomize_bn(model, seed + 1)
    merged = drop_quantizers(Q.set_qat(copy.deepcopy(model), "repq-bn", 4))
    n = sum(isinstance(m, Q.QBlock) for m in merged.modules())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    w = torch.randn(4, 10, dtype=torch.float64)
    compare_step(f"{arch} (width 16) after set_qat repq-bn, quantizers out ({n} merged blocks)", model, merged, x, w)


def check_methods(arch, seed):
    """each set_qat method: one training step with 4-bit quantizers, finite loss, every parameter a finite gradient"""
    for method in Q.METHODS:
        torch.manual_seed(seed)
        model = Q.set_qat(R.create_model(arch, width_multiplier=R.cifar_width_multiplier(16)), method, 4)
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        with torch.no_grad():
            model.train()(x)  # the steps' init
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        named = list(model.named_parameters())
        # 'merged': repvgg_torch's switch_to_deploy (the official code's) ends with detach_() on every parameter
        # of the block, its new rbr_reparam included; set_qat gives them their gradients back, as the engine trains
        # the deploy convs' weights: no parameter may be frozen
        frozen = [n for n, p in named if not p.requires_grad]
        bad = [n for n, p in named if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
        steps = sum(n.endswith(".step") for n, _ in named)
        ok = torch.isfinite(loss).item() and not bad and not frozen
        note = f"; {len(frozen)} parameters frozen (requires_grad False)" if frozen else ""
        print(f"{'ok  ' if ok else 'FAIL'} {arch} (width 16) set_qat {method}, 4 bits: one step, loss {loss.item():.3f}, "
              f"{steps} LSQ steps, trainable parameters without a finite gradient: {bad or 'none'}{note}")
        if not ok:
            failures.append(f"{arch} {method}")


def main():
    for block_cls, qblock_cls in ((R.ACBlock, Q.QACBlock), (R.RepVGGBlock, Q.QBlock)):
        check_block(block_cls, qblock_cls, 8, 8, 1, 1, 7, 11)
        check_block(block_cls, qblock_cls, 8, 16, 2, 2, 9, 12)
    check_model("acb-cifar", 13)
    check_model("repvgg-cifar", 14)
    check_methods("acb-cifar", 15)
    try:
        Q.set_qat(R.create_model("orepa-cifar", width_multiplier=R.cifar_width_multiplier(16)), "repq-bn", 4)
        print("FAIL set_qat took a model of OREPA blocks, which it does not twin")
        failures.append("orepa refused")
    except TypeError as e:
        print(f"ok   set_qat refuses a model of OREPA blocks: {e}")
    if failures:
        print("check_repq_twin: FAILED: " + "; ".join(failures))
        sys.exit(1)
    print("check_repq_twin: all checks passed")


if __name__ == "__main__":
    main()
