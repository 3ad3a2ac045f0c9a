"""sbattn's reference mode against the reference implementation's own loop, bit for bit, end to end.

The loop below restates the reference's example.py and utils.py (its VGG16, SB and SE blocks, weights_init, its
torchvision transforms and DataLoaders, its optimiser, schedule and figures), on a small in-memory dataset and at
width 0.125, independently of sbattn's code. `sbattn train --rng reference --precision fp32` on the same images must
give the same training figures, the same test figures, the same final accuracy in results.txt and the same weights,
across two learning-rate decays and a last, smaller batch. Run in the interoperability environment (torchvision).
"""
from __future__ import annotations

import re

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

tv = pytest.importorskip("torchvision")

sys.path.insert(0, str(Path(__file__).parent))
from _reference import InMemory  # noqa: E402

from sbattn.config import TrainConfig  # noqa: E402
from sbattn.data import load_fake  # noqa: E402
from sbattn.train import train  # noqa: E402

WIDTH, BATCH, EPOCHS, MILESTONES, SEED = 0.125, 12, 3, [1, 2], 11  # 1024 = 85 x 12 + 4; 256 = 21 x 12 + 4


class SB(nn.Module):
    def __init__(self, channels, activation):
        super().__init__()
        act = {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[activation]
        self.lambd = nn.Parameter(torch.randn(1, channels))
        self.branch = nn.Sequential(nn.Linear(channels, channels // 2), nn.BatchNorm1d(channels // 2),
                                    nn.ReLU(inplace=True), nn.Linear(channels // 2, channels),
                                    nn.BatchNorm1d(channels), act)

    def forward(self, x):
        a = self.branch(F.adaptive_avg_pool2d(x, (1, 1)).squeeze())
        return x + torch.unsqueeze(torch.unsqueeze(self.lambd * a, dim=-1), dim=-1)


class SE(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(channels, channels // 2), nn.BatchNorm1d(channels // 2),
                                    nn.ReLU(inplace=True), nn.Linear(channels // 2, channels),
                                    nn.BatchNorm1d(channels), nn.Sigmoid())

    def forward(self, x):
        a = self.branch(F.adaptive_avg_pool2d(x, (1, 1)).squeeze())
        return x * torch.unsqueeze(torch.unsqueeze(a, dim=-1), dim=-1)


class VGG16(nn.Module):
    """The reference's modified VGG16, its widths times WIDTH: four blocks, attention at each block's end."""

    def __init__(self, attention, activation="tanh"):
        super().__init__()
        self.layers, self.attention = nn.ModuleList(), nn.ModuleList()
        channels = 3
        for width, repeat in ((64, 2), (128, 2), (256, 3), (512, 3)):
            out = int(width * WIDTH)
            convs = []
            for i in range(repeat):
                convs += [nn.Conv2d(channels if i == 0 else out, out, 3, 1, 1), nn.BatchNorm2d(out),
                          nn.ReLU(inplace=True)]
            channels = out
            self.layers.append(nn.Sequential(*convs))
            self.attention.append(SB(out, activation) if attention == "sb" else SE(out) if attention == "se"
                                  else nn.Identity())
        self.fc = nn.Sequential(nn.Linear(channels, int(256 * WIDTH)), nn.ReLU(inplace=True),
                                nn.Linear(int(256 * WIDTH), 10))
        self.max_pool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        for layer, attention in zip(self.layers, self.attention):
            x = self.max_pool(attention(layer(x)))
        return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).squeeze())


def weights_init(layer):
    if isinstance(layer, (nn.Linear, nn.BatchNorm1d)):
        nn.init.normal_(layer.weight, 0.0, 0.02)
        nn.init.constant_(layer.bias, 0.0)


def reference_run(attention):
    """The reference's main(), restated: its figures per epoch, its final accuracy and the final weights."""
    data = load_fake()
    t = tv.transforms
    transform = t.Compose([t.RandomCrop(32, padding=4), t.RandomHorizontalFlip(), t.RandomRotation(15), t.ToTensor(),
                           t.Normalize(0.5, 0.5)])
    train_loader = torch.utils.data.DataLoader(InMemory(data.train_images, data.train_labels, transform),
                                               shuffle=True, batch_size=BATCH)
    test_loader = torch.utils.data.DataLoader(
        InMemory(data.test_images, data.test_labels, t.Compose([t.ToTensor(), t.Normalize(0.5, 0.5)])),
        shuffle=False, batch_size=BATCH)
    model = VGG16(attention)
    model.apply(weights_init)
    loss = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.1, momentum=0.9,
                                weight_decay=9e-6, nesterov=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, gamma=0.2, milestones=MILESTONES)

    def evaluate(with_loss):
        model.eval()
        with torch.no_grad():
            count = eval_loss = eval_acc = 0.
            for x, y in test_loader:
                out = model(x)
                if with_loss:
                    eval_loss += loss(out, y).item()
                eval_acc += (torch.sum(y == torch.argmax(out, dim=1)).float() / x.size(0)).item()
                count += 1.
        return eval_loss / count, eval_acc / count

    figures = []
    for _ in range(EPOCHS):
        epoch_loss = epoch_acc = count = 0.
        for i, (x, y) in enumerate(train_loader):
            optimizer.zero_grad()
            out = model(x)
            batch_loss = loss(out, y)
            batch_loss.backward()
            optimizer.step()
            if i % BATCH == 0:
                count += 1.
                epoch_acc += (torch.sum(y == torch.argmax(out, dim=1)).float() / x.size(0)).item()
                epoch_loss += batch_loss.item()
        eval_loss, eval_acc = evaluate(True)
        model.train()
        figures.append((epoch_loss / count, epoch_acc / count, eval_loss, eval_acc))
        scheduler.step()
    return figures, evaluate(False)[1], list(model.state_dict().values())


@pytest.mark.parametrize("attention", ["sb", "se", "none"])
def test_reference_mode_is_the_reference_loop_bit_for_bit(tmp_path, attention):
    torch.manual_seed(SEED)
    expected, final_acc, expected_weights = reference_run(attention)
    config = TrainConfig(attention=attention, width=WIDTH, batch_size=BATCH, epochs=EPOCHS, milestones=MILESTONES,
                         seed=SEED, rng="reference", precision="fp32", dataset="fake", device="cpu",
                         output_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    result = train(config, quiet=True)
    assert result.exit_code == 0 and result.history[0]["layout"] == "contiguous"
    got = [(h["train_loss_sampled"], h["train_acc_sampled"], h["eval_loss_batch_mean"], h["eval_acc_batch_mean"])
           for h in result.history]
    assert got == expected  # every figure to the last bit
    assert result.summary["final_eval_acc_batch_mean"] == final_acc
    line = (tmp_path / "results.txt").read_text()
    assert re.search(rf"--> acc : {100 * final_acc:.2f}%\.$", line.strip())
    weights = list(torch.load(result.paths.weights, weights_only=True)["state_dict"].values())
    assert len(weights) == len(expected_weights)
    for tensor in expected_weights:  # each the same bits somewhere: names and nesting differ, values may not
        match = next((i for i, w in enumerate(weights) if w.numel() == tensor.numel()
                      and torch.equal(w.flatten(), tensor.flatten())), None)
        assert match is not None, f"no weight of sbattn's equals the reference's {tuple(tensor.shape)}"
        weights.pop(match)
