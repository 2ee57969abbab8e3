"""Temporal models g(f(x)_fc7) of Eq. 1: per-frame fc7 features (N, T, D) → clip feature F(x).

Three choices, one per feature-learning row of Table 2:

- :class:`AveragePooling`   — "CNN": temporal mean of fc7.
- :class:`RecurrentPooling` — "CNN+RNN": an LSTM over the frames, mean of its outputs [23].
- :class:`TemporalAttention` — "CNN+TAM": the temporal attention model (Eq. 3, Fig. 3–4).

Every module returns ``(feature (N, D_out), attention (N, T, T) or None)`` and has ``out_dim``.
"""

from __future__ import annotations

import torch
from torch import nn


class AveragePooling(nn.Module):
    """"CNN" baseline of Table 2: F(x) = (1/T) Σ_t f(x_t)_fc7, no attention."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, None]:
        return f.mean(dim=1), None


class RecurrentPooling(nn.Module):
    """"CNN+RNN" baseline of Table 2: LSTM over f(x_1..T)_fc7, F(x) = mean of its outputs o_t."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True)
        self.out_dim = hidden

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, None]:
        # fp32 recurrence (see TemporalAttention); cuDNN's TF32 is off on CUDA (caffenet.disable_cudnn_tf32)
        with torch.autocast(f.device.type, enabled=False):
            out, _ = self.lstm(f.float())
        return out.mean(dim=1), None


class TemporalAttention(nn.Module):
    """Temporal attention model, TAM (Sec. 3.2, Eq. 3, Fig. 3 and Fig. 4).

    For t = 1..T, with f_i = f(x_i)_fc7 (i = 1..T):

        e_{t,i} = wᵀ tanh(U f_i + V h_{t-1} + W z_{t-1} + b)      (Fig. 4; b is U's bias)
        ω_t     = softmax_i(e_t)                                   (Σ_i ω_{t,i} = 1)
        x̄_t     = Σ_i ω_{t,i} f_i                                   (Eq. 3)
        h_t     = LSTM(x̄_t, h_{t-1})
        F(x)    = (1/T) Σ_t h_t                                     (temporal average of o_t)

    The paper names z_{t-1} without defining it; we take the previous attended input
    z_{t-1} = x̄_{t-1} (so the sub-net knows what it already looked at), with z_0 = the mean of
    the f_i (the unattended summary) and h_0 = c_0 = 0. U f_i does not depend on t, so it is
    computed once for all frames rather than at every step. ``temperature`` τ divides the
    scores before the softmax (τ = 1 is Eq. 3; τ < 1 sharpens ω and scales up the gradient that
    reaches w, U, V, W — a recipe choice, see ``ModelConfig.attention_temperature``).
    ``forward`` returns ``(F(x) (N, H), ω (N, T, T))`` with ω[:, t, i] = ω_{t,i}; the notebooks plot ω.
    """

    def __init__(self, in_dim: int, hidden: int, attention_dim: int, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)
        self.U = nn.Linear(in_dim, attention_dim)  # its bias is b
        self.V = nn.Linear(hidden, attention_dim, bias=False)
        self.W = nn.Linear(in_dim, attention_dim, bias=False)
        self.w = nn.Linear(attention_dim, 1, bias=False)  # a bias would cancel in the softmax
        self.cell = nn.LSTMCell(in_dim, hidden)
        self.hidden, self.out_dim = hidden, hidden

    def attention_parameters(self) -> list[nn.Parameter]:
        """The attention sub-net's weights (U, V, W, w, b of Eq. 3): everything but the LSTM cell."""
        return [p for n, p in self.named_parameters() if not n.startswith("cell.")]

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 even under bf16 autocast: ω near 1/T differs from uniform by less than bf16's
        # resolution there (2^-10), and the TAM costs little next to the CNN
        with torch.autocast(f.device.type, enabled=False):
            return self._attend(f.float())

    def _attend(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t_len, _ = f.shape
        uf = self.U(f)  # (N, T, A): once, not per step
        h = f.new_zeros(n, self.hidden)
        c = f.new_zeros(n, self.hidden)
        z = f.mean(dim=1)
        outputs, weights = [], []
        for _ in range(t_len):  # T is small (6); the loop is the recurrence itself
            e = self.w(torch.tanh(uf + (self.V(h) + self.W(z)).unsqueeze(1))).squeeze(-1)  # (N, T)
            omega = torch.softmax(e / self.temperature, dim=1)  # τ = 1: exactly Eq. 3
            x_bar = torch.bmm(omega.unsqueeze(1), f).squeeze(1)  # Σ_i ω_{t,i} f_i
            h, c = self.cell(x_bar, (h, c))
            outputs.append(h)
            weights.append(omega)
            z = x_bar
        return torch.stack(outputs, dim=1).mean(dim=1), torch.stack(weights, dim=1)
