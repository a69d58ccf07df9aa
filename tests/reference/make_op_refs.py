"""Writes tests/reference/ops_bn_ce.safetensors: PyTorch's batch norm and cross-entropy on small fixed inputs,
read by tests/test_batchnorm.cpp and tests/test_loss.cpp.

    /usr/bin/python3 tests/reference/make_op_refs.py

Everything is float32 (labels int32), computed by torch 1.13 on the CPU in float32, as the engine does.
bn.*:  F.batch_norm(training=True, momentum=0.1, eps=1e-5) of x [3, 4, 5, 6] with gamma, beta and running
       stats; the loss sum(y * gy) gives gx, ggamma, gbeta; running_mean_out / running_var_out are the updated
       running stats; y_eval, gx_eval (and ggamma_eval, gbeta_eval) are the eval-mode forward and backward
       with those updated stats.
ce.*:  F.cross_entropy(logits [6, 5], labels, label_smoothing=0.1) = loss; gout = 2.5 scales it, and
       glogits is d (2.5 loss) / d logits; loss_plain is the loss without smoothing.
"""
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from safetensors_io import save_file  # noqa: E402

FORMAT_VERSION = "1"


def bn_case(g):
    x = (torch.randn(3, 4, 5, 6, generator=g) * 2 + 3).requires_grad_()
    gamma = (1 + 0.3 * torch.randn(4, generator=g)).requires_grad_()
    beta = (0.2 * torch.randn(4, generator=g)).requires_grad_()
    rm0 = 0.2 * torch.randn(4, generator=g)
    rv0 = 0.5 + torch.rand(4, generator=g)
    gy = torch.randn(3, 4, 5, 6, generator=g)
    rm, rv = rm0.clone(), rv0.clone()
    y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=1e-5)
    (y * gy).sum().backward()
    out = {"x": x, "gamma": gamma, "beta": beta, "running_mean": rm0, "running_var": rv0, "gy": gy, "y": y,
           "gx": x.grad, "ggamma": gamma.grad, "gbeta": beta.grad, "running_mean_out": rm, "running_var_out": rv}
    for t in (x, gamma, beta):
        t.grad = None
    y_eval = F.batch_norm(x, rm, rv, gamma, beta, training=False, eps=1e-5)
    (y_eval * gy).sum().backward()
    out.update({"y_eval": y_eval, "gx_eval": x.grad, "ggamma_eval": gamma.grad, "gbeta_eval": beta.grad})
    return {"bn." + k: v.detach().float().contiguous() for k, v in out.items()}


def ce_case(g):
    logits = (3 * torch.randn(6, 5, generator=g)).requires_grad_()
    labels = torch.randint(0, 5, (6,), generator=g)
    loss = F.cross_entropy(logits, labels, label_smoothing=0.1)
    (2.5 * loss).backward()
    plain = F.cross_entropy(logits, labels)
    out = {"logits": logits, "loss": loss, "glogits": logits.grad, "loss_plain": plain}
    out = {"ce." + k: v.detach().float().contiguous() for k, v in out.items()}
    out["ce.labels"] = labels.to(torch.int32)
    return out


def main():
    g = torch.Generator().manual_seed(2024)
    tensors = {**bn_case(g), **ce_case(g)}
    path = os.path.join(HERE, "ops_bn_ce.safetensors")
    save_file(tensors, path, metadata={"format_version": FORMAT_VERSION, "producer": "make_op_refs.py",
                                       "torch": torch.__version__, "bn_momentum": "0.1", "bn_eps": "1e-05",
                                       "ce_label_smoothing": "0.1", "ce_gout": "2.5"})
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
