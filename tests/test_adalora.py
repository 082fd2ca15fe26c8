"""AdaLoRA: the SVD-form adapter, the rank allocator, the regulariser, and the library around them."""
import copy

import pytest
import torch
import torch.nn as nn

from minilora import (AdaLoRALinear, RankAllocator, add_weighted_adapter, apply_adalora, apply_lora,
                      budget_schedule, count_parameters, load_adapter, lora_layers, lora_summary, merge_lora,
                      orthogonal_regularizer, read_adapter_file, save_adapter, unload_lora, unmerge_lora)
from minilora.adalora import adalora_adapters
from nanogpt.train import train
from nanogpt.train_config import TrainConfig
from tests.test_lora_variants import TARGETS, tiny_gpt, tokens


def adapted(init_r=6, target_r=3, seed=0):
    return apply_adalora(tiny_gpt(seed), TARGETS, init_r=init_r, target_r=target_r, alpha=16)


def random_lambdas_(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, adapter in adalora_adapters(model):
            adapter.lora_E.copy_(torch.randn(adapter.lora_E.shape, generator=g))


def train_with_allocator(model, total_steps, t_init, t_final, delta_t, gamma=0.1, lr=1e-2, stop=None):
    """AdamW on a few fixed batches with the regulariser and the allocator, as the paper's loop."""
    allocator = RankAllocator(model, total_steps=total_steps, t_init=t_init, t_final=t_final, delta_t=delta_t)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    zero_patterns = []
    for step in range(total_steps if stop is None else stop):
        _, loss = model(tokens(step % 3), tokens(10 + step % 3))
        optimizer.zero_grad()
        (loss + orthogonal_regularizer(model, gamma)).backward()
        optimizer.step()
        allocator.step(step)
        zero_patterns.append({n: (a.lora_E == 0).clone() for n, a in adalora_adapters(model)})
    return allocator, zero_patterns


# -- the adapter ----------------------------------------------------------------------------

def test_starts_equal_to_the_base_model():
    base = tiny_gpt()
    model = apply_adalora(copy.deepcopy(base), TARGETS, init_r=6, target_r=3, alpha=16)
    x = tokens()
    assert torch.equal(model(x)[0], base(x)[0])  # lambda = 0: delta W = 0 exactly
    for _, adapter in adalora_adapters(model):
        assert torch.count_nonzero(adapter.lora_E) == 0
    P = torch.cat([a.lora_B.flatten() for _, a in adalora_adapters(model)])
    Q = torch.cat([a.lora_A.flatten() for _, a in adalora_adapters(model)])
    for values in (P, Q):  # the reference's normal(0, 0.02), not zero (or no lambda could move)
        assert values.std().item() == pytest.approx(0.02, rel=0.1) and abs(values.mean().item()) < 0.002


def test_shapes_scaling_and_parameter_count():
    model = adapted(init_r=6)
    q = model.get_submodule("blocks.0.attn.q_proj").adapters["default"]
    up = model.get_submodule("blocks.0.mlp.up_proj").adapters["default"]
    assert q.lora_B.shape == (32, 6) and q.lora_E.shape == (6,) and q.lora_A.shape == (6, 32)  # P, lambda, Q
    assert up.lora_B.shape == (128, 6) and up.lora_A.shape == (6, 32)
    assert q.scaling == 16 / 6  # alpha / init_r, as the reference
    # r (in + out + 1) per adapted matrix; per block: q, k, v, o 32x32, up 32->128, down 128->32
    per_block = 4 * 6 * (32 + 32 + 1) + 2 * 6 * (32 + 128 + 1)
    assert count_parameters(model).trainable == 2 * per_block


def test_gradients_reach_only_P_lambda_and_Q():
    model = adapted()
    random_lambdas_(model)
    _, loss = model(tokens(), tokens(3))
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable == with_grad
    assert trainable == {f"{layer}.adapters.default.{part}" for layer, _ in lora_layers(model)
                         for part in ("lora_A", "lora_B", "lora_E")}
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in trainable)


def test_forward_is_W0_x_plus_s_P_diag_lambda_Q_x_fused_or_not():
    torch.manual_seed(0)
    layer = AdaLoRALinear(nn.Linear(24, 40), init_r=5, target_r=2, alpha=8)
    adapter = layer.adapters["default"]
    with torch.no_grad():
        adapter.lora_E.normal_()
    x = torch.randn(3, 7, 24)
    dense = layer.base.weight + (8 / 5) * adapter.lora_B @ torch.diag(adapter.lora_E) @ adapter.lora_A  # (out, in)
    expected = x @ dense.T + layer.base.bias
    torch.testing.assert_close(layer.delta_weight(), dense - layer.base.weight)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    layer.fused = False
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_merge_unmerge_and_unload_keep_the_function():
    model = adapted()
    random_lambdas_(model)
    x = tokens()
    before = model(x)[0]
    merge_lora(model)
    torch.testing.assert_close(model(x)[0], before, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model(x)[0], before, rtol=1e-5, atol=1e-5)
    plain = unload_lora(model)
    assert not lora_layers(plain) and isinstance(plain.get_submodule("blocks.0.attn.q_proj"), nn.Linear)
    torch.testing.assert_close(plain(x)[0], before, rtol=1e-5, atol=1e-5)


def test_lora_summary_shows_each_matrix_rank():
    model = adapted(init_r=6)
    with torch.no_grad():
        model.get_submodule("blocks.1.mlp.up_proj").adapters["default"].lora_E[:4] = 1.0
    table = lora_summary(model)
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("blocks.")}
    assert "default+adalora" in rows["blocks.1.mlp.up_proj"]
    assert " 4 of 6 " in rows["blocks.1.mlp.up_proj"]
    assert " 0 of 6 " in rows["blocks.0.attn.q_proj"]


# -- the regulariser ------------------------------------------------------------------------

def test_regulariser_is_zero_for_orthonormal_P_and_Q_and_follows_the_formula():
    model = adapted(init_r=6)
    with torch.no_grad():
        for _, adapter in adalora_adapters(model):
            out_f, r = adapter.lora_B.shape
            in_f = adapter.lora_A.shape[1]
            adapter.lora_B.copy_(torch.linalg.qr(torch.randn(out_f, r))[0])  # orthonormal columns
            adapter.lora_A.copy_(torch.linalg.qr(torch.randn(in_f, r))[0].T)  # orthonormal rows
    assert orthogonal_regularizer(model, 0.5).item() == pytest.approx(0.0, abs=1e-8)
    with torch.no_grad():  # P -> 2P: P^T P - I = 3I, ||3I||_F^2 = 9r on each of the 12 matrices
        for _, adapter in adalora_adapters(model):
            adapter.lora_B.mul_(2)
    assert orthogonal_regularizer(model, 0.5).item() == pytest.approx(0.5 * 12 * 9 * 6, rel=1e-5)
    assert orthogonal_regularizer(model, 0.0).item() == 0.0


def test_regulariser_gradient_reaches_P_and_Q():
    model = adapted()
    orthogonal_regularizer(model, 0.1).backward()
    for _, adapter in adalora_adapters(model):
        assert adapter.lora_A.grad.abs().sum() > 0 and adapter.lora_B.grad.abs().sum() > 0
        assert adapter.lora_E.grad is None  # lambda is not in R(P, Q)


# -- the budget schedule and the allocator ---------------------------------------------------

def test_budget_schedule_values_at_chosen_steps():
    # T = 100, t_init = 10, t_final = 30: the fall runs over steps 10..70, 60 steps long.
    def b(step):
        return budget_schedule(step, 100, 10, 30, initial_budget=120, target_budget=80)
    assert [b(0), b(5), b(10)] == [120, 120, 120]  # warm-up: everything kept
    assert b(11) == 118  # 80 + 40 (59/60)^3 = 118.03
    assert b(40) == 85  # half way: 80 + 40 / 8
    assert b(55) == 80  # 80 + 40 (1/4)^3 = 80.625, rounded down
    assert [b(70), b(85), b(99)] == [80, 80, 80]  # final phase
    values = [b(s) for s in range(100)]
    assert all(x >= y for x, y in zip(values, values[1:]))  # never rises


def test_allocator_keeps_exactly_the_budget_and_the_top_scores():
    model = adapted(init_r=6, target_r=3)
    allocator, _ = train_with_allocator(model, total_steps=30, t_init=3, t_final=8, delta_t=3, stop=10)
    # steps 6 and 9 reallocate (after t_init, multiples of delta_t); step 9 was the last one taken
    assert [s for s, _ in allocator.allocations] == [6, 9]
    budget = allocator.budget(9)
    assert 36 < budget < 72 and sum(allocator.allocations[-1][1].values()) == budget
    assert sum(a.rank for _, a in adalora_adapters(model)) == budget  # the rest of lambda is exactly 0
    scores = torch.cat(list(allocator.scores().values()))
    kept = torch.cat([a.lora_E != 0 for _, a in adalora_adapters(model)])
    assert scores[kept].min() >= scores[~kept].max()  # the kept ones are the best-scoring


def test_allocator_budget_history_and_fixed_final_mask():
    model = adapted(init_r=6, target_r=3)
    allocator, zero_patterns = train_with_allocator(model, total_steps=30, t_init=3, t_final=8, delta_t=3)
    assert allocator.budgets == [(s, allocator.budget(s)) for s in range(30)]
    assert allocator.budgets[0][1] == 72 and allocator.budgets[-1][1] == 36
    assert allocator.allocations[-1][0] == 22  # T - t_final: the final choice
    final = allocator.final_ranks()
    assert sum(final.values()) == 36 and final == allocator.allocations[-1][1]
    for pattern in zero_patterns[22:]:  # held fixed over the final phase, while lambda keeps training
        assert all(torch.equal(pattern[n], zero_patterns[22][n]) for n in pattern)
    assert {n: a.rank for n, a in adalora_adapters(model)} == final


def test_importance_is_the_smoothed_sensitivity_times_its_uncertainty():
    model = adapted(init_r=4)
    random_lambdas_(model)
    allocator = RankAllocator(model, total_steps=10, t_init=2, t_final=2, delta_t=1, beta1=0.5, beta2=0.25)
    name, adapter = adalora_adapters(model)[0]
    sensitivities = []
    for step in range(2):
        model.zero_grad()
        _, loss = model(tokens(step), tokens(5 + step))
        loss.backward()
        sensitivities.append({part: (getattr(adapter, part) * getattr(adapter, part).grad).abs()
                              for part in ("lora_A", "lora_B", "lora_E")})
        allocator.step(step)
    s = {}
    for part in ("lora_A", "lora_B", "lora_E"):
        i1, i2 = sensitivities[0][part], sensitivities[1][part]
        bar1 = 0.5 * i1
        u1 = 0.75 * (i1 - bar1).abs()
        bar2 = 0.5 * bar1 + 0.5 * i2
        u2 = 0.25 * u1 + 0.75 * (i2 - bar2).abs()
        torch.testing.assert_close(allocator.smoothed[(name, part)], bar2)
        s[part] = bar2 * u2
    expected = s["lora_E"] + s["lora_B"].mean(dim=0) + s["lora_A"].mean(dim=1)  # S_i
    torch.testing.assert_close(allocator.scores()[name], expected)


def test_train_runs_the_allocator_and_the_regulariser_through_its_hooks():
    model = adapted(init_r=4, target_r=2)
    data = torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(0))
    allocator = RankAllocator(model, total_steps=8, t_init=1, t_final=3, delta_t=1)
    seen_steps, regulariser_calls = [], []

    def regulariser(m):
        regulariser_calls.append(1)
        return orthogonal_regularizer(m, 0.1)

    def after_step(step):
        seen_steps.append(step)
        allocator.step(step)

    config = TrainConfig(max_iters=8, batch_size=2, eval_interval=4, eval_iters=1, warmup_iters=1, progress=False)
    train(model, data, {"val": data}, config, extra_loss=regulariser, after_step=after_step)
    assert seen_steps == list(range(8)) and len(regulariser_calls) == 8
    assert sum(a.rank for _, a in adalora_adapters(model)) == 2 * 12 == sum(allocator.final_ranks().values())


# -- files ------------------------------------------------------------------------------------

def test_save_and_load_round_trip_keeps_only_the_surviving_triplets(tmp_path):
    base = tiny_gpt()
    model = apply_adalora(copy.deepcopy(base), TARGETS, init_r=6, target_r=3, alpha=16)
    allocator, _ = train_with_allocator(model, total_steps=20, t_init=2, t_final=5, delta_t=2)
    ranks = allocator.final_ranks()
    assert sorted(set(ranks.values())) != [3]  # not uniform: the point of AdaLoRA
    path = tmp_path / "adalora.pt"
    save_adapter(model, path)
    obj = read_adapter_file(path)
    assert obj["kind"] == "adalora" and obj["config"]["init_r"] == 6 and obj["ranks"] == ranks
    for layer, k in ranks.items():
        assert obj["tensors"][f"{layer}.lora_E"].shape == (k,)
        assert obj["tensors"][f"{layer}.lora_A"].shape[0] == k and obj["tensors"][f"{layer}.lora_B"].shape[1] == k
    total_kept = sum(t.numel() for t in obj["tensors"].values())
    assert total_kept < count_parameters(model).trainable  # the file holds the pruned adapter only

    x = tokens()
    fresh = load_adapter(copy.deepcopy(base), path)
    torch.testing.assert_close(fresh(x)[0], model(x)[0], rtol=0, atol=0)
    assert {n: a.rank for n, a in adalora_adapters(fresh)} == ranks
    save_adapter(fresh, tmp_path / "again.pt")  # and saving the loaded one gives the same file content
    again = read_adapter_file(tmp_path / "again.pt")
    assert again["config"] == obj["config"]
    assert all(torch.equal(again["tensors"][k], v) for k, v in obj["tensors"].items())
    load_adapter(fresh, path)  # into an existing AdaLoRA adapter of the same name
    torch.testing.assert_close(fresh(x)[0], model(x)[0], rtol=0, atol=0)


def test_loading_an_adalora_file_into_a_lora_adapter_is_refused(tmp_path):
    model = adapted()
    random_lambdas_(model)
    save_adapter(model, tmp_path / "a.pt")
    other = apply_lora(tiny_gpt(), TARGETS, r=6, alpha=16)
    with pytest.raises(ValueError, match="adalora: file True, model False"):
        load_adapter(other, tmp_path / "a.pt")


# -- bad input ---------------------------------------------------------------------------------

def test_bad_ranks_are_clear_errors():
    with pytest.raises(ValueError, match=r"target_r=9 must be in 1..init_r=6"):
        apply_adalora(tiny_gpt(), TARGETS, init_r=6, target_r=9, alpha=16)
    with pytest.raises(ValueError, match=r"init_r=40 is not a valid rank for 'blocks.0.attn.q_proj' \(32 -> 32\)"):
        apply_adalora(tiny_gpt(), TARGETS, init_r=40, target_r=8, alpha=16)
    with pytest.raises(TypeError, match="init_r must be an integer, got 6.0"):
        apply_adalora(tiny_gpt(), TARGETS, init_r=6.0, target_r=3, alpha=16)
    model = tiny_gpt()
    with pytest.raises(ValueError):  # validated before anything changes
        apply_adalora(model, TARGETS, init_r=6, target_r=9, alpha=16)
    assert not lora_layers(model)


def test_bad_schedules_and_betas_are_clear_errors():
    model = adapted()
    with pytest.raises(ValueError, match=r"t_init \+ t_final = 40 \+ 60 = 100 must be less than total_steps=100"):
        RankAllocator(model, total_steps=100, t_init=40, t_final=60, delta_t=10)
    for beta in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"beta1 must be a number in \[0, 1\).*got {beta}"):
            RankAllocator(model, total_steps=100, t_init=10, t_final=20, delta_t=10, beta1=beta)
        with pytest.raises(ValueError, match=rf"beta2 must be a number in \[0, 1\).*got {beta}"):
            RankAllocator(model, total_steps=100, t_init=10, t_final=20, delta_t=10, beta2=beta)
    with pytest.raises(ValueError, match="delta_t must be an integer >= 1, got 0"):
        RankAllocator(model, total_steps=100, t_init=10, t_final=20, delta_t=0)
    with pytest.raises(ValueError, match="no active AdaLoRA adapter"):
        RankAllocator(tiny_gpt(), total_steps=100, t_init=10, t_final=20, delta_t=10)


def test_negative_gamma_is_a_clear_error():
    model = adapted()
    for gamma in (-0.1, float("nan")):
        with pytest.raises(ValueError, match=f"gamma must be a finite number >= 0.*got {gamma}"):
            orthogonal_regularizer(model, gamma)


def test_allocator_before_backward_is_a_clear_error():
    model = adapted()
    allocator = RankAllocator(model, total_steps=10, t_init=2, t_final=2, delta_t=1)
    with pytest.raises(RuntimeError, match=r"step\(step=0\): blocks.0.attn.q_proj.lora_B has no gradient.*after "
                                           r"loss.backward\(\)"):
        allocator.step(0)
    with pytest.raises(ValueError, match=r"step must be an integer in 0..9 \(total_steps=10\), got 10"):
        allocator.step(10)


def test_adalora_layers_take_no_lora_adapter_and_do_not_combine():
    model = adapted()
    with pytest.raises(ValueError, match="holds AdaLoRA adapter"):
        apply_lora(model, ["q_proj"], r=4, alpha=8, adapter_name="second")
    with pytest.raises(ValueError, match="AdaLoRA adapts plain nn.Linear layers; 'blocks.0.attn.q_proj' is already"):
        apply_adalora(model, ["q_proj"], init_r=4, target_r=2, alpha=8, adapter_name="second")
    with pytest.raises(ValueError, match="is an AdaLoRA adapter"):
        add_weighted_adapter(model, ["default"], [1.0], "mix")
    assert all(list(layer.adapters) == ["default"] for _, layer in lora_layers(model))  # nothing was added
