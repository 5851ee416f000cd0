"""The CTC auxiliary loss for problems whose targets follow the order of their inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from problems.ocr import OcrRenderedText
from t2t.lit_module import T2TLitModule
from t2t.model import PRESETS, T2TModel


def _batch(problem, samples):
    inputs = [problem.inputs.load(problem.inputs.encode(s["inputs"])) for s in samples]
    targets = [problem.targets.load(problem.targets.encode(s["targets"])) for s in samples]
    images, pad = problem.inputs.collate(inputs)
    return {"problem": 0, "inputs": images, "inputs_pad": pad,
            "targets": torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)}


def _module(problem):
    torch.manual_seed(0)
    model = T2TModel(PRESETS["tiny"], [(problem.inputs, problem.targets)])
    return T2TLitModule(model, [problem]).eval()  # eval: no dropout, so losses compare


def test_ctc_loss_of_a_padded_batch_is_the_mean_of_each_sample_alone():
    problem = OcrRenderedText(train_size=3, eval_size=3)
    samples = list(problem.generate_samples("train"))
    widths = [problem.inputs.load(problem.inputs.encode(s["inputs"])).shape[2] for s in samples]
    assert len(set(widths)) > 1, "the samples must differ in width for padding to matter"
    module = _module(problem)
    with torch.no_grad():
        together, _ = module.loss(_batch(problem, samples), 0.0, ctc_weight=1.0)
        alone = [module.loss(_batch(problem, [s]), 0.0, ctc_weight=1.0)[0] for s in samples]
    assert torch.allclose(together, torch.stack(alone).mean(), atol=1e-4)


def test_ctc_weight_mixes_the_two_losses():
    problem = OcrRenderedText(train_size=4, eval_size=3)
    batch = _batch(problem, list(problem.generate_samples("train")))
    module = _module(problem)
    with torch.no_grad():
        attention, _ = module.loss(batch, 0.0, ctc_weight=0.0)
        ctc, _ = module.loss(batch, 0.0, ctc_weight=1.0)
        mixed, _ = module.loss(batch, 0.0, ctc_weight=0.25)
        memory, pad = module.model.encode(0, batch["inputs"], batch["inputs_pad"])
        logits, inputs_pad = module.model.encoder_logits(0, memory, pad)
        # Over the inputs' positions, not the problem token in front of them.
        assert logits.shape[1] == inputs_pad.shape[1] == batch["inputs_pad"].shape[1]
        assert torch.equal(inputs_pad, pad[:, 1:])
        expected = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), batch["targets"],
                              (~inputs_pad).sum(1), (batch["targets"] != 0).sum(1), blank=0)
    assert torch.allclose(ctc, expected, atol=1e-5)
    assert not torch.allclose(attention, ctc)
    assert torch.allclose(mixed, 0.75 * attention + 0.25 * ctc, atol=1e-5)


def test_ctc_weight_is_training_config_for_the_problems_read_in_input_order():
    from problems.algorithmic import AlgorithmicReverse

    ocr, reverse = OcrRenderedText(), AlgorithmicReverse()
    model = T2TModel(PRESETS["tiny"], [(p.inputs, p.targets) for p in (ocr, reverse)])
    assert T2TLitModule(model, [ocr, reverse], ctc_weight=0.3).ctc_weights == [0.3, 0.0]
    assert T2TLitModule(model, [ocr, reverse], ctc_weight=0.0).ctc_weights == [0.0, 0.0]
    assert "ctc_weight" not in OcrRenderedText.option_specs()  # the shards do not depend on it
