"""The training step's fused parts: the cross-entropy fused with the output projection
(t2t.losses), the fused AdamW, and gradient clipping beside them under bf16 autocast."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from t2t.losses import linear_cross_entropy

from .conftest import family_mixture_command, run_command


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [1, 7, 4096])
def test_fused_cross_entropy_is_the_plain_one_with_its_gradients(label_smoothing, chunk_rows):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (37,), generator=g)
    plain = F.cross_entropy(hidden @ weight.T, labels, label_smoothing=label_smoothing)
    fused = linear_cross_entropy(hidden, weight, labels, label_smoothing, chunk_rows)
    torch.testing.assert_close(fused, plain)
    # Scaled upstream, as a mixed loss (CTC, ponder cost) scales it.
    for got, want in zip(torch.autograd.grad(3 * fused, (hidden, weight)),
                         torch.autograd.grad(3 * plain, (hidden, weight)), strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # validation: the loss alone
        torch.testing.assert_close(
            linear_cross_entropy(hidden, weight, labels, label_smoothing, chunk_rows), plain)


def test_fused_cross_entropy_under_bf16_autocast_matches_the_plain_bf16_loss():
    """What trainer=gpu runs: a bf16 projection, the softmax in fp32, fp32 gradients for the
    fp32 weights."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 32, generator=g, requires_grad=True)
    weight = torch.randn(300, 32, generator=g, requires_grad=True)
    labels = torch.randint(0, 300, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy((hidden @ weight.T).float(), labels, label_smoothing=0.1)
        fused = linear_cross_entropy(hidden, weight, labels, 0.1, chunk_rows=16)
    torch.testing.assert_close(fused, plain)
    fused_grads = torch.autograd.grad(fused, (hidden, weight))
    plain_grads = torch.autograd.grad(plain, (hidden, weight))
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-2)  # bf16 products both


def test_gradients_are_clipped_beside_a_fused_adamw_under_bf16():
    """Lightning refuses to clip for a fused optimizer under any mixed precision, bf16 too,
    which scales nothing (Lightning-AI/pytorch-lightning#21435); t2t clips there itself."""
    from problems.algorithmic import AlgorithmicReverse
    from t2t.lit_module import T2TLitModule
    from t2t.model import PRESETS, T2TModel

    problem = AlgorithmicReverse(num_symbols=10)
    lit = T2TLitModule(T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)]), [problem])
    lit.trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False)
    optimizer = lit.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is True
    for p in lit.parameters():
        p.grad = torch.full_like(p, 5.0)
    lit.configure_gradient_clipping(optimizer, gradient_clip_val=1.0)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in lit.parameters()]))
    assert norm == pytest.approx(1.0, rel=1e-3)


def test_the_family_mixture_trains_in_bf16_with_the_fused_loss_and_adamw(tmp_path):
    """Every family's top goes through the fused loss (text, image-to-text, audio-to-text,
    RNA, in one mixture), with the fused AdamW and clipping, as trainer=gpu runs them."""
    command = family_mixture_command(tmp_path, "trainer.max_steps=3",
                                     "trainer.precision=bf16-mixed", "optim.fused=true",
                                     "optim.loss_chunk_rows=16")
    trained = run_command(*command, cwd=tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "metrics after 3 steps" in trained.stdout
