"""Official RepVGG / QARepVGG PyTorch checkpoints -> our safetensors checkpoints.

    /usr/bin/python3 scripts/convert_official.py X.pth OUT.safetensors [--arch NAME] [--dataset imagenet|cifar10]

Reads (Debian's python3-torch; the engine never depends on it):
  - DingXiaoH/RepVGG training-form files (`RepVGG-A0-train.pth`: rbr_dense / rbr_1x1 / rbr_identity) and
    deploy-form files (`rbr_reparam` only, as `convert.py` writes them);
  - QARepVGG (cxxgtxy/QARepVGG QARepVGGBlockV2, YOLOv6 QARepVGGBlock) training-form files: rbr_dense.conv/bn,
    rbr_1x1.weight (a plain 1x1 conv), bn (after the sum); the identity has no state;
  - a plain state dict, or one under 'state_dict' / 'model', with or without DataParallel's `module.`.
Our names are the official ones (layers/repvgg_block.h), so the keys are kept; what this checks is that
the file is one of our archs, tensor for tensor. Writes every floating tensor as F32, each
`num_batches_tracked` as I64, and metadata `arch`, `num_classes`, `dataset`, `form`, `converted_from`.

The arch is --arch, else inferred from the shapes: blocks per stage, stage widths, groups of layer 2.
A deploy-form file does not say whether it was RepVGG or QARepVGG (both are one 3x3 conv per block);
it is named repvgg-* unless --arch says qarepvgg-*: the deploy models are the same either way.
Not convertible (refused with the reason): SE blocks (use_se), QARepVGGBlockV1 (a BN on the 1x1 branch),
training-form ACB models (our acb-* archs: no official checkpoint has that layout), training-form OREPA
models (our orepa-* archs; the OREPA_CVPR2022 code's RepVGG with CONV_BN_IMPL 'OREPA' uses the same tensor
names, but no official checkpoint of it was at hand to check a conversion against).
YOLOv6's QARepVGGBlockV2 adds a parameter-free avg-pool branch that no key shows: do not convert those.

The official structure is tests/reference/repvgg_torch.py (a port of DingXiaoH/RepVGG repvgg.py).
"""
import argparse
import contextlib
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import repvgg_torch  # noqa: E402
from safetensors_io import save_file  # noqa: E402


class ConvertError(Exception):
    pass


def unwrap(obj, path):
    """The state dict of a loaded .pth: itself, or under 'state_dict' / 'model'; `module.` removed."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConvertError(f"{path}: expected a state dict of tensors (or one under 'state_dict' or 'model'), "
                           f"got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def form_and_block(sd, path):
    """('train' | 'deploy', 'repvgg' | 'qarepvgg' | None) from the key names."""
    if any(".se." in k or k.startswith("se.") for k in sd):
        raise ConvertError(f"{path}: has SE blocks ('se.' keys, use_se=True); our models have none")
    if "stage0.rbr_reparam.weight" in sd:
        return "deploy", None
    if "stage0.rbr_1x1.conv.weight" in sd:
        if "stage0.bn.weight" in sd:
            raise ConvertError(f"{path}: QARepVGGBlockV1 (a BN on the 1x1 branch and one after the sum); "
                               "only RepVGG and QARepVGGBlockV2 are convertible")
        return "train", "repvgg"
    if "stage0.rbr_1x1.weight" in sd and "stage0.bn.weight" in sd:
        return "train", "qarepvgg"
    if "stage0.weight_orepa_origin" in sd:
        raise ConvertError(f"{path}: OREPA blocks (weight_orepa_origin, ..., vector): only official RepVGG and "
                           "QARepVGG checkpoints are convertible (an orepa-* deploy-form file in our names converts "
                           "as repvgg-*, or with --arch orepa-*)")
    if "stage0.square_conv.weight" in sd:
        raise ConvertError(f"{path}: ACNet ACB blocks (square_conv, hor_conv, ver_conv): only official RepVGG and "
                           "QARepVGG checkpoints are convertible (an acb-* deploy-form file converts as repvgg-*, "
                           "or with --arch acb-*)")
    raise ConvertError(f"{path}: no stage0.rbr_reparam.weight, stage0.rbr_1x1.conv.weight (RepVGG) or "
                       "stage0.rbr_1x1.weight + stage0.bn.weight (QARepVGG): not a RepVGG-family state dict")


def block_weight(sd, prefix):
    for name in ("rbr_reparam.weight", "rbr_dense.conv.weight"):
        if prefix + "." + name in sd:
            return sd[prefix + "." + name]
    return None


def signature_of_file(sd):
    """(blocks per stage, widths stage0..4, groups of layer 2 or 1), read off the 3x3 kernels."""
    num_blocks, widths = [], [block_weight(sd, "stage0").shape[0]]
    for s in range(1, 5):
        n = 0
        while block_weight(sd, f"stage{s}.{n}") is not None:
            n += 1
        num_blocks.append(n)
        widths.append(block_weight(sd, f"stage{s}.0").shape[0] if n else 0)
    groups = 1
    if num_blocks[0] >= 2:  # layer 2 is stage1.1
        w = block_weight(sd, "stage1.1")
        groups = widths[1] // w.shape[1]
    return tuple(num_blocks), tuple(widths), groups


def signature_of_arch(kw):
    a = kw["width_multiplier"]
    widths = (min(64, int(64 * a[0])), int(64 * a[0]), int(128 * a[1]), int(256 * a[2]), int(512 * a[3]))
    groups = (kw["override_groups_map"] or {}).get(2, 1)
    return tuple(kw["num_blocks"]), widths, groups


def infer_arch(sd, block, path):
    sig = signature_of_file(sd)
    names = [n for n, kw in repvgg_torch.ARCHS.items()
             if signature_of_arch(kw) == sig and kw["block_cls"] is
             (repvgg_torch.QARepVGGBlock if block == "qarepvgg" else repvgg_torch.RepVGGBlock)]
    if len(names) != 1:
        raise ConvertError(f"{path}: blocks per stage {list(sig[0])}, widths {list(sig[1])}, groups {sig[2]} "
                           f"match {'no arch' if not names else names}; pass --arch "
                           f"(one of {', '.join(repvgg_torch.ARCHS)})")
    return names[0]


@contextlib.contextmanager
def no_init():
    """Builds modules without initializing them: only their names and shapes are wanted."""
    saved = [(c, c.reset_parameters) for c in (nn.Conv2d, nn.Linear, nn.BatchNorm2d)]
    for c, _ in saved:
        c.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for c, f in saved:
            c.reset_parameters = f


def official_shapes(arch, form, num_classes):
    with no_init():
        model = repvgg_torch.create_model(arch, deploy=form == "deploy", num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert(obj, path, arch=None):
    """-> (tensors, arch, num_classes, form): checked against the official model of that arch."""
    sd = unwrap(obj, path)
    form, block = form_and_block(sd, path)
    if arch is None:
        arch = infer_arch(sd, block, path)
        if form == "deploy":
            arch = "repvgg-" + arch.split("-", 1)[1]
    elif arch not in repvgg_torch.ARCHS:
        raise ConvertError(f"--arch {arch}: not one of {', '.join(repvgg_torch.ARCHS)}")
    elif block is not None and not arch.startswith(block + "-"):
        raise ConvertError(f"{path}: holds {block} blocks but --arch is {arch}")
    if "linear.weight" not in sd:
        raise ConvertError(f"{path}: no linear.weight (the classifier)")
    num_classes = sd["linear.weight"].shape[0]
    want = official_shapes(arch, form, num_classes)
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in sorted(want) if k in sd and tuple(sd[k].shape) != want[k]]
    if missing or extra or wrong:
        raise ConvertError(f"{path}: not a {form}-form {arch} with {num_classes} classes: "
                           + "; ".join(p for p in (f"missing {missing[:5]}" if missing else "",
                                                   f"unexpected {extra[:5]}" if extra else "",
                                                   f"wrong shape {wrong[:5]}" if wrong else "") if p))
    tensors = {k: (v.long() if k.endswith("num_batches_tracked") else v.float()).contiguous() for k, v in sd.items()}
    return tensors, arch, num_classes, form


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pth")
    ap.add_argument("out")
    ap.add_argument("--arch", help="the arch (default: inferred from the shapes)")
    ap.add_argument("--dataset", choices=("imagenet", "cifar10"), help="default: cifar10 for *-cifar, else imagenet")
    a = ap.parse_args(argv)
    try:
        if not os.path.exists(a.pth):
            raise ConvertError(f"{a.pth}: no such file")
        try:
            obj = torch.load(a.pth, map_location="cpu")
        except Exception as e:
            raise ConvertError(f"{a.pth}: not a PyTorch checkpoint torch.load can read ({e})")
        tensors, arch, num_classes, form = convert(obj, a.pth, a.arch)
    except ConvertError as e:
        sys.exit(f"convert_official: {e}")
    dataset = a.dataset or ("cifar10" if arch.endswith("-cifar") else "imagenet")
    save_file(tensors, a.out, metadata={"arch": arch, "num_classes": str(num_classes), "dataset": dataset,
                                        "form": form, "converted_from": os.path.basename(a.pth)})
    print(f"convert_official: {a.pth} -> {a.out}: {arch} ({form} form), {num_classes} classes, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
