"""A tiny stand-in data source for the scene tests: one bright square at a random position.

``sample(n, generator) -> (images (n, 3, R, R) in [0, 1], cond (n, 3) = (x, y, 1), None)``; a
trivially learnable position task (the real data live in :mod:`toy.scenes`).
"""

import torch


class SquareScenes:
    condition_dim = 3

    def __init__(self, resolution=16, half=0.12):
        self.resolution = resolution
        self.half = half

    @property
    def null_condition(self):
        return torch.zeros(3)

    def render(self, xy):
        r = self.resolution
        grid = (torch.arange(r, dtype=torch.float32) + 0.5) / r
        inside_x = (grid[None, :] - xy[:, :1]).abs() <= self.half
        inside_y = (grid[None, :] - xy[:, 1:2]).abs() <= self.half
        mask = (inside_y[:, :, None] & inside_x[:, None, :]).float()
        img = 0.5 + 0.0 * mask[:, None]
        img = img.repeat(1, 3, 1, 1)
        img[:, 0] += 0.5 * mask
        img[:, 1:] -= 0.4 * mask[:, None]
        return img.clamp(0, 1)

    def sample(self, n, generator):
        xy = 0.2 + 0.6 * torch.rand(n, 2, generator=generator)
        cond = torch.cat([xy, torch.ones(n, 1)], dim=1)
        return self.render(xy), cond, None
