"""How well can the digits of mnist_digit_strings be read one at a time? The ceiling the
training digits allow, next to what a trained t2t model reads.

A string is read exactly only if each of its digits is, so the test split's exact match is set
by how many of its digit images are misread: with the 4k local copy the test strings reuse
400 digits ~9 times each, and every digit misread costs ~0.9% exact match. This trains a
plain CNN classifier (two stages of two 3x3 convolutions, batch norm, max-pool; dropout; the
same training digits) for each seed and, with --ckpt, reads each test digit alone with a t2t
checkpoint. Prints per model: test digits wrong, digit accuracy, and the exact match that
digit accuracy gives on strings of 1-6 digits (p^n averaged over n).

    python benchmarks/mnist_single_digits.py [--seeds 3] [--epochs 30] [--ckpt RUN/last.ckpt]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from budget import SHARED
from torch import nn

from problems.mnist import MnistDigitStrings, compose


def classifier(width: int) -> nn.Module:
    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*stage(1, width), *stage(width, 2 * width), nn.Flatten(),
                         nn.Dropout(0.3), nn.Linear(2 * width * 7 * 7, 128), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(128, 10))


def random_affine(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28, 28) each rotated up to ~14 degrees, scaled +-10%, sheared, shifted +-10%."""
    n = x.shape[0]
    angle, scale = (torch.rand(n) - 0.5) * 0.5, 1 + (torch.rand(n) - 0.5) * 0.2
    shear, shift = (torch.rand(n) - 0.5) * 0.3, (torch.rand(2, n) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, shift[0]], 1),
                         torch.stack([sin, cos, shift[1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, seed: int, epochs: int,
                     width: int, batch: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    net = classifier(width)
    steps = epochs * -(-len(labels) // batch)
    optimizer = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        for chosen in torch.randperm(len(labels)).split(batch):
            loss = F.cross_entropy(net(random_affine(images[chosen])), labels[chosen],
                                   label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def read_with_checkpoint(path: str, digits: np.ndarray) -> list[str]:
    """Each digit alone, placed on a canvas as the problem places a string's digits."""
    from t2t.inference import decode_raw, load_checkpoint, select_problem

    model, trained = load_checkpoint(path)
    index = select_problem(trained, "mnist_digit_strings", path)
    rng = random.Random(0)
    raws = [compose([digit], rng) for digit in digits]
    out: list[str] = []
    for start in range(0, len(raws), 100):
        out += decode_raw(model, trained[index], index, raws[start:start + 100], beam_size=1)
    return out


def row(name: str, wrong: list[int], total: int, seconds: float) -> str:
    accuracy = 1 - len(wrong) / total
    exact = np.mean([accuracy ** n for n in range(1, 7)])
    return (f"| {name} | {len(wrong)} / {total} | {accuracy:.4f} | {exact:.3f} | "
            f"{seconds:.0f} | {' '.join(map(str, wrong))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw-dir", default=str(SHARED / "mnist"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage")
    parser.add_argument("--ckpt", action="append", default=[],
                        help="a mnist_digit_strings checkpoint to read the digits with")
    args = parser.parse_args()

    problem = MnistDigitStrings(raw_dir=args.raw_dir)
    train_images, train_labels = problem.digits("train")
    test_images, test_labels = problem.digits("test")
    train_x, test_x = (torch.tensor(a, dtype=torch.float32)[:, None] / 255.0
                       for a in (train_images, test_images))
    rows = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        net = train_classifier(train_x, torch.tensor(train_labels), seed=seed,
                               epochs=args.epochs, width=args.width)
        with torch.no_grad():
            predicted = net(test_x).argmax(1).numpy()
        wrong = np.flatnonzero(predicted != test_labels).tolist()
        rows.append(row(f"CNN classifier, seed {seed}", wrong, len(test_labels),
                        time.perf_counter() - start))
        print(rows[-1], flush=True)
    for path in args.ckpt:
        start = time.perf_counter()
        read = read_with_checkpoint(path, test_images)
        wrong = [i for i, (r, label) in enumerate(zip(read, test_labels, strict=True))
                 if r != str(label)]
        rows.append(row(f"t2t {path}", wrong, len(test_labels), time.perf_counter() - start))
    print(f"\n{len(train_labels)} training digits, {len(test_labels)} test digits "
          f"({args.raw_dir}); CNN: {args.epochs} epochs, width {args.width}\n")
    print("| model | test digits wrong | digit accuracy | exact match it gives (1-6 digits) "
          "| seconds | wrong digits (test index) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
