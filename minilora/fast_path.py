"""The LoRA linear layer's forward and backward as one autograd Function.

    y = x W0^T + b + s (x A^T) B^T        s = scaling, x (N, in), A (r, in), B (out, r)

Why: written as `base(x) + (x @ A.T @ B.T) * s`, autograd runs a full-size (N, out) multiply
by s and a full-size add in forward, and more of them in backward, each a pass over memory;
on CPU those passes eat most of what freezing W0 saved. Here no elementwise op touches a
full-size tensor: s scales A or B (the smallest tensors), and the adapter's share of the output
is written where the bias would be, before the base GEMM accumulates onto it:

    forward:   sAx   = s A x^T                    (r, N)
               y     = b + sAx^T B^T              (N, out)  a K=r product, writes y once
               y    += x W0^T                     the base GEMM, accumulating (beta=1)
    backward:  g     = dL/dy                      (N, out)
               sBg   = s B^T g^T                  (r, N)
               dL/dx = g W0 + sBg^T A             mm, then addmm_ in place  (N, in)
               dL/dA = sBg x                      (r, in)
               dL/dB = (sAx g)^T = s g^T x A^T    (out, r)
               dL/db = sum over rows of g         (out,)

The rank-r intermediates are kept as (r, N), not (N, r): at small r (8), BLAS runs these skinny
products up to 1.7x faster that way on CPU (from r = 16 on it makes little difference).
The out x in product B A is never formed, and backward keeps only x (which the graph holds
anyway) and sAx (r, N). With dropout on the adapter's input, x_lora = dropout(x) goes
through A instead of x, and its gradient is returned separately so that autograd applies
the dropout mask.
"""
import torch


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling, x_lora):
        # x (N, in), weight (out, in), bias (out,) or None, lora_A (r, in), lora_B (out, r)
        # x_lora (N, in) = dropout(x), or None when the adapter sees x itself
        x_in = x if x_lora is None else x_lora  # (N, in): what A multiplies
        sAx = (lora_A * scaling) @ x_in.t()  # (r, N): s A x for every token (s scales A, the smallest)
        # The adapter's output (and the bias) go in first; the base GEMM then accumulates onto
        # them while it computes anyway, so no separate pass over the full-size y is needed.
        if bias is None:
            y = sAx.t() @ lora_B.t()  # (N, out)
        else:
            y = torch.addmm(bias, sAx.t(), lora_B.t())  # (N, out)
        y.addmm_(x, weight.t())  # (N, out): += x W0^T
        # x is needed for dL/dA when there is no dropout, and for dL/dW0 if W0 trains;
        # with dropout and W0 frozen, keeping it would only cost memory.
        keep_x = x_lora is None or ctx.needs_input_grad[1]
        ctx.save_for_backward(x if keep_x else None, weight, lora_A, lora_B, sAx, x_lora)
        ctx.scaling = scaling
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, lora_A, lora_B, sAx, x_lora = ctx.saved_tensors
        x_in = x if x_lora is None else x_lora  # (N, in)
        grad_y = grad_y.contiguous()  # (N, out): one copy here rather than one inside each matmul
        sBg = (lora_B * ctx.scaling).t() @ grad_y.t()  # (r, N): s B^T g for every token
        grad_x = grad_weight = grad_bias = grad_A = grad_B = grad_x_lora = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ weight  # (N, in): through W0
            if x_lora is None:
                grad_x.addmm_(sBg.t(), lora_A)  # (N, in): += s (g B) A, in place
        if ctx.needs_input_grad[6]:
            grad_x_lora = sBg.t() @ lora_A  # (N, in): autograd takes it through the dropout mask
        if ctx.needs_input_grad[1]:
            grad_weight = grad_y.t() @ x  # (out, in): only if someone unfroze W0
        if ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(0)  # (out,)
        if ctx.needs_input_grad[3]:
            grad_A = sBg @ x_in  # (r, in)
        if ctx.needs_input_grad[4]:
            grad_B = (sAx @ grad_y).t()  # (out, r)
        return grad_x, grad_weight, grad_bias, grad_A, grad_B, None, grad_x_lora


def lora_linear(x, weight, bias, lora_A, lora_B, scaling, x_lora=None):
    """y = x W0^T + b + scaling (x_lora A^T) B^T for x of shape (..., in), through
    LoRALinearFunction; x_lora defaults to x (no dropout). Returns (..., out)."""
    in_features = x.shape[-1]
    lead = x.shape[:-1]
    x = x.reshape(-1, in_features)  # (N, in): a view for contiguous input
    if x_lora is not None:
        x_lora = x_lora.reshape(-1, in_features)  # (N, in)
    tensors = (x, weight, bias, lora_A, lora_B, x_lora)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # The Function runs its own matmuls, so cast its inputs as autocast casts those of
        # F.linear (to e.g. bf16), then run it with autocast off: forward and backward then
        # both work in that dtype, and the casts' backward returns fp32 grads to A and B.
        dtype = torch.get_autocast_dtype(device_type)
        tensors = tuple(None if t is None else t.to(dtype) for t in tensors)
        x, weight, bias, lora_A, lora_B, x_lora = tensors
        with torch.autocast(device_type, enabled=False):
            y = LoRALinearFunction.apply(x, weight, bias, lora_A, lora_B, scaling, x_lora)
    else:
        y = LoRALinearFunction.apply(x, weight, bias, lora_A, lora_B, scaling, x_lora)
    return y.view(*lead, y.shape[-1])  # (..., out)
