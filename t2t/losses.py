"""The training loss's cross-entropy fused with the output projection, in chunks of rows.

A vocabulary of V tokens makes the logits of N target positions an (N, V) tensor, and the
plain way (project, upcast to fp32, cross-entropy, and autograd keeping all of it for the
backward pass) holds several copies of it: under bf16 on a GPU, the largest tensors of a
step. Here the projection, the softmax and both gradients run on `chunk_rows` rows at a time,
so at most (chunk_rows, V) fp32 logits exist at once. The gradients are computed in the
forward pass, while each chunk's softmax is at hand (as Liger-Kernel's fused linear
cross-entropy does): the same three matrix products as autograd, and nothing to recompute.
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor,
                         label_smoothing: float = 0.0, chunk_rows: int = 4096) -> Tensor:
    """Mean cross-entropy of `labels` (N,) under logits hidden (N, C) @ weight (V, C).T, with
    label smoothing as `torch.nn.functional.cross_entropy` defines it."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    trains = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if trains:
        return _LinearCrossEntropy.apply(hidden, weight, labels, label_smoothing, chunk_rows)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.size(0), chunk_rows):
        logits = (hidden[start:start + chunk_rows] @ weight.T).float()
        total += _summed_loss(logits, labels[start:start + chunk_rows], label_smoothing)[0]
    return total / max(hidden.size(0), 1)


def _summed_loss(logits: Tensor, labels: Tensor, label_smoothing: float
                 ) -> tuple[Tensor, Tensor]:
    """The chunk's summed loss and its (n,) log-sum-exp, from (n, V) fp32 logits."""
    log_total = logits.logsumexp(dim=-1)  # (n,)
    nll = log_total - logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    # Smoothing's share: cross-entropy against the uniform distribution over V tokens.
    uniform = log_total - logits.mean(dim=-1)
    return ((1.0 - label_smoothing) * nll + label_smoothing * uniform).sum(), log_total


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, label_smoothing: float,
                chunk_rows: int) -> Tensor:
        rows, vocab = hidden.size(0), weight.size(0)
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, rows, chunk_rows):
            chunk = slice(start, start + chunk_rows)
            h, y = hidden[chunk], labels[chunk]
            product = h @ weight.T  # (n, V); under autocast a bf16 product
            logits = product.float()
            loss, log_total = _summed_loss(logits, y, label_smoothing)
            total += loss
            # d(loss)/d(logits) = softmax - (1 - s) * one_hot(label) - s / V, over the mean's N.
            grad = logits.sub_(log_total.unsqueeze(1)).exp_()
            grad.sub_(label_smoothing / vocab)
            grad[torch.arange(len(y), device=y.device), y] -= 1.0 - label_smoothing
            grad = grad.div_(max(rows, 1)).to(product.dtype)
            grad_hidden[chunk] = grad @ weight
            grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / max(rows, 1)

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None
