"""A model written outside tvm-mpq, as a user brings it: ``tvm-mpq search examples/custom_task/model.py:make_model``.

Imports only torch. ``make_model()`` returns ``(trained model, example inputs)``; here it trains a
small CNN for a few seconds on the synthetic task of ``task.py`` (in a real project: load your
checkpoint).
"""

import torch
from torch import nn


def data(n: int, seed: int):
    """4 classes of 3x16x16 images: which colour channel and which half of the image is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, 16, 16, generator=g)
    for i in range(n):
        half = int(y[i]) // 3
        x[i, int(y[i]) % 3, 8 * half:8 * half + 8, :] += 1.5
    return x, y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(x))


def make_model():
    torch.manual_seed(0)
    model, (x, y) = Net(), data(512, 0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        i = torch.randint(0, 512, (64,))
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), (x[:1],)
