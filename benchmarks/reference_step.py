"""The REFERENCE SCRIPT's training step, as the one-file reference script wrote it: NOT fastsr code.

The baseline row of `benchmarks/train_throughput.py`, written from the reference script's step as it was
measured beside fastsr. Its networks are the reference script's (SRResNet-16 and the SRGAN discriminator, built by the
benchmark from fastsr's classes, the same architectures); its pieces below are the reference script's own, kept
here so that nothing in fastsr carries them:
- `ReferenceDiscriminator`: the discriminator with a Sigmoid at the end of its forward, trained with
  `nn.BCELoss` on those probabilities (fastsr's discriminator returns logits for BCE-with-logits);
- `ReferenceTVLoss`: its total variation, squared neighbour differences (not fastsr's absolute ones);
- `ReferenceVGG`: VGG19 `features[:35]` (to conv5_4, before its ReLU) frozen with `requires_grad_(False)`,
  randomly initialised here (the same cost as the ImageNet weights, which the benchmark machines lack).

`ReferenceStep` is one iteration. Pretrain: `G(lr)`, MSE, backward, step, `.item()`. Finetune: `G(lr)` for D's
update (D on HR and on the detached fake, the two BCE losses summed, ONE backward); then `G(lr)` again for
G's update, with D still trainable (its weight gradients are computed and dropped: the next D update
zeroes them) and the HR features computed without grad; G's loss is MSE + 6e-3 x VGG MSE + 1e-3 x BCE(D(sr),
1) + TV, where the TV module is built with weight 1e-6 and its value multiplied by `tv_coeff` 1e-6 again;
`.item()` of both losses every step (a host synchronisation per step).
"""

from __future__ import annotations

import torch
from torch import nn

from fastsr.pretrained import vgg_features

W_VGG = 6e-3  # the reference script's content (VGG) loss weight
W_ADV = 1e-3  # the reference script's adversarial loss weight
TV_WEIGHT = 1e-6  # the reference script builds its TVLoss with this weight ...
TV_COEFF = 1e-6  # ... and multiplies the TV term by this again (1e-12 in all)


class ReferenceDiscriminator(nn.Module):
    """The reference script's discriminator: the SRGAN discriminator's logits through a Sigmoid (probabilities)."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The probability that each image is real (not a logit), as `nn.BCELoss` takes it."""
        return self.sigmoid(self.discriminator(x))


class ReferenceTVLoss(nn.Module):
    """The reference script's TVLoss: weight x 2 x (sum of squared vertical neighbour differences / their count per
    image + the same horizontally) / batch, each count being channels x rows x columns of the differences."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The TV of the NCHW batch `x`, a scalar (see the class)."""
        n, c, h, w = x.shape
        h_tv = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).sum()
        w_tv = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum()
        return self.weight * 2 * (h_tv / (c * (h - 1) * w) + w_tv / (c * h * (w - 1))) / n


class ReferenceVGG(nn.Module):
    """The reference script's content network: VGG19 `features[:35]`, every weight frozen (`requires_grad_(False)`)."""

    def __init__(self):
        super().__init__()
        self.features = vgg_features(19)[:35]
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The conv5_4 features of `x` (before its ReLU), fed as given (no ImageNet normalisation here)."""
        return self.features(x)


class ReferenceStep:
    """One training iteration of the reference script: `step(hr, lr)` -> its losses as Python floats.
    Finetune when a discriminator (fastsr's `Discriminator`, logits) and its optimiser are given."""

    def __init__(self, g: nn.Module, opt_g: torch.optim.Optimizer, d: nn.Module | None = None,
                 opt_d: torch.optim.Optimizer | None = None):
        self.g, self.opt_g, self.opt_d = g, opt_g, opt_d
        self.mse = nn.MSELoss()
        if d is not None:
            device = next(d.parameters()).device
            self.d = ReferenceDiscriminator(d)
            self.bce = nn.BCELoss()
            self.vgg = ReferenceVGG().to(device)
            self.tv = ReferenceTVLoss(TV_WEIGHT)
        else:
            self.d = None

    def __call__(self, hr: torch.Tensor, lr: torch.Tensor) -> dict[str, float]:
        if self.d is None:
            loss = self.mse(self.g(lr), hr)
            self.opt_g.zero_grad()
            loss.backward()
            self.opt_g.step()
            return {"pixel": loss.item()}

        # D's update: both forwards, the two losses summed, one backward.
        fake = self.g(lr)
        real_out, fake_out = self.d(hr), self.d(fake.detach())
        loss_d = self.bce(real_out, torch.ones_like(real_out)) + self.bce(fake_out, torch.zeros_like(fake_out))
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()

        # G's update: the generator again; D left trainable; HR features without grad.
        sr = self.g(lr)
        sr_out = self.d(sr)
        adversarial = self.bce(sr_out, torch.ones_like(sr_out))
        with torch.no_grad():
            target = self.vgg(hr)
        content = self.mse(self.vgg(sr), target)
        loss_g = self.mse(sr, hr) + W_VGG * content + W_ADV * adversarial + TV_COEFF * self.tv(sr)
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        return {"d": loss_d.item(), "g": loss_g.item()}
