"""Test-time augmentation (trainer.tta), as airbench evaluates: the logits averaged over views
of each image. The engine (build.build_engine) wraps the model in it for a run's last
evaluation."""

import torch
import torch.nn.functional as F
from torch import nn


class TestTimeAugmentation(nn.Module):
    """The logits averaged over views of each image, as airbench evaluates: with `flip`, the
    image and its mirror; with `translate`, half the weight on the image itself and half on
    it shifted by one pixel up-left and down-right (edge pixels repeated). Use the views the
    network was trained on (dataset.flip, dataset.translate): digits must not be mirrored."""

    def __init__(self, model: nn.Module, flip: bool, translate: bool) -> None:
        super().__init__()
        self.model, self.flip, self.translate = model, flip, translate

    def mirrored(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return 0.5 * (logits + self.model(x.flip(3))) if self.flip else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mirrored(x)
        if not self.translate:
            return logits
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
        moved = sum(self.mirrored(v.contiguous(memory_format=_layout(x))) for v in shifted)
        return 0.5 * logits + 0.25 * moved


def _layout(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """trainer.tta: the model itself for none, else its TestTimeAugmentation."""
    if mode == "none":
        return model
    return TestTimeAugmentation(model, flip="flip" in mode, translate="translate" in mode)
