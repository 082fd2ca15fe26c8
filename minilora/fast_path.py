"""The LoRA linear layer's forward and backward as one autograd Function.

    y = x W0^T + b + s (x A^T) B^T        s = scaling, x (N, in), A (r, in), B (out, r)

Why: written as `base(x) + (x @ A.T @ B.T) * s`, autograd runs a full-size (N, out) multiply
by s and a full-size add in forward, and more of them in backward, each a pass over memory;
on CPU those passes eat most of what freezing W0 saved. Here no elementwise op touches a
full-size tensor (s scales A or B, the smallest tensors), and the thin rank-r products, which
BLAS runs at a fraction of its speed on big ones, are kept to the unavoidable ones:

    forward, out <= in:  [x W0^T + b | x sA^T]                x A^T rides along the base GEMM
                              = x [W0; sA]^T + [b; 0]          as r more output columns
                         y = (x W0^T + b) + (x sA^T) B^T       one K = r product onto y
    forward, out > in:   y = b + (x sA^T) B^T, then y += x W0^T  (the base GEMM accumulates
                                                               onto the adapter's output)
    backward, in <= out: [g W0 | g sB] = g [W0 | sB]           g = dL/dy (N, out); g B rides
                                                               along the input-gradient GEMM
    backward, in > out:  g sB on its own, then g W0
                         dL/dx = g W0 + (g sB) A               one K = r product onto dL/dx
                         dL/dA = (g sB)^T x                    (r, in)
                         dL/dB = s g^T (x A^T)                 (out, r)
                         dL/db = sum over rows of g            (out,)

Both folds copy W0 for the step, so they are taken only when the tokens outnumber W0's rows
and columns; with fewer (generating a token at a time), the thin products are cheaper.

Why two routes each way: a folded product leaves its wanted part as a strided view of a wider
tensor (N, out + r), and that view must then be copied (forward: the output must be a tensor
of its own, so that in-place ops after the layer work) or is read strided by whoever comes
next (backward). That costs less than the thin product it saves only when the view is the
narrow side of the layer; on the wide side the thin product over the narrow tensor is cheaper.

The out x in product B A is never formed, and backward keeps only x (which the graph holds
anyway) and s x A^T (r, N).

A 4-bit W0 (QLoRA, qlora.py) arrives as a QuantizedWeight instead of a tensor. Forward then
dequantizes it into x's dtype for its products, and backward dequantizes it again rather than
keep forward's copy (which would hold a full-precision W0 per layer from forward to backward:
the memory QLoRA saves). Every product above stays the same. With dropout on the adapter's input, x_lora = dropout(x) goes
through A instead of x (so A cannot ride along the base GEMM, which reads x), and its gradient
is returned separately so that autograd applies the dropout mask.
"""
import torch


def _token_matmul(a, b, chunks=4):
    """a (r, N) @ b (N, C) -> (r, C), a product that sums over the N tokens.

    As one GEMM, BLAS runs this thin shape on one core at a fraction of its speed (measured
    with MKL: 3.1 to 4.4 ms for r=8, N=4096, C=1536 on two cores, against 2.0 ms here). Split the
    tokens into chunks, multiply them as a batch (which BLAS spreads over the cores) and sum
    the partials."""
    r, n = a.shape
    if n % chunks:
        return a @ b
    a_chunks = a.view(r, chunks, n // chunks).transpose(0, 1)  # (chunks, r, N / chunks)
    b_chunks = b.view(chunks, n // chunks, b.shape[1])  # (chunks, N / chunks, C)
    return torch.bmm(a_chunks, b_chunks).sum(0)  # (r, C)


def _fold_pays(n_tokens, weight):
    """A fold copies W0 (out, in) to spare a thin product over an (N, in) or (N, out) tensor:
    worth it only with at least as many tokens as W0 has rows and columns (not, for example,
    when generating one token at a time with the adapter unmerged)."""
    return n_tokens >= max(weight.shape)


def _dense(weight, dtype):
    """W0 as a tensor: itself, or a 4-bit W0 (a QuantizedWeight, qlora.py) dequantized into dtype."""
    return weight if isinstance(weight, torch.Tensor) else weight.dequantize(dtype)


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling, x_lora):
        # x (N, in), weight (out, in) or a 4-bit QuantizedWeight, bias (out,) or None,
        # lora_A (r, in), lora_B (out, r), x_lora (N, in) = dropout(x), or None when the adapter sees x itself
        ctx.quantized = None if isinstance(weight, torch.Tensor) else weight  # dequantized again in backward
        weight = _dense(weight, x.dtype)  # (out, in): for a 4-bit W0, a copy that lives until forward returns
        out_features, in_features = weight.shape
        sA = lora_A * scaling  # (r, in): s scales A, the smallest tensor
        if x_lora is None and out_features <= in_features and _fold_pays(x.shape[0], weight):
            weight_sA = torch.cat([weight, sA])  # (out + r, in): a copy of W0 for this step
            if bias is None:
                xW_xA = x @ weight_sA.t()  # (N, out + r) = [x W0^T | x sA^T]
            else:  # the bias goes in as nn.Linear adds it, so that y equals the base layer's at B = 0
                xW_xA = torch.addmm(torch.cat([bias, bias.new_zeros(len(sA))]), x, weight_sA.t())
            xW, sAx = xW_xA[:, :out_features], xW_xA[:, out_features:]  # views: (N, out), (N, r)
            y = torch.addmm(xW, sAx, lora_B.t())  # (N, out): x W0^T + b + (x sA^T) B^T
        else:
            sAx = (x if x_lora is None else x_lora) @ sA.t()  # (N, r)
            # The adapter's output (and the bias) go in first; the base GEMM then accumulates
            # onto them while it computes anyway, so no separate pass over the full-size y.
            y = sAx @ lora_B.t() if bias is None else torch.addmm(bias, sAx, lora_B.t())  # (N, out)
            y.addmm_(x, weight.t())  # (N, out): += x W0^T
        # x is needed for dL/dA when there is no dropout, and for dL/dW0 if W0 trains;
        # with dropout and W0 frozen, keeping it would only cost memory.
        keep_x = x_lora is None or ctx.needs_input_grad[1]
        ctx.save_for_backward(x if keep_x else None, weight if ctx.quantized is None else None, lora_A, lora_B,
                              sAx.t().contiguous(), x_lora)
        ctx.scaling = scaling
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, lora_A, lora_B, sAx, x_lora = ctx.saved_tensors  # sAx (r, N)
        if ctx.quantized is not None and ctx.needs_input_grad[0]:  # only dL/dx needs W0
            weight = ctx.quantized.dequantize(grad_y.dtype)  # (out, in): the second dequantization
        out_features, in_features = lora_B.shape[0], lora_A.shape[1]
        x_in = x if x_lora is None else x_lora  # (N, in): what A multiplied
        grad_y = grad_y.contiguous()  # (N, out): one copy here rather than one inside each matmul
        sB = lora_B * ctx.scaling  # (out, r)
        grad_x = grad_weight = grad_bias = grad_A = grad_B = grad_x_lora = None
        if ctx.needs_input_grad[0] and in_features <= out_features and _fold_pays(grad_y.shape[0], weight):
            gW_gB = grad_y @ torch.cat([weight, sB], 1)  # (N, in + r) = [g W0 | g sB]; copies W0
            grad_x, gsB = gW_gB[:, :in_features], gW_gB[:, in_features:]  # views: (N, in), (N, r)
        else:  # a wide dL/dx would be left strided, and whoever reads it next pays for that
            gsB = grad_y @ sB  # (N, r)
            if ctx.needs_input_grad[0]:
                grad_x = grad_y @ weight  # (N, in)
        if grad_x is not None and x_lora is None:
            grad_x.addmm_(gsB, lora_A)  # (N, in): += (g sB) A, in place
        if ctx.needs_input_grad[6]:
            grad_x_lora = gsB @ lora_A  # (N, in): autograd takes it through the dropout mask
        if ctx.needs_input_grad[1]:
            grad_weight = grad_y.t() @ x  # (out, in): only if someone unfroze W0
        if ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(0)  # (out,)
        if ctx.needs_input_grad[3]:
            grad_A = _token_matmul(gsB.t(), x_in)  # (r, in)
        if ctx.needs_input_grad[4]:
            grad_B = _token_matmul(sAx, grad_y).t()  # (out, r)
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
        dtype = torch.get_autocast_dtype(device_type)  # a 4-bit W0 is dequantized into it (x's dtype)
        tensors = tuple(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in tensors)
        x, weight, bias, lora_A, lora_B, x_lora = tensors
        with torch.autocast(device_type, enabled=False):
            y = LoRALinearFunction.apply(x, weight, bias, lora_A, lora_B, scaling, x_lora)
    else:
        y = LoRALinearFunction.apply(x, weight, bias, lora_A, lora_B, scaling, x_lora)
    return y.view(*lead, y.shape[-1])  # (..., out)
