"""The official PyTorch structure (tests/reference/repvgg_torch.py) against scripts/convert_official.py and
our checkpoints; run by tests/test_interop.cpp.

    official_roundtrip.py make DIR          for each case in CASES: DIR/<case>.pth as the official code saves
                                            it, DIR/<case>.io.safetensors (input, the official eval logits), and
                                            DIR/<case>.safetensors converted by convert_official.py's main (in
                                            this process: one torch import)
    official_roundtrip.py archs             every arch, training and deploy form, under each wrapper: the
                                            converter infers arch and form and keeps the official names and
                                            shapes; and it refuses SE, QARepVGGBlockV1, wrong shapes, bad --arch
    official_roundtrip.py reverse CKPT IO   our checkpoint CKPT loads into the official model with
                                            load_state_dict(strict=True) and gives IO's logits on IO's input
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import convert_official as co  # noqa: E402  (it puts tests/reference on the path)
import repvgg_torch  # noqa: E402
from safetensors_io import load_file, load_metadata, save_file  # noqa: E402

# case -> (arch, deploy form, how the file wraps the state dict, input size)
CASES = {
    "a0_train": ("repvgg-a0", False, "plain", 64),
    "a0_deploy": ("repvgg-a0", True, "state_dict+module", 64),
    "qacifar_train": ("qarepvgg-cifar", False, "model", 32),
    "cifar_deploy": ("repvgg-cifar", True, "plain", 32),
}
WRAPPERS = ("plain", "state_dict+module", "model", "state_dict")


def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 1 + 0.3 * torch.randn(c, generator=gen)
            m.bias.data = 0.2 * torch.randn(c, generator=gen)
            m.running_mean.data = 0.2 * torch.randn(c, generator=gen)
            m.running_var.data = 0.5 + torch.rand(c, generator=gen)


def wrap(sd, how):
    if "module" in how:
        sd = {"module." + k: v for k, v in sd.items()}
    if how.startswith("state_dict"):
        return {"state_dict": sd, "epoch": 120}
    if how == "model":
        return {"model": sd, "optimizer": {}}
    return sd


def make(out_dir):
    for case, (arch, deploy, how, size) in CASES.items():
        torch.manual_seed(1)
        gen = torch.Generator().manual_seed(2)
        model = repvgg_torch.create_model(arch)
        randomize_bn(model, gen)
        model.eval()
        if deploy:
            model = repvgg_torch.repvgg_model_convert(model)
        x = torch.randn(2, 3, size, size, generator=gen)
        with torch.no_grad():
            logits = model(x)
        pth = os.path.join(out_dir, case + ".pth")
        torch.save(wrap(model.state_dict(), how), pth)
        save_file({"input": x, "logits": logits}, os.path.join(out_dir, case + ".io.safetensors"))
        print(f"{case}: official {arch} {'deploy' if deploy else 'train'} form, {how}, input {list(x.shape)}")
        co.main([pth, os.path.join(out_dir, case + ".safetensors")])


def meta_state_dict(arch, deploy):
    """The official model's state dict as shapes only (meta tensors): no memory, no time."""
    with co.no_init():
        model = repvgg_torch.create_model(arch, deploy=deploy)
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in model.state_dict().items()}


def expect_error(fn, text):
    try:
        fn()
    except co.ConvertError as e:
        assert text in str(e), f"error {e!r} does not say {text!r}"
        return
    raise AssertionError(f"no error; expected one saying {text!r}")


def archs():
    n = 0
    # the official RepVGG and QARepVGG archs (the acb-* and orepa-* ones: refused below)
    for i, arch in enumerate(a for a in repvgg_torch.ARCHS if not a.startswith(("acb-", "orepa-"))):
        for deploy in (False, True):
            sd = meta_state_dict(arch, deploy)
            tensors, got, classes, form = co.convert(wrap(sd, WRAPPERS[(2 * i + deploy) % 4]), arch + ".pth")
            want = "repvgg-" + arch.split("-", 1)[1] if deploy else arch
            assert (got, form, classes) == (want, "deploy" if deploy else "train", 10 if "cifar" in arch else 1000), \
                (arch, deploy, got, form, classes)
            assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in sd.items()}, arch
            # groups: layer 2 (stage1.1, in = out = the stage1 width) has kernels [width, width / groups, 3, 3]
            w = tensors["stage1.1.rbr_reparam.weight" if deploy else "stage1.1.rbr_dense.conv.weight"]
            assert w.shape[1] * (repvgg_torch.ARCHS[arch]["override_groups_map"] or {}).get(2, 1) == w.shape[0], arch
            n += 1
    assert co.convert(meta_state_dict("qarepvgg-b1g2", True), "x.pth", "qarepvgg-b1g2")[1] == "qarepvgg-b1g2"
    sd = meta_state_dict("repvgg-a0", False)
    one = sd["linear.bias"]
    expect_error(lambda: co.convert(dict(sd, **{"stage0.se.down.weight": one}), "se.pth"), "SE blocks")
    expect_error(lambda: co.convert(dict(sd, **{"stage0.bn.weight": one}), "v1.pth"), "QARepVGGBlockV1")
    expect_error(lambda: co.convert(meta_state_dict("acb-cifar", False), "acb.pth"), "ACNet ACB blocks")
    assert co.convert(meta_state_dict("acb-cifar", True), "x.pth", "acb-cifar")[1] == "acb-cifar"
    expect_error(lambda: co.convert(meta_state_dict("orepa-cifar", False), "orepa.pth"), "OREPA blocks")
    assert co.convert(meta_state_dict("orepa-cifar", True), "x.pth", "orepa-cifar")[1] == "orepa-cifar"
    expect_error(lambda: co.convert(sd, "a.pth", "repvgg-a1"), "not a train-form repvgg-a1")
    expect_error(lambda: co.convert(sd, "a.pth", "qarepvgg-a0"), "holds repvgg blocks but --arch is qarepvgg-a0")
    expect_error(lambda: co.convert(sd, "a.pth", "repvgg-z9"), "--arch repvgg-z9: not one of")
    bad = dict(sd, **{"stage2.0.rbr_dense.conv.weight": torch.empty(1, 2, 3, 3, device="meta")})
    expect_error(lambda: co.convert(bad, "a.pth", "repvgg-a0"), "wrong shape ['stage2.0.rbr_dense.conv.weight (1, 2, 3, 3)")
    expect_error(lambda: co.convert({"w": 3}, "odd.pth"), "expected a state dict of tensors")
    try:
        co.main(["/nonexistent.pth", "/nonexistent.safetensors"])
        raise AssertionError("no error for a missing file")
    except SystemExit as e:
        assert "/nonexistent.pth: no such file" in str(e), e
    print(f"archs: {n} arch/form pairs convert with the official names and shapes, arch and form inferred; 10 refusals")


def reverse(ckpt, io):
    sd = load_file(ckpt)
    meta = load_metadata(ckpt)
    deploy = any("rbr_reparam" in k for k in sd)
    model = repvgg_torch.create_model(meta["arch"], deploy=deploy, num_classes=sd["linear.weight"].shape[0])
    model.load_state_dict(sd, strict=True)
    model.eval()
    t = load_file(io)
    with torch.no_grad():
        logits = model(t["input"])
    rel = float((logits - t["logits"]).abs().max() / t["logits"].abs().max())
    print(f"reverse: our {meta['arch']} ({'deploy' if deploy else 'train'} form) loads with strict=True into the "
          f"official model; max relative logit difference {rel:.3g}")
    if rel > 1e-4:
        sys.exit("FAIL: relative difference above 1e-4")


if __name__ == "__main__":
    commands = {"make": make, "archs": archs, "reverse": reverse}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} make DIR | archs | reverse CKPT IO")
    commands[sys.argv[1]](*sys.argv[2:])
