"""PyTorch models for `benchmarks/compare.py --torch benchmarks/torch_models.py:NAME` where
torchvision is not at hand (it is on the GPU host: use torchvision.models:resnet18 there)."""

from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


def small_resnet() -> nn.Module:
    """ResNet-style, 4 stages of one basic block (16-128 channels): for 1x3x64x64 inputs, small
    enough to tune on a 2-core CPU in minutes."""
    stages = [_Block(16, 16, 1), _Block(16, 32, 2), _Block(32, 64, 2), _Block(64, 128, 2)]
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
