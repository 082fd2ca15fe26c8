"""AdaLoRA's rank allocator: how many triplets to keep, and which (Zhang et al. 2023, Sec. 3.2, 3.3).

Importance of one parameter w (an entry of P, lambda or Q), updated every step t (Sec. 3.2):

    I(w)     = |w * dL/dw|                                  sensitivity: the loss change, to first
                                                            order, if w were set to zero
    Ibar(w) <- beta1 Ibar(w) + (1 - beta1) I(w)             smoothed sensitivity
    U(w)    <- beta2 U(w) + (1 - beta2) |I(w) - Ibar(w)|    its uncertainty (with the new Ibar)
    s(w)     = Ibar(w) * U(w)

Importance of triplet i of one matrix: its singular value plus the mean of its two vectors,

    S_i = s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij)

The budget b(t), the number of triplets kept across all n adapted matrices (Sec. 3.3):

    b(t) = b0                                                          t <= t_init
         = bT + (b0 - bT) (1 - (t - t_init) / (T - t_init - t_final))^3     cubic fall
         = bT                                                          t >= T - t_final
    b0 = n * init_r,   bT = n * target_r   (target_r is a per-matrix average, not a cap)

Every delta_t steps of the fall, the b(t) triplets with the highest S across the whole model are
kept and every other lambda_i is set to 0. A zeroed lambda_i still trains, so its triplet can come
back at the next reallocation. At T - t_final the choice is made one last time, for bT triplets,
and then held: from there on the same lambdas are zeroed after every step, and the scores stop.

Use (the training loop of nanogpt.train does this through its after_step and extra_loss hooks):

    apply_adalora(model, targets, init_r=12, target_r=8, alpha=16)
    allocator = RankAllocator(model, total_steps=600, t_init=60, t_final=200, delta_t=10)
    for step in range(600):
        loss = task_loss + orthogonal_regularizer(model, gamma=0.1)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        allocator.step(step)      # after optimizer.step(): reads .grad, masks the updated lambda

Order: the paper's Algorithm 1 takes I from w(t) and then masks the updated lambda(t+1). Its
reference code and PEFT call the allocator once, after optimizer.step(), so I is taken from w(t+1)
with the gradient at w(t); we do the same (one call point, and parity with them). The mask must
come after the step, or the step would move the zeroed lambdas off zero before the next forward.
"""
import numbers

import torch

from minilora.adalora import adalora_adapters

# The parameters of one triplet set, by their names on the adapter (adalora.py): P, lambda, Q.
TRIPLET_PARTS = ("lora_B", "lora_E", "lora_A")


def budget_schedule(step, total_steps, t_init, t_final, initial_budget, target_budget):
    """b(t): initial_budget up to t_init, a cubic fall to target_budget at total_steps - t_final,
    then target_budget. Rounded down to an integer, as the reference code does."""
    if step <= t_init:
        return initial_budget
    if step >= total_steps - t_final:
        return target_budget
    remaining = 1 - (step - t_init) / (total_steps - t_final - t_init)  # 1 -> 0 over the fall
    return int(target_budget + (initial_budget - target_budget) * remaining ** 3)


def triplet_scores(s_P, s_E, s_Q):
    """S_i = s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij): (out, r), (r,), (r, in) -> (r,)."""
    return s_E + s_P.mean(dim=0) + s_Q.mean(dim=1)


def _check_int(what, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_beta(what, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{what} must be a number in [0, 1) (the weight an exponential moving average gives "
                         f"its past), got {value!r}")
    return float(value)


class RankAllocator:
    """Scores every triplet of the model's active AdaLoRA adapters and masks the least important
    down to the budget b(t). Call step(step) once per training step, after optimizer.step().

    budgets: [(step, b(t))] for every step taken; allocations: [(step, {layer: kept triplets})]
    for every reallocation; final_ranks(): {layer: kept triplets} once the final choice is made."""

    def __init__(self, model, total_steps, t_init, t_final, delta_t, beta1=0.85, beta2=0.85):
        self.adapters = adalora_adapters(model)
        if not self.adapters:
            raise ValueError("RankAllocator: the model has no active AdaLoRA adapter; call apply_adalora first")
        self.total_steps = _check_int("total_steps", total_steps, 1)
        self.t_init = _check_int("t_init", t_init, 0)
        self.t_final = _check_int("t_final", t_final, 0)
        self.delta_t = _check_int("delta_t", delta_t, 1)
        if self.t_init + self.t_final >= self.total_steps:
            raise ValueError(f"t_init + t_final = {self.t_init} + {self.t_final} = {self.t_init + self.t_final} "
                             f"must be less than total_steps={self.total_steps}: the budget needs steps in between "
                             f"to fall")
        self.beta1 = _check_beta("beta1", beta1)
        self.beta2 = _check_beta("beta2", beta2)
        self.initial_budget = sum(adapter.r for _, adapter in self.adapters)  # b0 = n * init_r
        self.target_budget = sum(adapter.target_r for _, adapter in self.adapters)  # bT = n * target_r
        # Ibar and U for every entry of P, lambda, Q: {(layer, part): tensor shaped like the parameter}
        self.smoothed = {}
        self.uncertainty = {}
        self.final_keep = None  # {layer: bool (r,)}, fixed at T - t_final
        self.budgets = []
        self.allocations = []

    def budget(self, step):
        return budget_schedule(step, self.total_steps, self.t_init, self.t_final, self.initial_budget,
                               self.target_budget)

    def _check_gradients(self, step):
        for name, adapter in self.adapters:
            for part in TRIPLET_PARTS:
                if getattr(adapter, part).grad is None:
                    raise RuntimeError(
                        f"RankAllocator.step(step={step}): {name}.{part} has no gradient. Call the allocator after "
                        f"loss.backward() and optimizer.step(), before optimizer.zero_grad(); and train the "
                        f"AdaLoRA adapter (its parameters must require grad)")

    @torch.no_grad()
    def update_importance(self):
        """One step of the moving averages Ibar and U, for every entry of every P, lambda, Q."""
        for name, adapter in self.adapters:
            for part in TRIPLET_PARTS:
                p = getattr(adapter, part)
                sensitivity = (p * p.grad).abs()  # I(w)
                key = (name, part)
                if key not in self.smoothed:
                    self.smoothed[key] = torch.zeros_like(p)
                    self.uncertainty[key] = torch.zeros_like(p)
                smoothed = self.smoothed[key].mul_(self.beta1).add_(sensitivity, alpha=1 - self.beta1)
                self.uncertainty[key].mul_(self.beta2).add_((sensitivity - smoothed).abs(), alpha=1 - self.beta2)

    def scores(self):
        """{layer: S (r,)}: each triplet's importance from the current Ibar * U (zeros before any update)."""
        out = {}
        for name, adapter in self.adapters:
            s = {}
            for part in TRIPLET_PARTS:
                key = (name, part)
                param = getattr(adapter, part)
                s[part] = (self.smoothed[key] * self.uncertainty[key] if key in self.smoothed
                           else torch.zeros_like(param)).detach()
            out[name] = triplet_scores(s["lora_B"], s["lora_E"], s["lora_A"])
        return out

    def keep_top(self, budget):
        """{layer: bool (r,)}: True for the `budget` highest-scoring triplets across all layers.
        Exactly `budget` are kept; equal scores are taken in module order (a stable sort)."""
        scores = self.scores()
        flat = torch.cat([scores[name] for name, _ in self.adapters])  # (sum of r,)
        order = torch.argsort(flat, descending=True, stable=True)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[order[:budget]] = True
        return dict(zip([name for name, _ in self.adapters], keep.split([a.r for _, a in self.adapters])))

    @torch.no_grad()
    def apply(self, keep):
        """lambda_i <- 0 for every triplet keep leaves out."""
        for name, adapter in self.adapters:
            adapter.lora_E.masked_fill_(~keep[name].to(adapter.lora_E.device), 0.0)

    def _allocate(self, step, budget):
        keep = self.keep_top(budget)
        self.apply(keep)
        self.allocations.append((step, {name: int(k.sum()) for name, k in keep.items()}))
        return keep

    def step(self, step):
        """One training step's work: update the scores, and on a reallocation step mask to b(t).
        Returns b(t)."""
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or not 0 <= step < self.total_steps:
            raise ValueError(f"step must be an integer in 0..{self.total_steps - 1} (total_steps={self.total_steps}), "
                             f"got {step!r}")
        self._check_gradients(step)
        final_start = self.total_steps - self.t_final
        budget = self.budget(step)
        if step < final_start:
            self.update_importance()
            if step > self.t_init and step % self.delta_t == 0:
                self._allocate(step, budget)
        elif self.final_keep is None:  # T - t_final: the last choice, held from here on
            self.final_keep = self._allocate(step, self.target_budget)
        else:
            self.apply(self.final_keep)
        self.budgets.append((step, budget))
        return budget

    def final_ranks(self):
        """{layer: triplets kept by the final choice}, or None before T - t_final."""
        if self.final_keep is None:
            return None
        return {name: int(keep.sum()) for name, keep in self.final_keep.items()}

