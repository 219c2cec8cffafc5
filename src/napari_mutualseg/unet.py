"""The segmentation network: a plain 2D U-Net with three output classes."""

from __future__ import annotations

import threading

import torch
from torch import nn

N_CLASSES = 3  # background, cell, boundary


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A plain 2D U-Net with ``depth`` resolution levels and 3 output classes.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for grayscale).
    n_classes : int
        Output classes (background, cell, boundary).
    width : int
        Feature channels at the first level; doubled at every level down.
    depth : int
        Resolution levels; inputs must be divisible by ``2 ** (depth - 1)``.
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = N_CLASSES, width: int = 16, depth: int = 4
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be positive, got width={width}, depth={depth}")
        self.arch = {
            "in_channels": in_channels,
            "n_classes": n_classes,
            "width": width,
            "depth": depth,
        }
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in chans:
            self.down.append(_block(c_prev, c))
            c_prev = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(nn.ConvTranspose2d(c_prev, c, 2, stride=2))
            self.merge.append(_block(2 * c, c))
            c_prev = c
        self.head = nn.Conv2d(c_prev, n_classes, 1)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.arch["depth"] - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def build_unet(arch: dict[str, int], seed: int) -> UNet:
    """A freshly initialised U-Net; ``seed`` makes the initialisation reproducible."""
    # torch's generator is the process's: two trainers starting at once (two viewers, two
    # threads of a script) would draw each other's numbers and lose the seed
    with _SEEDED:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            return UNet(**arch)
        finally:
            torch.random.set_rng_state(state)


_SEEDED = threading.Lock()
