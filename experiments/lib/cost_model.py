"""What one training step costs, predicted from the model's shape alone: parameters, memory by
part, file sizes and FLOPs, for full fine-tuning, LoRA, QLoRA and the frozen floor.

    from experiments.lib.cost_model import predict, shape_of
    predict(shape_of(config), "lora", r=8, batch_size=4, seq_len=128)["bytes"]

Four methods (the names experiments/scale.py uses):
    full    every parameter trains
    lora    A (r, in) and B (out, r) on each target linear of every block; everything else frozen
    qlora   lora, with each target's W0 stored in 4-bit NF4 with double quantization (QLoRA)
    floor   every weight frozen and no adapter; only the norms train (experiments/bench/lora.py):
            the least any adapter method can cost

Notation: L layers, C width (n_embd), H the MLP's hidden width (4C in our GPT), V vocabulary,
nh heads, B batch, T sequence length, N = B T tokens, r rank, P parameters.

The memory parts are those experiments/lib/memory.py reads from the tensors, and the saved
activations are what this GPT's autograd saves, op by op (activation_walk below), so that a
prediction can be checked against a measurement to the byte. Random or trained values cost the
same: costs depend only on shapes and dtypes.

Beyond our GPT, a Shape also describes GPT-3 and LLaMA (a SwiGLU MLP, RMSNorm, no biases, an
untied head, no learned positions), for extrapolation; what is modelled there rather than
measured is said where it is (SwiGLU, RMSNorm, activation checkpointing).
"""
import math
from dataclasses import dataclass, replace

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd-momentum": 1, "sgd": 0}  # state tensors per parameter
METHODS = ("full", "lora", "qlora", "floor")
ADAPTER_METHODS = ("lora", "qlora")
QUANT_BLOCK = 64  # QLoRA: values per block, one absmax constant each
QUANT_BLOCK_2 = 256  # double quantization: block constants per second-level block
ADAMW_FLOPS_PER_PARAM = 12  # m, v updates (3 + 4), the denominator sqrt(v) + eps (2), the step (2), decay (1)
DEQUANT_FLOPS_PER_VALUE = 2  # one table look-up and one multiply by the block constant


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's shape, as far as costs go. The defaults are our GPT's kind:
    a GELU MLP of width 4C, LayerNorms and linears with biases, learned positions, lm_head tied
    to the token embedding. GPT-3 is the same kind; LLaMA sets mlp="swiglu", norm="rmsnorm",
    bias=False, tie_weights=False, positions=0 (rotary, no parameters)."""
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = 256
    positions: int = 1024  # rows of the learned position embedding (our block_size)
    mlp_hidden: int = 0  # 0: 4 * n_embd
    mlp: str = "gelu"  # "gelu": down(gelu(up x)); "swiglu": down(silu(gate x) * up x)
    norm: str = "layernorm"  # "layernorm": weight and bias (if bias); "rmsnorm": weight only
    bias: bool = True
    tie_weights: bool = True

    def __post_init__(self):
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")

    @property
    def hidden(self):
        return self.mlp_hidden or 4 * self.n_embd

    def block_linears(self):
        """[(name, in, out)] of one block, in forward order."""
        C, H = self.n_embd, self.hidden
        attention = [(name, C, C) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if self.mlp == "gelu":
            return attention + [("up_proj", C, H), ("down_proj", H, C)]
        return attention + [("gate_proj", C, H), ("up_proj", C, H), ("down_proj", H, C)]


def shape_of(config):
    """The Shape of a nanogpt GPTConfig."""
    return Shape(config.n_layer, config.n_head, config.n_embd, config.vocab_size, config.block_size,
                 bias=config.bias, tie_weights=config.tie_weights)


def check_targets(shape, targets):
    """targets as a list of block-linear names ("all-linear": every one); a clear error otherwise."""
    names = [name for name, _, _ in shape.block_linears()]
    if targets == "all-linear":
        return names
    unknown = [t for t in targets if t not in names]
    if unknown or not targets:
        raise ValueError(f"targets must be names of a block's linear layers {names} or 'all-linear'; got {targets!r}")
    return list(targets)


# -- parameters -----------------------------------------------------------------------------

def parameter_counts(shape):
    """Parameters of the base model, by kind, each tensor once (a tied head is the embedding).

    embedding    V C                        one C-vector per token
    positions    T_max C                    one C-vector per position (0 with rotary positions)
    linear       L sum(in * out)            the block linears' weights
    bias         L sum(out)                 one per output, if bias
    norm         (2 L + 1) C (x2 if a LayerNorm has a bias)   two norms per block and ln_f
    head         V C if untied, else 0      tied: lm_head.weight is wte.weight
    Tensors: every one of the above is one tensor per layer (per linear, per norm)."""
    L, C, V = shape.n_layer, shape.n_embd, shape.vocab_size
    linears = shape.block_linears()
    norm_vectors = 2 if shape.norm == "layernorm" and shape.bias else 1
    counts = {
        "embedding": V * C,
        "positions": shape.positions * C,
        "linear": L * sum(i * o for _, i, o in linears),
        "bias": L * sum(o for _, _, o in linears) if shape.bias else 0,
        "norm": (2 * L + 1) * norm_vectors * C,
        "head": 0 if shape.tie_weights else V * C,
    }
    tensors = {
        "embedding": 1, "positions": 1 if shape.positions else 0, "linear": L * len(linears),
        "bias": L * len(linears) if shape.bias else 0, "norm": (2 * L + 1) * norm_vectors,
        "head": 0 if shape.tie_weights else 1,
    }
    return counts, tensors


def adapted_linears(shape, targets):
    """[(in, out)] of every adapted linear in the model: each target in each of the L blocks."""
    chosen = set(check_targets(shape, targets))
    return [(i, o) for _ in range(shape.n_layer) for name, i, o in shape.block_linears() if name in chosen]


def adapter_parameters(shape, r, targets):
    """LoRA's trainable parameters: A (r, in) and B (out, r) per adapted linear: r (in + out) each."""
    return sum(r * (i + o) for i, o in adapted_linears(shape, targets))


def quantized_bytes(numel, block=QUANT_BLOCK, double_quant=True):
    """Bytes of one weight in 4-bit NF4 (QLoRA): 4 bits per value, padded to whole blocks, plus the
    block constants: an fp32 absmax per block of 64 (4 + 32/64 = 4.5 bits per value), or with
    double quantization an 8-bit code per block, an fp32 scale per 256 blocks and one fp32 mean
    per tensor (4 + 8/64 + 32/(64 * 256) = 4.127 bits per value)."""
    blocks = math.ceil(numel / block)
    codes = blocks * block // 2  # two 4-bit codes per byte
    if not double_quant:
        return codes + 4 * blocks
    return codes + blocks + 4 * math.ceil(blocks / QUANT_BLOCK_2) + 4


# -- memory ---------------------------------------------------------------------------------

def state_bytes(shape, method, r=8, targets="all-linear", dtype="fp32", optimizer="adamw", optimizer_dtype=None,
                master_weights=False, double_quant=True):
    """Weights, gradients and optimizer state, in bytes, and the parameter counts.

    weights      P_total * bytes(dtype), adapters included; QLoRA: each target's W0 in
                 quantized_bytes() instead of P * bytes
    gradients    P_trainable * bytes(dtype): one gradient per trainable value
    optimizer    states * P_trainable * bytes(optimizer_dtype), plus 4 bytes per trainable tensor
                 (torch's AdamW keeps its step count as a float32 tensor per parameter)
    master       4 * P_trainable with master_weights: mixed precision keeps an fp32 copy of
                 every trainable 16-bit weight for the update (0 otherwise)
    Only the trainable parameters carry gradients and optimizer state: that is LoRA's saving."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    counts, tensors = parameter_counts(shape)
    base = sum(counts.values())
    b, ob = DTYPE_BYTES[dtype], DTYPE_BYTES[optimizer_dtype or dtype]
    n_states = OPTIMIZER_STATES[optimizer]
    adapter = adapter_parameters(shape, r, targets) if method in ADAPTER_METHODS else 0
    weights = (base + adapter) * b
    if method == "full":
        trainable, trainable_tensors = base, sum(tensors.values())
    elif method == "floor":
        trainable, trainable_tensors = counts["norm"], tensors["norm"]
    else:
        trainable, trainable_tensors = adapter, 2 * len(adapted_linears(shape, targets))
    if method == "qlora":  # each target's W0 leaves the parameters and comes back in 4 bits
        weights += sum(quantized_bytes(i * o, double_quant=double_quant) - i * o * b
                       for i, o in adapted_linears(shape, targets))
    return {
        "total_params": base + adapter,
        "trainable_params": trainable,
        "weights": weights,
        "grads": trainable * b,
        "optimizer": n_states * trainable * ob + (4 * trainable_tensors if n_states else 0),
        "master": 4 * trainable if master_weights else 0,
    }


def step_walk(shape, method, r, targets, batch_size, seq_len, dtype="fp32", autocast=False):
    """One training step of our GPT, walked in forward order as autograd sees it: the bytes the
    forward pass saves for backward (each storage once, parameters left out, as
    experiments/lib/memory.py's SavedActivations counts them) and the matmul FLOPs of forward,
    input gradients, weight gradients and adapter products.

    Autograd saves a tensor for an op only when backward needs it for a gradient someone wants:
    an op's input is needed for its weight's gradient (so only if the weight trains), its weight
    for its input's gradient (so only if the input requires grad). So what is saved depends on
    where the trainable parameters are: `grad` below says whether the residual stream requires
    grad at that point (with LoRA it does not until the first adapter: nothing before it trains).

    What each op saves (b bytes per value of the compute dtype; fp32 statistics):
        embedding      the token ids (8 N), the position ids (8 T), if the embeddings train
        norm           its input (b N C) and mean, rstd (4 N each; RMSNorm: rstd only)
        linear         its input (b N in) if its weight trains; its weight (a parameter) otherwise
        LoRA linear    its input x always (dL/dA needs it), and s x A^T (b r N) (fast_path.py)
        attention      q, k, v, the output (b N C each) and the log-sum-exp (4 B nh T): the fused
                       kernel (flash) keeps no T x T matrix; the output's storage is also o_proj's input
        GELU           its input (b N H); the down projection its output (b N H) if it saves x
        SwiGLU         silu's input, both factors of the product (3 b N H), down's input (b N H)
                       (as plain PyTorch would; our GPT has no SwiGLU: modelled, not measured)
        loss           the log-probabilities (4 N V: logits.float()), the targets (8 N), a scalar
    autocast (bf16 on CUDA, parameters fp32): every linear casts an fp32 input to a bf16 copy of
    its own (q, k, v three copies) and saves it, and saves a bf16 copy of its weight (2 in out)
    when its input needs a gradient; a LoRA linear saves bf16 copies of x, W0 (none for 4-bit
    W0), A and B. Checked to the byte under CPU autocast (tests/test_scale.py); CUDA's attention
    kernels may save a few more bytes per layer (random-number state), not checked here.

    FLOPs (a multiply-add is 2): a linear's forward, input gradient and weight gradient are
    2 N in out each; attention's two products are 2 N T C each, halved by the causal mask
    (the kernel skips the masked half), and backward has twice forward's; LoRA adds x A^T and
    (x A^T) B^T in forward (2 N r (in + out)), g B, (g B) A, dA and dB in backward
    (4 N r (in + out), less 2 N r in when dL/dx is not needed)."""
    C, H, V, nh = shape.n_embd, shape.hidden, shape.vocab_size, shape.n_head
    N = batch_size * seq_len
    b = 2 if autocast else DTYPE_BYTES[dtype]  # the compute dtype of matmul outputs
    stats_per_norm = 8 * N if shape.norm == "layernorm" else 4 * N
    resid_b = 4 if autocast else b  # the residual stream (and norms) are fp32 under autocast
    chosen = set(check_targets(shape, targets)) if method in ADAPTER_METHODS else set()
    full, norms_train = method == "full", method in ("full", "floor")
    saved = 0
    flops = {"forward": 0, "input_grads": 0, "weight_grads": 0, "adapter": 0, "adapter_forward": 0}

    if full:  # wte and wpe train: their backward needs the ids
        saved += 8 * N + (8 * seq_len if shape.positions else 0)
    grad = full  # does the residual stream require grad here?

    def norm(x_grad):
        """A norm: saves input and statistics when its input or its own parameters need grads."""
        nonlocal saved
        if x_grad or norms_train:
            saved += resid_b * N * C + stats_per_norm
        return x_grad or norms_train

    def linear(name, n_in, n_out, x_grad, x_saved, x_fp32):
        """One linear layer; x_saved: x's storage is already counted (and no cast copy is made).
        Returns (output requires grad, x is now saved)."""
        nonlocal saved
        adapted = name in chosen
        flops["forward"] += 2 * N * n_in * n_out
        if x_grad:
            flops["input_grads"] += 2 * N * n_in * n_out
        if full:
            flops["weight_grads"] += 2 * N * n_in * n_out
        if adapted:
            flops["adapter_forward"] += 2 * N * r * (n_in + n_out)
            flops["adapter"] += 6 * N * r * (n_in + n_out)  # forward's two products, backward's four
            if not x_grad:
                flops["adapter"] -= 2 * N * r * n_in  # (g B) A goes into dL/dx: not needed
        copy = autocast and x_fp32  # under autocast an fp32 input is cast to a bf16 copy per layer
        if full or adapted:  # x kept: for dW (full) or dA (LoRA)
            if copy:
                saved += 2 * N * n_in
            elif not x_saved:
                saved += b * N * n_in
                x_saved = True
        if adapted:
            saved += b * r * N  # s x A^T, transposed to (r, N)
            if autocast:
                saved += 2 * r * (n_in + n_out) + (0 if method == "qlora" else 2 * n_in * n_out)
        elif autocast and x_grad:
            saved += 2 * n_in * n_out  # the bf16 copy of W, for dL/dx
        return x_grad or full or adapted, x_saved

    for _ in range(shape.n_layer):
        ln_grad = norm(grad)  # ln_1
        qkv_grads, x_saved = [], False
        for name in ("q_proj", "k_proj", "v_proj"):
            out_grad, x_saved = linear(name, C, C, ln_grad, x_saved, True)
            qkv_grads.append(out_grad)
        attn_grad = any(qkv_grads)
        flops["forward"] += 2 * N * seq_len * C  # Q K^T and P V, causal half
        if attn_grad:
            saved += 4 * b * N * C + 4 * batch_size * nh * seq_len  # q, k, v, output; log-sum-exp
            flops["input_grads"] += 4 * N * seq_len * C
        o_grad, _ = linear("o_proj", C, C, attn_grad, attn_grad, False)  # its input is attention's saved output
        grad = grad or o_grad
        ln_grad = norm(grad)  # ln_2
        if shape.mlp == "gelu":
            up_grad, _ = linear("up_proj", C, H, ln_grad, False, True)
            if up_grad:
                saved += b * N * H  # GELU's input
            down_grad, _ = linear("down_proj", H, C, up_grad, False, False)  # saves GELU's output if needed
        else:
            gate_grad, x_saved = linear("gate_proj", C, H, ln_grad, False, True)
            up_grad, _ = linear("up_proj", C, H, ln_grad, x_saved, True)
            if gate_grad or up_grad:
                saved += 3 * b * N * H  # silu's input; silu(gate x) and up x, the product's factors
            down_grad, _ = linear("down_proj", H, C, gate_grad or up_grad, False, False)
        grad = grad or down_grad

    ln_grad = norm(grad)  # ln_f
    flops["forward"] += 2 * N * C * V  # lm_head
    if ln_grad:
        flops["input_grads"] += 2 * N * C * V
    if full:  # the head (tied or not) trains: it keeps its input, and computes dW
        flops["weight_grads"] += 2 * N * C * V
        saved += (2 if autocast else b) * N * C
    if autocast and ln_grad:
        saved += 2 * C * V  # the bf16 copy of the head's weight, for dL/dx
    if ln_grad:
        saved += 4 * N * V + 8 * N + 4  # log-softmax output (fp32), targets, total weight
    return saved, flops


def checkpointed_activation_bytes(shape, method, r, targets, batch_size, seq_len, dtype="fp32"):
    """Activation checkpointing (not in our GPT; for extrapolation only): keep each block's input
    (b N C per block) and recompute the block in backward, so at the peak one block's saved
    tensors are alive again: L b N C + (one block's, a later block's as step_walk counts it)
    + (what lies outside the blocks: embeddings, ln_f, head, loss)."""
    walk = lambda n_layer: step_walk(replace(shape, n_layer=n_layer), method, r, targets, batch_size, seq_len,
                                     dtype)[0]
    one_block = walk(2) - walk(1)  # the second block: with LoRA the first saves a little less
    outside = walk(1) - one_block
    return shape.n_layer * DTYPE_BYTES[dtype] * batch_size * seq_len * shape.n_embd + one_block + outside


# -- FLOPs, files, everything ---------------------------------------------------------------

def predict(shape, method="full", r=8, targets="all-linear", batch_size=1, seq_len=None, dtype="fp32",
            autocast=False, optimizer="adamw", optimizer_dtype=None, master_weights=False, double_quant=True,
            checkpointing=False):
    """Everything this module predicts for one training step, as a dict:

        total_params, trainable_params
        bytes      weights, grads, optimizer, master, activations (step_walk; with checkpointing,
                   checkpointed_activation_bytes), total (their sum: the step's peak, less
                   backward's transient buffers and the allocator's slack)
        files      checkpoint: the full model's tensors (P_base * bytes); adapter: A and B only
                   (r (in + out) * bytes per adapted linear; 0 without adapters). Payloads: a
                   torch.save file adds about 270 bytes per tensor of zip and pickle around them
        flops      forward, input_grads, weight_grads, adapter (step_walk; adapter_forward is
                   the forward part of adapter), optimizer
                   (~12 per trainable parameter for AdamW), dequantize (QLoRA: each 4-bit W0 is
                   dequantized in forward and again in backward, 2 FLOPs per value each time),
                   matmul (the first four: what the FLOP model of step time uses), total

    seq_len defaults to shape.positions (the full context)."""
    seq_len = seq_len or shape.positions
    if not seq_len:
        raise ValueError("give seq_len: this shape has no learned positions to default to")
    states = state_bytes(shape, method, r, targets, dtype, optimizer, optimizer_dtype, master_weights, double_quant)
    act, flops = step_walk(shape, method, r, targets, batch_size, seq_len, dtype, autocast)
    if checkpointing:
        act = checkpointed_activation_bytes(shape, method, r, targets, batch_size, seq_len, dtype)
    parts = {k: states[k] for k in ("weights", "grads", "optimizer", "master")}
    parts["activations"] = act
    parts["total"] = sum(parts.values())
    b = DTYPE_BYTES[dtype]
    counts, _ = parameter_counts(shape)
    adapter = adapter_parameters(shape, r, targets) if method in ADAPTER_METHODS else 0
    flops["matmul"] = flops["forward"] + flops["input_grads"] + flops["weight_grads"] + flops["adapter"]
    flops["optimizer"] = ADAMW_FLOPS_PER_PARAM * states["trainable_params"] if OPTIMIZER_STATES[optimizer] else 0
    quantized = sum(i * o for i, o in adapted_linears(shape, targets)) if method == "qlora" else 0
    flops["dequantize"] = 2 * DEQUANT_FLOPS_PER_VALUE * quantized
    flops["total"] = flops["matmul"] + flops["optimizer"] + flops["dequantize"]
    return {
        "method": method, "r": r if method in ADAPTER_METHODS else None,
        "targets": check_targets(shape, targets) if method in ADAPTER_METHODS else None,
        "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype, "autocast": autocast,
        "total_params": states["total_params"], "trainable_params": states["trainable_params"],
        "bytes": parts,
        "files": {"checkpoint": sum(counts.values()) * b, "adapter": adapter * b},
        "flops": flops,
    }
