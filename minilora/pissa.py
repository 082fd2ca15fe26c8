"""PiSSA initialisation: principal singular values and vectors adaptation
(Meng et al. 2024, arXiv:2404.02948).

Instead of starting from delta W = 0, PiSSA puts the top-r singular directions of W0 in the
adapter and freezes the rest:

    W0 = U S V^T                                  (SVD)
    A  = sqrt(S_r / s) V_r^T                      (r, in)
    B  = U_r sqrt(S_r / s)                        (out, r)      so that s B A = U_r S_r V_r^T
    W0 <- W0 - s B A                              the residual, kept frozen in the base layer

The model computes the same function as before (up to float rounding), but the trainable
part now holds the weight's most important directions. The paper reports faster convergence
on large models; on the tiny GPT here PiSSA started slower and ended level with plain LoRA
(experiments/REPRODUCTIONS.md, section 7): its A and B start large, so the same learning rate
moves the model further. The base weight is changed, so a PiSSA adapter only fits a base prepared the same
way: load_adapter recomputes the residual from the original W0, by the same SVD.

That repeats the training-time residual W0 - U_r S_r V_r^T only as well as the SVD repeats. The
SVD is not bit-for-bit deterministic across BLAS libraries, thread counts and devices: the last
bits differ, and singular vector pairs may flip sign (which leaves U_r S_r V_r^T unchanged). And
when sigma_r is close to sigma_r+1 the top-r subspace is ill-conditioned: a tiny difference can
swap which of the two directions is in the principal part, and the residual then differs by about
sigma_r along them. Compare a reloaded PiSSA model's outputs with the trained model's.
"""
import torch


@torch.no_grad()
def pissa_init_(weight, adapter):
    """Set the adapter's A, B from the top-r SVD of weight (out, in), and leave the residual
    W0 - s B A in weight, in place."""
    r, s = adapter.r, adapter.scaling
    U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)  # (out, k), (k,), (k, in)
    root = (S[:r] / s).sqrt()  # (r,): divided by s, so that s B A is the principal part
    adapter.lora_A.copy_(root.unsqueeze(1) * Vh[:r])  # (r, in)
    adapter.lora_B.copy_(U[:, :r] * root.unsqueeze(0))  # (out, r)
    principal = s * (adapter.lora_B.float() @ adapter.lora_A.float())  # (out, in), as stored
    weight.sub_(principal.to(weight.dtype))
