"""Reference numbers for tests/test_optim.cpp from PyTorch 1.13: torch.optim.SGD and the LR schedulers.

    /usr/bin/python3 tests/reference/make_optim_refs.py    # writes tests/reference/optim.safetensors (6 KB)

SGD: three parameters in two groups (a and c with weight decay 0.05, b without), five steps with fixed
gradients; c has no gradient for its first two steps (SGD skips it and creates no momentum buffer). The
learning rate is 0.1 for steps 0-2 and 0.05 for steps 3-4, set between steps as a scheduler would.
  init.{a,b,c}                 the parameters before the first step
  grad.{a,b,c}   [5, ...]      the gradient of each step (c's rows 0 and 1 are unused)
  {cfg}.{a,b,c}  [5, ...]      the parameters after each step, for cfg in plain (momentum 0),
                               momentum (0.9) and nesterov (0.9, nesterov)
  {cfg}.buf.{a,b,c}            the momentum buffers after the last step (momentum and nesterov)

Schedules, F64, base lr 0.1, the lr of each epoch (read before the epoch's scheduler.step()):
  cosine_t50          CosineAnnealingLR(T_max=50), 150 epochs
  cosine_t4           CosineAnnealingLR(T_max=4), 12 epochs
  cosine_t4_eta0.01   CosineAnnealingLR(T_max=4, eta_min=0.01), 12 epochs
  step_s3_g0.5        StepLR(step_size=3, gamma=0.5), 10 epochs
  warmup5             LinearLR(start_factor=1/5, total_iters=4), 10 epochs
  warmup5_cosine10    SequentialLR([LinearLR(1/5, total_iters=4), CosineAnnealingLR(T_max=10)], milestones=[5]), 25 epochs
  warmup3_step_s2_g0.1  SequentialLR([LinearLR(1/3, total_iters=2), StepLR(step_size=2, gamma=0.1)], milestones=[3]), 10 epochs
"""
import os
import sys
import warnings

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR, StepLR

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_file  # noqa: E402

warnings.filterwarnings("ignore")  # "Detected call of lr_scheduler.step() before optimizer.step()" etc.
STEPS = 5
SHAPES = {"a": (3, 4), "b": (5,), "c": (2, 3)}
C_FIRST_GRAD = 2  # c has no gradient before this step


def sgd_refs(out):
    g = torch.Generator().manual_seed(0)
    init = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    grads = {k: torch.randn((STEPS,) + s, generator=g) for k, s in SHAPES.items()}
    for k in SHAPES:
        out[f"init.{k}"] = init[k]
        out[f"grad.{k}"] = grads[k]
    for cfg, momentum, nesterov in [("plain", 0.0, False), ("momentum", 0.9, False), ("nesterov", 0.9, True)]:
        p = {k: torch.nn.Parameter(init[k].clone()) for k in SHAPES}
        opt = torch.optim.SGD([{"params": [p["a"], p["c"]], "weight_decay": 0.05},
                               {"params": [p["b"]], "weight_decay": 0.0}],
                              lr=0.1, momentum=momentum, nesterov=nesterov)
        after = {k: [] for k in SHAPES}
        for step in range(STEPS):
            if step == 3:
                for group in opt.param_groups:
                    group["lr"] = 0.05
            for k in SHAPES:
                p[k].grad = None if (k == "c" and step < C_FIRST_GRAD) else grads[k][step].clone()
            opt.step()
            for k in SHAPES:
                after[k].append(p[k].detach().clone())
        for k in SHAPES:
            out[f"{cfg}.{k}"] = torch.stack(after[k])
            if momentum:
                out[f"{cfg}.buf.{k}"] = opt.state[p[k]]["momentum_buffer"]


def lrs(make_scheduler, epochs, base_lr=0.1):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    scheduler = make_scheduler(opt)
    values = []
    for _ in range(epochs):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return torch.tensor(values, dtype=torch.float64)


def schedule_refs(out):
    out["cosine_t50"] = lrs(lambda o: CosineAnnealingLR(o, T_max=50), 150)
    out["cosine_t4"] = lrs(lambda o: CosineAnnealingLR(o, T_max=4), 12)
    out["cosine_t4_eta0.01"] = lrs(lambda o: CosineAnnealingLR(o, T_max=4, eta_min=0.01), 12)
    out["step_s3_g0.5"] = lrs(lambda o: StepLR(o, step_size=3, gamma=0.5), 10)
    out["warmup5"] = lrs(lambda o: LinearLR(o, start_factor=1 / 5, total_iters=4), 10)
    out["warmup5_cosine10"] = lrs(lambda o: SequentialLR(
        o, [LinearLR(o, start_factor=1 / 5, total_iters=4), CosineAnnealingLR(o, T_max=10)], milestones=[5]), 25)
    out["warmup3_step_s2_g0.1"] = lrs(lambda o: SequentialLR(
        o, [LinearLR(o, start_factor=1 / 3, total_iters=2), StepLR(o, step_size=2, gamma=0.1)], milestones=[3]), 10)


if __name__ == "__main__":
    out = {}
    sgd_refs(out)
    schedule_refs(out)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "optim.safetensors")
    save_file(out, path, metadata={"producer": "make_optim_refs.py", "torch": torch.__version__})
    print("wrote", path)
