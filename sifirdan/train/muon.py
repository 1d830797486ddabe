"""Beyond the guide — Muon for the blocks' weight matrices, AdamW for everything else (modded-nanogpt, nanochat).

Muon (Jordan et al. 2024) takes SGD's momentum and replaces each 2-D update by the nearest semi-orthogonal
matrix (five Newton-Schulz iterations, ``orthogonalize``): every direction of the matrix moves by the same
amount, instead of the few that dominate the gradient. It is made for the hidden layers' matrices; embeddings,
the LM head, biases and norm gains keep AdamW, as in its authors' recipes.

``MuonAdamW`` holds the two optimizers and looks like one to the trainer: one ``param_groups`` list (the
schedule writes each group's ``lr``; a group's ``lr_scale`` multiplies it), one ``step``/``zero_grad``, and one
``state_dict`` holding both (bit-exact resume). Muon's learning rate is AdamW's times ``muon_lr_scale``, and
each update is scaled by ``0.2 * sqrt(max(rows, cols))`` (Moonshot's rule: the update's RMS matches AdamW's, so
AdamW's learning rate and weight decay carry over).

Why not ``torch.optim.Muon`` (same algorithm): it runs the Newton-Schulz iterations in bfloat16 everywhere. On
a CPU without native bf16 arithmetic that made each step about twice as slow as AdamW's; here they run in
float32 on a CPU and in bfloat16 on a GPU.
"""

from __future__ import annotations

import torch


def muon_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the parameters Muon updates: the 2-D weights inside the transformer blocks (attention and MLP
    matrices). Embeddings and the LM head are 2-D too, but they are lookup tables / a classifier: AdamW."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return set()
    return {id(p) for p in blocks.parameters() if p.requires_grad and p.dim() == 2}


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic iteration, tuned for a steep slope at 0 (Keller Jordan)


def orthogonalize(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """~U V^T of G = U S V^T (singular values pushed to roughly 1) by Newton-Schulz iterations."""
    a, b, c = NS_COEFFICIENTS
    X = G.bfloat16() if G.device.type == "cuda" else G.float()
    tall = X.size(0) > X.size(1)
    if tall:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        X = X.T
    X = X / (X.norm() + eps)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * (A @ A)) @ X
    return (X.T if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """SGD momentum (Nesterov) whose 2-D updates are orthogonalised; decoupled weight decay as AdamW's."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, weight_decay: float = 0.0, nesterov: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2:
                    raise ValueError(f"Muon updates 2-D weight matrices only, got a parameter of shape {tuple(p.shape)}")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(p.grad)
                update = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
                if wd:
                    p.mul_(1 - lr * wd)
                scale = 0.2 * max(p.shape) ** 0.5  # update RMS ~ AdamW's (Moonshot)
                p.add_(orthogonalize(update), alpha=-lr * scale)


class MuonAdamW:
    """Muon on ``muon_groups``, AdamW on ``adamw_groups``; the trainer's one optimizer."""

    _step_supports_amp_scaling = False  # GradScaler: unscale first, then step (as for any optimizer)

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, lr: float, betas, muon_lr_scale: float,
                 momentum: float = 0.95, fused: bool = False):
        muon_groups = [g for g in muon_groups if g["params"]]
        adamw_groups = [g for g in adamw_groups if g["params"]]
        for g in muon_groups:
            g["lr_scale"] = muon_lr_scale
        self.muon = Muon(muon_groups, lr=lr * muon_lr_scale, momentum=momentum) if muon_groups else None
        kwargs = dict(lr=lr, betas=betas)
        if fused:
            kwargs["fused"] = True
        self.adamw = torch.optim.AdamW(adamw_groups, **kwargs) if adamw_groups else None
        self.optimizers = [o for o in (self.muon, self.adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self):
        merged = {}
        for o in self.optimizers:
            merged.update(o.state)
        return merged

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict() if self.muon else None,
                "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"muon", "adamw"}:
            raise ValueError("the saved optimizer state is not Muon + AdamW (was the run started with --optimizer adamw?)")
        for name in ("muon", "adamw"):
            opt, saved = getattr(self, name), state[name]
            if (opt is None) != (saved is None):
                raise ValueError(f"the saved optimizer state has {'no ' if saved is None else ''}{name} part")
            if opt is not None:
                opt.load_state_dict(saved)
