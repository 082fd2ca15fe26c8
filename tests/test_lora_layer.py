"""LoRALinear and LoRAEmbedding on their own: init, the fast path against the formula, merging."""
import math

import pytest
import torch
import torch.nn as nn

from minilora import LoRAEmbedding, LoRALinear


def make_layer(in_features=16, out_features=24, r=4, alpha=8, bias=True, dropout=0.0, random_B=True, seed=0):
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(in_features, out_features, bias=bias), r=r, alpha=alpha, dropout=dropout)
    if random_B:  # as after some training, so that the adapter path matters
        with torch.no_grad():
            layer.lora_B.normal_()
    return layer


def run_with_grads(fn, x, layer, grad_y, seed=123):
    """Output and gradients (x, A, B, bias) of fn(x), with a fixed dropout seed."""
    params = [x, layer.lora_A, layer.lora_B, layer.base.bias]
    params = [p for p in params if p is not None and p.requires_grad]
    for p in params:
        p.grad = None
    torch.manual_seed(seed)
    y = fn(x)
    (y.float() * grad_y).sum().backward()
    return [y.detach()] + [p.grad.clone() for p in params]


def formula(layer):
    """layer's forward with the fused path off: the formula as written, with plain autograd."""
    def run(x):
        layer.fused = False
        try:
            return layer(x)
        finally:
            layer.fused = True
    return run


def test_forward_shows_the_formula_and_the_fused_branch_is_the_default():
    layer = make_layer()
    assert layer.fused is True
    x = torch.randn(4, 16)
    y_formula = formula(layer)(x)
    assert y_formula.grad_fn.name() == "AddBackward0"  # base(x) + (...) * s, as written
    y_fused = layer(x)  # a view of the Function's (N, out) output
    assert "LoRALinearFunction" in y_fused.grad_fn.next_functions[0][0].name()
    expected = layer.base(x) + (x @ layer.lora_A.T @ layer.lora_B.T) * layer.scaling
    torch.testing.assert_close(y_formula, expected, rtol=0, atol=0)


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# The fast path takes a different route when the output is narrower than the input, as wide
# as it, or wider, folds only with at least as many tokens as the weight is wide, and splits
# the token sums in backward when the token count allows (fast_path.py). Every shape below
# goes through each route: 15 tokens (too few to fold, odd for a split) and 32 (both).
SHAPES = [(16, 24), (24, 16), (16, 16)]
TOKENS = [(3, 5), (4, 8)]


@pytest.mark.parametrize("in_features,out_features", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_starts_exactly_equal_to_base(in_features, out_features, bias):
    layer = make_layer(in_features, out_features, bias=bias, random_B=False)
    if bias:
        nn.init.normal_(layer.base.bias)
    for lead in TOKENS:
        x = torch.randn(*lead, in_features)
        assert torch.equal(layer(x), layer.base(x))


def test_shapes_init_and_scaling():
    layer = make_layer(in_features=16, out_features=24, r=4, alpha=8, random_B=False)
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (24, 4)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(16)  # Kaiming-uniform, a=sqrt(5): bound 1/sqrt(in)
    assert layer.lora_A.std() > 0
    assert layer.scaling == 8 / 4
    rs = LoRALinear(nn.Linear(16, 24), r=4, alpha=8, rslora=True)
    assert rs.scaling == 8 / math.sqrt(4)


def test_gradients_reach_only_A_and_B():
    layer = make_layer()
    layer(torch.randn(4, 16)).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert not layer.base.weight.requires_grad


@pytest.mark.parametrize("in_features,out_features", SHAPES)
@pytest.mark.parametrize("lead", TOKENS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fast_path_matches_formula_fp32(in_features, out_features, lead, bias, dropout):
    layer = make_layer(in_features, out_features, bias=bias, dropout=dropout).train()
    if bias:
        layer.base.bias.requires_grad_(True)
    x = torch.randn(*lead, in_features, requires_grad=True)
    grad_y = torch.randn(*lead, out_features)
    fast = run_with_grads(layer, x, layer, grad_y)
    ref = run_with_grads(formula(layer), x, layer, grad_y)
    assert len(fast) == len(ref) == (5 if bias else 4)  # y and the grads of x, A, B (and b)
    for a, b in zip(fast, ref):  # fp32 rounding: the two sum the same products in other orders
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fast_path_output_takes_in_place_ops():
    # The output is a tensor of its own, not a view of a wider product: in-place ops after
    # the layer (nn.ReLU(inplace=True)) must work and give the right gradients.
    for in_features, out_features in SHAPES:
        layer = make_layer(in_features, out_features)
        x = torch.randn(4, 8, in_features, requires_grad=True)
        torch.relu_(layer(x)).sum().backward()
        grads = [x.grad.clone(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone()]
        x.grad = layer.lora_A.grad = layer.lora_B.grad = None
        torch.relu(formula(layer)(x)).sum().backward()
        for a, b in zip(grads, [x.grad, layer.lora_A.grad, layer.lora_B.grad]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dropout_acts_on_the_adapter_input_only():
    layer = make_layer(dropout=0.5).train()
    x = torch.randn(64, 16)
    with torch.no_grad():
        y1, y2 = layer(x), layer(x)
        assert not torch.equal(y1, y2)  # different masks
        layer.eval()
        assert torch.equal(layer(x), layer(x))  # no dropout in eval
        expected = layer.base(x) + layer.scaling * x @ layer.lora_A.t() @ layer.lora_B.t()
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("in_features,out_features", SHAPES)
def test_fast_path_skips_input_grad_when_not_needed(in_features, out_features):
    layer = make_layer(in_features, out_features)
    x = torch.randn(4, 8, in_features)  # does not require grad
    grad_y = torch.randn(4, 8, out_features)
    (layer(x) * grad_y).sum().backward()
    fast = [layer.lora_A.grad.clone(), layer.lora_B.grad.clone()]
    layer.lora_A.grad = layer.lora_B.grad = None
    (formula(layer)(x) * grad_y).sum().backward()
    torch.testing.assert_close(fast, [layer.lora_A.grad, layer.lora_B.grad], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("in_features,out_features", SHAPES)
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fast_path_matches_formula_bf16(in_features, out_features, dropout):
    layer = make_layer(in_features, out_features, dropout=dropout).to(torch.bfloat16).train()
    layer.base.bias.requires_grad_(True)
    x = torch.randn(4, 8, in_features, dtype=torch.bfloat16, requires_grad=True)
    grad_y = torch.randn(4, 8, out_features)
    fast = run_with_grads(layer, x, layer, grad_y)
    ref = run_with_grads(formula(layer), x, layer, grad_y)
    assert fast[0].dtype == torch.bfloat16
    for a, b in zip(fast, ref):
        assert relative_error(a, b) < 3e-2


def test_fast_path_under_autocast_bf16():
    layer = make_layer().train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    grad_y = torch.randn(3, 5, 24)
    full_precision = run_with_grads(formula(layer), x, layer, grad_y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = run_with_grads(layer, x, layer, grad_y)
        ref = run_with_grads(formula(layer), x, layer, grad_y)
    assert fast[0].dtype == torch.bfloat16
    assert layer.lora_A.grad.dtype == torch.float32  # fp32 parameters get fp32 grads
    for a, b, c in zip(fast, ref, full_precision):
        assert relative_error(a, b) < 3e-2
        assert relative_error(a, c) < 3e-2


def test_merge_unmerge():
    layer = make_layer()
    x = torch.randn(4, 7, 16)
    w0 = layer.base.weight.detach().clone()
    y = layer(x)
    layer.merge()
    assert layer.merged
    assert torch.equal(layer(x), layer.base(x))  # merged: exactly the base layer's forward
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.base.weight, w0 + layer.delta_weight())
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)


def test_merge_twice_and_unmerge_unmerged_are_errors():
    layer = make_layer()
    with pytest.raises(RuntimeError, match="no adapter is merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


def test_100_merge_cycles_keep_W0():
    layer = make_layer()
    w0 = layer.base.weight.detach().clone()
    for _ in range(100):
        layer.merge()
        layer.unmerge()
    assert (layer.base.weight - w0).abs().max() <= 1e-6


def test_rank_of_delta_W_is_at_most_r():
    layer = make_layer(in_features=32, out_features=32, r=3, random_B=False)
    opt = torch.optim.SGD([layer.lora_A, layer.lora_B], lr=0.1)
    x, target = torch.randn(64, 32), torch.randn(64, 32)
    for _ in range(5):
        loss = ((layer(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.count_nonzero(layer.lora_B) > 0
    assert torch.linalg.matrix_rank(layer.delta_weight().detach()) <= 3


def test_train_and_eval_change_nothing():
    layer = make_layer()
    x = torch.randn(4, 16)
    w0, y = layer.base.weight.detach().clone(), layer(x)
    for mode in (False, True, False):
        layer.train(mode)
        assert not layer.merged
        assert torch.equal(layer.base.weight, w0)
        assert torch.equal(layer(x), y)


@pytest.mark.parametrize("r, match", [(0, "r=0"), (-2, "r=-2"), (9, r"r=9 .*1\.\.8")])
def test_bad_rank_is_a_clear_error(r, match):
    with pytest.raises(ValueError, match=match):
        LoRALinear(nn.Linear(8, 12), r=r, alpha=8)


@pytest.mark.parametrize("r", [2.5, "4", None, True])
def test_non_integer_rank_is_a_clear_error(r):
    with pytest.raises(TypeError, match="r must be an integer"):
        LoRALinear(nn.Linear(8, 12), r=r, alpha=8)


@pytest.mark.parametrize("alpha, error, match", [
    (0, ValueError, "alpha must be .* got 0"), (-1.5, ValueError, "got -1.5"),
    (float("nan"), ValueError, "got nan"), ("16", TypeError, "got '16'"), (None, TypeError, "got None"),
])
def test_bad_alpha_is_a_clear_error(alpha, error, match):
    with pytest.raises(error, match=match):
        LoRALinear(nn.Linear(8, 12), r=2, alpha=alpha)


def test_bad_dropout_and_base_are_clear_errors():
    with pytest.raises(ValueError, match="dropout must be in"):
        LoRALinear(nn.Linear(8, 12), r=2, alpha=4, dropout=1.0)
    with pytest.raises(TypeError, match="wraps an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(8, 12, 3), r=2, alpha=4)


def test_embedding_starts_equal_and_follows_the_formula():
    torch.manual_seed(0)
    layer = LoRAEmbedding(nn.Embedding(50, 12), r=4, alpha=8)
    idx = torch.randint(0, 50, (3, 7))
    assert torch.equal(layer(idx), layer.base(idx))
    assert torch.count_nonzero(layer.lora_A) == 0 and layer.lora_B.std() > 0  # A zeros, B normal (PEFT)
    with torch.no_grad():
        layer.lora_A.normal_()
    expected = (layer.base.weight + layer.delta_weight())[idx]
    torch.testing.assert_close(layer(idx), expected, atol=1e-5, rtol=1e-5)
    y = layer(idx)
    layer.merge()
    assert torch.equal(layer(idx), layer.base(idx))
    torch.testing.assert_close(layer(idx), y, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    y.sum().backward()
    assert layer.base.weight.grad is None and layer.lora_A.grad is not None


def test_embedding_rejects_dropout_and_linear_only_variants():
    with pytest.raises(ValueError, match="token ids"):
        LoRAEmbedding(nn.Embedding(50, 12), r=4, alpha=8).add_adapter("other", r=4, alpha=8, dropout=0.1)
    with pytest.raises(ValueError, match="DoRA is implemented for nn.Linear only"):
        LoRAEmbedding(nn.Embedding(50, 12), r=4, alpha=8).add_adapter("other", r=4, alpha=8, dora=True)
