"""4-bit quantization of a frozen weight, as QLoRA stores its base model (Dettmers et al. 2023,
arXiv:2305.14314, Sec. 3). Read beside the paper: the names follow its notation.

Block-wise absmax quantization. The weight W (any shape) is flattened row-major and cut into
blocks of 64 values. Each block b keeps one constant, its absmax c_b = max |W_b| (fp32), and
each value keeps a 4-bit code: the index of the level nearest to W / c_b in a table of 16
levels in [-1, 1] (the data type). Dequantization is a table lookup times the block's constant:

    code_i  = argmin_j |W_i / c_b - level_j|        quantize  (4 bits per value)
    W_hat_i = level[code_i] * c_b                    dequantize

Small blocks keep an outlier from flattening the whole tensor's resolution: it only sets the
scale of its own 64 values. Two codes share one uint8 byte (the first in the high nibble), so
the tensor really holds 4 bits per value, plus 32 bits per block: 4 + 32/64 = 4.5 bits.

The data types (tables of levels), all normalised to [-1, 1]:
    NF4   NormalFloat: levels at quantiles of N(0, 1), so that each level is equally likely
          for normally distributed weights (the paper's information-theoretic argument);
          asymmetric, 7 negative levels, 8 positive and an exact zero
    FP4   a 4-bit float, E2M1 (1 sign, 2 exponent, 1 mantissa bit): +-{0, 0.5, 1, 1.5, 2, 3, 4, 6} / 6
    Int4  symmetric integers: k / 7 for k = -7..7, evenly spaced

Double quantization (Sec. 3, "Double Quantization"): the fp32 block constants c_b are
themselves quantized, to 8 bits in blocks of 256, after their mean is subtracted (they are
all positive; centred, they use the signed 8-bit type's both halves). What is stored then:
one uint8 per block of 64, one fp32 constant per 256 blocks, and the mean (one fp32 per
tensor): 4 + 8/64 + 32/(64 * 256) = 4.127 bits per value, plus 32 bits per tensor.
The 8-bit type is the reference implementation's signed "dynamic" type (Dettmers 2016):
a float-like code whose resolution is relative to the value's decade (dynamic_8bit_levels()).

Sizes that are not a whole number of blocks: the flattened weight is padded with zeros to the
next multiple of the block size (as the reference implementation does), the padding's codes
are stored and counted in nbytes, and dequantize() cuts them off. The block constants are
rarely a multiple of 256, so their last group of 256 is partial in the same way.

The level tables are constants of the data type shared by every tensor (like the meaning of
the bits of fp32), not stored per tensor, and not counted in nbytes.
"""
import functools
import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from minilora.checks import check_choice

QUANT_TYPES = ("nf4", "fp4", "int4")
ABSMAX_BLOCK = 256  # block size of the second quantization (the paper's)

# The outermost quantile probability of NF4: delta = 1/2 (1 - 1/(2 * 15) + 1 - 1/(2 * 16)), the
# mean of the last quantile's probability with 15 and with 16 levels, 0.96770833..., rounded to
# 7 digits as the reference implementation does. With that rounding (and the probabilities in
# float32) the levels equal the published table bit for bit; with the unrounded value they are
# within 2e-7 of it (tests/test_qlora.py checks both).
NF4_OFFSET = 0.9677083


def normal_float_levels(offset=NF4_OFFSET):
    """The 16 NF4 levels, sorted: quantiles of N(0, 1), normalised to [-1, 1].

    The paper's Sec. 3: estimate the quantiles of two ranges, 2^(k-1) = 8 for the negative part
    and 2^(k-1) + 1 = 9 for the positive part, each from the median (probability 0.5, value 0)
    out to the probability `offset`, then unify the two sets and drop one of the two zeros:
    7 negative levels, 0, 8 positive levels. Both ends use the same outermost probability, so
    the table is asymmetric (the positive side is cut more finely) and has an exact zero."""
    positive = torch.special.ndtri(torch.linspace(0.5, offset, 9).double())[1:]  # (8,) Q_X(p), p > 0.5
    negative = -torch.special.ndtri(torch.linspace(0.5, offset, 8).double())[1:]  # (7,)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float().sort().values
    return levels / levels.abs().max()  # (16,) in [-1, 1]: -1 and 1 at the ends


def fp4_levels():
    """The 15 distinct values of a 4-bit E2M1 float (exponent bias 1; +0 and -0 are one level),
    normalised to [-1, 1], sorted. value = 2^(e - 1) (1 + m / 2) for e > 0; m / 2 for e = 0."""
    magnitudes = [m / 2 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2) for e in range(4) for m in range(2)]
    magnitudes = torch.tensor(sorted(magnitudes))  # 0, 0.5, 1, 1.5, 2, 3, 4, 6
    return torch.cat([-magnitudes.flip(0)[:-1], magnitudes]) / magnitudes.max()  # (15,)


def int4_levels():
    """Symmetric 4-bit integers: k / 7 for k = -7..7 (15 levels, evenly spaced, sorted)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7  # (15,)


def dynamic_8bit_levels():
    """The 256 levels of the signed 8-bit "dynamic" type, sorted: 0, 1, and +-127 magnitudes.

    Each decade 10^(e - 6) * (0.1, 1], e = 0..6, gets 2^e levels at the centres of 2^e equal
    bins: few levels for tiny values and 64 in the top decade, so the resolution is relative
    to a value's size, as with a float. Computed in float32, as the reference does."""
    magnitudes = []
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2 ** e + 1)  # (2^e + 1,): bins of the decade's fraction
        centres = (edges[:-1] + edges[1:]) / 2  # (2^e,)
        magnitudes.append(10.0 ** (e - 6) * centres)
    magnitudes = torch.cat(magnitudes)  # (127,)
    return torch.cat([-magnitudes, torch.tensor([0.0, 1.0]), magnitudes]).sort().values  # (256,)


LEVELS = {"nf4": normal_float_levels(), "fp4": fp4_levels(), "int4": int4_levels()}
DYNAMIC_8BIT = dynamic_8bit_levels()


@functools.lru_cache(maxsize=None)
def _levels_on(name, device):
    """A level table on device, copied there once rather than at every dequantization."""
    table = DYNAMIC_8BIT if name == "dynamic8" else LEVELS[name]
    return table.to(device)


def check_block_size(block_size):
    """block_size must be a positive even integer: two 4-bit codes fill one byte."""
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 2 \
            or block_size % 2:
        raise ValueError(f"block_size must be a positive even integer (two 4-bit codes per byte), "
                         f"e.g. 64 as in the paper; got {block_size!r}")
    return int(block_size)


def quantize_blocks(values, levels, block_size):
    """Block-wise absmax quantization of a flat tensor: (codes (n_blocks * block_size,) int64,
    absmax (n_blocks,) fp32). values (n,) is padded with zeros to whole blocks; each value's code
    is the index of the level nearest to value / absmax of its block."""
    padding = -values.numel() % block_size
    blocks = F.pad(values.float(), (0, padding)).view(-1, block_size)  # (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,): c_b
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block: codes of 0
    normalized = blocks / scale.unsqueeze(1)  # (n_blocks, block_size), in [-1, 1]
    midpoints = (levels[1:] + levels[:-1]) / 2  # the nearest level changes half way between two
    codes = torch.bucketize(normalized, midpoints)  # (n_blocks, block_size): a midpoint goes down
    return codes.view(-1), absmax


def pack_4bit(codes):
    """(2n,) codes in 0..15 -> (n,) uint8, two per byte: the first code in the high nibble."""
    codes = codes.to(torch.uint8).view(-1, 2)
    return (codes[:, 0] << 4) | codes[:, 1]  # (n,)


def unpack_4bit(packed):
    """(n,) uint8 -> (2n,) codes, the inverse of pack_4bit."""
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).view(-1)  # (2n,)


def packed_nbytes(numel, block_size=64, double_quant=True):
    """The bytes a QuantizedWeight of numel values holds, by the paper's arithmetic (plus the
    padding of a last partial block and, with double quantization, the 4-byte mean):
    4 bits per value, then 32 bits per block, or 8 bits per block + 32 per 256 blocks + 32."""
    n_blocks = math.ceil(numel / block_size)
    codes = n_blocks * block_size // 2
    if not double_quant:
        return codes + 4 * n_blocks
    return codes + n_blocks + 4 * math.ceil(n_blocks / ABSMAX_BLOCK) + 4


class QuantizedWeight(nn.Module):
    """A weight in 4 bits: what quantize_nf4, quantize_fp4 and quantize_int4 return.

    Buffers (they move with .to(device) and are saved in state_dict):
        codes          (n_blocks * block_size / 2,) uint8   two 4-bit codes per byte
        absmax         (n_blocks,) fp32                     the block constants c_b, or with
                                                            double quantization instead:
        absmax_codes   (n_blocks,) uint8                    c_b - mean in 8 bits
        absmax_scales  (ceil(n_blocks / 256),) fp32         one constant per 256 blocks
        absmax_mean    () fp32                              the mean of the c_b

    dequantize(dtype) gives the weight back in its shape (in its dtype, or the one asked for);
    nbytes is what the buffers hold, read from the tensors. A QuantizedWeight is not a
    parameter: nothing trains it.
    """

    def __init__(self, weight, quant_type="nf4", block_size=64, double_quant=True):
        super().__init__()
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            what = f"a tensor of dtype {weight.dtype}" if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise TypeError(f"quantize a floating-point weight tensor, got {what}")
        if weight.numel() == 0:
            raise ValueError(f"cannot quantize an empty weight (shape {tuple(weight.shape)})")
        self.quant_type = check_choice("quant_type", quant_type, QUANT_TYPES)
        self.block_size = check_block_size(block_size)
        if not isinstance(double_quant, bool):
            raise TypeError(f"double_quant must be True or False, got {double_quant!r}")
        weight = weight.detach()
        if not torch.isfinite(weight).all():
            raise ValueError(f"the weight (shape {tuple(weight.shape)}) has NaN or infinite values, "
                             f"which absmax quantization cannot represent")
        self.shape = tuple(weight.shape)
        self.dtype = weight.dtype
        self.double_quant = double_quant
        codes, absmax = quantize_blocks(weight.reshape(-1), _levels_on(quant_type, weight.device), block_size)
        self.register_buffer("codes", pack_4bit(codes))
        if not double_quant:
            self.register_buffer("absmax", absmax)
            return
        mean = absmax.mean()
        absmax_codes, absmax_scales = quantize_blocks(absmax - mean, _levels_on("dynamic8", weight.device),
                                                      ABSMAX_BLOCK)
        self.register_buffer("absmax_codes", absmax_codes[: absmax.numel()].to(torch.uint8))  # no padding kept
        self.register_buffer("absmax_scales", absmax_scales)
        self.register_buffer("absmax_mean", mean)

    @property
    def device(self):
        return self.codes.device

    def numel(self):
        """The number of values the weight has (not counting the padding of a last block)."""
        return math.prod(self.shape)

    @property
    def nbytes(self):
        """Bytes held by the buffers, read from their storages."""
        return sum(b.untyped_storage().nbytes() for b in self.buffers())

    def block_absmax(self):
        """The block constants c_b (n_blocks,) fp32: stored, or dequantized from 8 bits."""
        if not self.double_quant:
            return self.absmax
        levels = _levels_on("dynamic8", self.device)
        scales = self.absmax_scales.repeat_interleave(ABSMAX_BLOCK)[: self.absmax_codes.numel()]  # (n_blocks,)
        return levels[self.absmax_codes.int()] * scales + self.absmax_mean  # (n_blocks,)

    def dequantize(self, dtype=None):
        """W_hat = level[code] * c_b, in the weight's shape and dtype (or dtype): a new tensor."""
        with torch.profiler.record_function("minilora.dequantize"):  # for bench_lora's profile
            values = _levels_on(self.quant_type, self.device)[unpack_4bit(self.codes).int()]  # (n_pad,) fp32
            values = values.view(-1, self.block_size) * self.block_absmax().unsqueeze(1)  # (n_blocks, block_size)
            weight = values.view(-1)[: self.numel()].view(self.shape)
            return weight.to(self.dtype if dtype is None else dtype)

    def extra_repr(self):
        return (f"{self.quant_type}, shape={self.shape}, block_size={self.block_size}, "
                f"double_quant={self.double_quant}, {8 * self.nbytes / self.numel():.3f} bits per value")


def quantize_4bit(weight, quant_type="nf4", block_size=64, double_quant=True):
    """weight -> QuantizedWeight in the data type quant_type ("nf4", "fp4" or "int4")."""
    return QuantizedWeight(weight, quant_type, block_size, double_quant)


def quantize_nf4(weight, block_size=64, double_quant=True):
    """weight in 4-bit NormalFloat (QLoRA's data type) -> QuantizedWeight; .dequantize(), .nbytes."""
    return QuantizedWeight(weight, "nf4", block_size, double_quant)


def quantize_fp4(weight, block_size=64, double_quant=True):
    """weight in 4-bit float (E2M1) -> QuantizedWeight, for comparison with NF4."""
    return QuantizedWeight(weight, "fp4", block_size, double_quant)


def quantize_int4(weight, block_size=64, double_quant=True):
    """weight in symmetric 4-bit integers -> QuantizedWeight, for comparison with NF4."""
    return QuantizedWeight(weight, "int4", block_size, double_quant)


def quantized_weights(model):
    """Every QuantizedWeight in model (the 4-bit bases of QLoRA layers)."""
    return [m for m in model.modules() if isinstance(m, QuantizedWeight)]
