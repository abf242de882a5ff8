"""The documentation: every relative link in README.md and docs/ resolves, and the README's Python
quick start runs as written (its placeholders, a model and three data loaders, given by this test)."""

import os
import re

import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    os.path.join(ROOT, "docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve(path):
    text = open(path).read()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [link for link in links if "://" not in link and not os.path.exists(os.path.join(os.path.dirname(path), link))]
    assert not missing, f"{os.path.relpath(path, ROOT)} links to files that do not exist: {missing}"


def python_blocks(path: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", open(path).read(), flags=re.S)


class Net(nn.Module):
    """The reader's model: a small CNN on 3x32x32 images."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.features(x))


def loader(n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float()  # brightness says the class
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def accuracy(model, batches) -> float:
    return sum(int((model(x).argmax(1) == y).sum()) for x, y in batches) / sum(len(y) for _, y in batches)


def MyNet() -> Net:  # noqa: N802 - the README's name for the reader's trained model
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(3):
        for x, y in loader(256, 3):
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    """As written, but priced by a simulated accelerator and not timed: whether a toy model reaches
    a latency budget on this machine is not what this test is about (no timing in unit tests)."""
    import tvm_mpq

    search = tvm_mpq.search
    monkeypatch.setattr(tvm_mpq, "search", lambda *a, **k: search(*a, **k, provider="bitfusion", measure=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TVM_MPQ_CACHE", str(tmp_path / "cache"))
    blocks = python_blocks(os.path.join(ROOT, "README.md"))
    assert len(blocks) == 2, "the README's Python blocks changed: update this test"
    env = {"MyNet": MyNet, "accuracy": accuracy, "calib_loader": loader(64, 0), "val_loader": loader(64, 1),
           "train_loader": loader(128, 2)}
    exec(compile(blocks[0], "README.md quick start", "exec"), env)
    result = env["result"]
    assert (tmp_path / "policy.json").exists() and (tmp_path / "model.so").exists()
    assert result.predicted_ms <= 0.7 * result.summary["int8_predicted_ms"] * (1 + 1e-9)
    assert result.accuracy > 0.5 and result.float_accuracy > 0.5  # four classes
    exec(compile(blocks[1], "README.md inside tvm.compile", "exec"), env)
    assert env["ex"] is not None
