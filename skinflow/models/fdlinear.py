"""FDLinear: a frequency-dynamic linear layer, the building block of SkinFlow's Dynamic Vision Encoder.

A linear analogue of FDConv (CVPR 2025). The weight W0 (O x I) is stored as its 2-D real FFT
S0 = rfft2(W0) (complex, O x (I/2 + 1), fp32). Coefficient positions are sorted by normalised radial frequency
sqrt(fo^2 + fi^2) (fo, fi as in ``fftfreq``, stable sort) and cut into K nearly equal consecutive groups
("rings", lowest first, ``array_split`` so any K from 1 to the coefficient count works). Group k defines the
basis B_k = irfft2(S0 * 1[group k]); the bases sum to W0 exactly (irfft2 is linear) and are frequency-disjoint
except in the self-conjugate columns fi = 0 and fi = I/2, where irfft2 symmetrises a conjugate pair that a
group boundary happens to split.

Per image, a descriptor g (the mean of that image's tokens) feeds a small head h = ReLU(RMSNorm(A g)) of width
C = max(I * reduction, min_channels), which produces three gains, each 2 * sigmoid(.):
beta in R^K (groups), a_in in R^I, a_out in R^O. Then

    W(image) = diag(a_out) . sum_k beta_k B_k . diag(a_in)        y = W(image) x + b0   for that image's tokens

computed as a_out * (irfft2(S0 * beta[group]) (a_in * x)) + b0: one inverse FFT per image, no K bases held.
The heads are zero-initialised, so at initialisation every gain is 1 and the layer equals the source linear
up to FFT round-off. The per-image weight is built in fp32 and recomputed in backward (activation
checkpointing) instead of stored.

Shapes: x is (B, N, I) with one descriptor per sample, or packed (T, I) with ``cu_seqlens`` (S + 1,) giving
per-image boundaries (no ``cu_seqlens``: the whole sequence is one image).

>>> import torch
>>> linear = torch.nn.Linear(10, 6)
>>> layer = FDLinear.from_linear(linear, num_groups=4)
>>> x = torch.randn(2, 5, 10)
>>> bool(torch.allclose(layer(x), linear(x), atol=1e-5))
True
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def frequency_groups(out_features: int, in_features: int, num_groups: int) -> torch.Tensor:
    """``(O, I//2 + 1)`` group index of each rfft2 coefficient: rings of increasing radial frequency."""
    coefficients = out_features * (in_features // 2 + 1)
    if not 1 <= num_groups <= coefficients:
        raise ValueError(f"num_groups={num_groups} must be between 1 and the coefficient count {coefficients}")
    fo = np.abs(np.fft.fftfreq(out_features))[:, None]
    fi = np.fft.rfftfreq(in_features)[None, :]
    radius = np.sqrt(fo**2 + fi**2).ravel()
    order = np.argsort(radius, kind="stable")
    groups = np.empty(coefficients, dtype=np.int64)
    for k, positions in enumerate(np.array_split(order, num_groups)):
        groups[positions] = k
    return torch.from_numpy(groups.reshape(out_features, in_features // 2 + 1))


def dve_head_parameters(in_features: int, out_features: int, num_groups: int, reduction: float, min_channels: int) -> int:
    """Parameters FDLinear adds to a linear layer (the heads; the spectrum replaces the weight).

    The spectrum holds O*(I//2+1) complex numbers where W0 held O*I reals: 2*O extra reals for even I.
    """
    c = max(int(in_features * reduction), min_channels)
    spectrum_extra = out_features * (in_features // 2 + 1) * 2 - out_features * in_features
    return in_features * c + c + c * (num_groups + in_features + out_features) + (num_groups + in_features + out_features) + spectrum_extra


class FDLinear(nn.Module):
    """Frequency-dynamic linear layer (see the module docstring).

    Args:
        in_features, out_features: shape of the source linear.
        num_groups: K, the number of frequency groups.
        reduction: head width as a fraction of ``in_features``.
        min_channels: lower bound of the head width.
        bias: keep an additive bias.
    """

    def __init__(self, in_features: int, out_features: int, num_groups: int = 64, reduction: float = 1 / 16,
                 min_channels: int = 16, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.num_groups = in_features, out_features, num_groups
        self.register_buffer("group_index", frequency_groups(out_features, in_features, num_groups), persistent=False)
        # real view of the complex spectrum (O, I//2+1, 2), so optimizers and state dicts see a plain fp32 tensor
        self.spectrum = nn.Parameter(torch.zeros(out_features, in_features // 2 + 1, 2))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        width = max(int(in_features * reduction), min_channels)
        self.squeeze = nn.Linear(in_features, width, bias=False)
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.to_groups = nn.Linear(width, num_groups)
        self.to_in = nn.Linear(width, in_features)
        self.to_out = nn.Linear(width, out_features)
        for head in (self.to_groups, self.to_in, self.to_out):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.cu_seqlens: torch.Tensor | None = None  # per-image boundaries, set by the DVE hook of the vision tower

    @classmethod
    def from_linear(cls, linear: nn.Linear, num_groups: int = 64, reduction: float = 1 / 16, min_channels: int = 16) -> "FDLinear":
        """Convert ``linear``: its weight becomes the spectrum (fp32), its bias is kept; gains start at 1."""
        layer = cls(linear.in_features, linear.out_features, num_groups, reduction, min_channels, linear.bias is not None)
        layer = layer.to(device=linear.weight.device)
        with torch.no_grad():
            spectrum = torch.fft.rfft2(linear.weight.detach().float())
            layer.spectrum.copy_(torch.view_as_real(spectrum))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach().float())
        return layer

    def gains(self, descriptors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S, I) descriptors -> beta (S, K), a_in (S, I), a_out (S, O), each in (0, 2), fp32."""
        h = torch.relu(self.norm(self.squeeze(descriptors.to(self.squeeze.weight.dtype))))
        return tuple(2 * torch.sigmoid(head(h)).float() for head in (self.to_groups, self.to_in, self.to_out))

    def dynamic_weight(self, beta: torch.Tensor) -> torch.Tensor:
        """sum_k beta_k B_k for one image: (K,) -> (O, I), fp32, via a single inverse FFT."""
        spectrum = torch.view_as_complex(self.spectrum.float())
        return torch.fft.irfft2(spectrum * beta[self.group_index], s=(self.out_features, self.in_features))

    def basis(self, k: int) -> torch.Tensor:
        """B_k = irfft2(S0 * 1[group k]) (for inspection and tests)."""
        onehot = torch.zeros(self.num_groups, device=self.spectrum.device)
        onehot[k] = 1
        return self.dynamic_weight(onehot)

    def _mix(self, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return x @ self.dynamic_weight(beta).to(x.dtype).T

    def _segment(self, x: torch.Tensor, beta: torch.Tensor, a_in: torch.Tensor, a_out: torch.Tensor) -> torch.Tensor:
        x = x * a_in.to(x.dtype)
        if torch.is_grad_enabled():  # recompute the (O, I) weight in backward instead of storing it
            y = checkpoint(self._mix, x, beta, use_reentrant=False)
        else:
            y = self._mix(x, beta)
        y = y * a_out.to(y.dtype)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 3:  # (B, N, I): one image per row
            beta, a_in, a_out = self.gains(x.float().mean(dim=1))
            return torch.stack([self._segment(x[i], beta[i], a_in[i], a_out[i]) for i in range(x.shape[0])])
        cu = cu_seqlens if cu_seqlens is not None else self.cu_seqlens
        if cu is None:
            cu = torch.tensor([0, x.shape[0]], device=x.device)
        bounds = cu.tolist()
        if bounds[-1] != x.shape[0]:
            raise ValueError(f"cu_seqlens ends at {bounds[-1]} but the packed input has {x.shape[0]} tokens")
        segments = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        beta, a_in, a_out = self.gains(torch.stack([s.float().mean(dim=0) for s in segments]))
        return torch.cat([self._segment(s, beta[i], a_in[i], a_out[i]) for i, s in enumerate(segments)])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, num_groups={self.num_groups}"
