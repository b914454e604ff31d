"""The output head and its cross-entropy in one pass over row chunks.

``F.cross_entropy(F.linear(h, W))`` materialises the (tokens x vocab) logits, casts them to
float32, runs log-softmax, keeps it for backward, then builds a zero-filled gradient of the
same size and a second pass over it. At the shapes oneepoch trains on CPUs (vocabularies of
thousands against d_model of hundreds) those memory passes cost more than the head's
matmuls. Here each chunk of rows gets its logits, its float32 log-sum-exp, its loss and,
when a gradient is wanted, the gradient of the logits (softmax minus one-hot) at once, and
the two gradient matmuls follow while the chunk is still in cache. Backward then only
scales the stored gradients. The arithmetic is the same: logits in the compute dtype (bf16
under autocast, as ``F.linear`` would give), softmax and loss in float32.
"""

from __future__ import annotations

import torch

# Rows per chunk: (rows x vocab) float32 logits of 16 MB, within a server CPU's last-level
# cache; measured on 2 EPYC cores, 1M-4M elements were 1.5x faster than the unfused bf16 path.
CHUNK_ELEMENTS = 1 << 22


def head_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """Mean cross-entropy of ``h @ weight.T`` against ``targets``; h (..., d), targets (...)."""
    dtype = h.dtype
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
    want_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    flat = h.reshape(-1, h.shape[-1])
    return _HeadCrossEntropy.apply(flat, weight, targets.reshape(-1), dtype, want_grad)


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, dtype, want_grad):
        # Autocast is off in here: the dtypes are chosen explicitly below.
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            n = hc.shape[0]
            rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
            loss = torch.zeros((), dtype=torch.float32, device=h.device)
            grad_h = torch.empty_like(hc) if want_grad else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_grad else None
            for start in range(0, n, rows):
                part = slice(start, min(start + rows, n))
                logits = hc[part] @ wc.T
                tgt = targets[part]
                top = logits.amax(dim=1).float()
                probs = torch.sub(logits, top[:, None]).exp_()  # float32, one pass from bf16
                total = probs.sum(dim=1)
                lse = top + total.log()
                loss += (lse - logits.gather(1, tgt[:, None]).squeeze(1).float()).sum()
                if want_grad:
                    # d(sum of losses)/d(logits) = softmax - one_hot
                    probs.mul_(total.reciprocal()[:, None])
                    probs.scatter_add_(1, tgt[:, None], torch.full_like(lse[:, None], -1.0))
                    g = probs.to(dtype)
                    grad_h[part] = g @ wc
                    grad_w += g.T @ hc[part]
            ctx.save_for_backward(grad_h, grad_w)
            ctx.h_dtype = h.dtype
            return loss / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        n = grad_h.shape[0]
        scale = grad_out / n
        dh = (grad_h * scale).to(ctx.h_dtype) if ctx.needs_input_grad[0] else None
        dw = grad_w * scale if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None
