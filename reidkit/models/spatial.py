"""Metric heads M(x^i, x^j) on the pool5 difference map (Sec. 3.3, Fig. 5–7).

Both take the pool5 maps of two clips, ``(N, T, C, h, w)`` each, and return the logit of
"same person" ``(N,)``; σ(logit) is M in Eq. 2. The difference d = pool5(a) − pool5(b) is taken
frame by frame, so M(a, b) ≠ M(b, a) in general (d changes sign; the layers after it are not odd
functions). Both heads flatten a (T, h, w) map into the final FC, so they are built for the
config's T and pool5 grid.

Layout: internally maps are channels-last, ``(N, T, h, w, C)``, so a 1×1 convolution is a
``nn.Linear`` over the last axis (the same operation) and every sweep is a reshape away from
``nn.LSTM``'s ``(batch, sequence, features)`` input. Maps returned for plotting are
``(N, T, C, h, w)``, like pool5.

Speed: each sweep is one ``nn.LSTM`` call over all positions at once (cuDNN on GPU), never a
Python loop over positions or steps. ``torch.compile`` runs these modules with a graph break at
each ``nn.LSTM`` (dynamo does not trace RNN modules); compile the CNN for the big win.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# axis of the channels-last map (N, T, h, w, C) each sweep runs along
SWEEP_AXES = {"time": 1, "height": 2, "width": 3}
DIRECTIONS = tuple(f"{axis}_{d}" for axis in ("time", "width", "height") for d in ("fwd", "bwd"))


def _to_plot(x: torch.Tensor) -> torch.Tensor:
    """(N, T, h, w, C) → (N, T, C, h, w)."""
    return x.permute(0, 1, 4, 2, 3)


def sweep(lstm: nn.LSTM, x: torch.Tensor, axis: int, reverse: bool = False) -> torch.Tensor:
    """Run ``lstm`` along ``axis`` of a channels-last map, independently at every other position.

    The swept axis becomes the sequence axis and all other positions become the batch, so one
    ``nn.LSTM`` call (one cuDNN kernel on GPU) does the whole sweep. ``reverse`` flips the axis
    before and after, which runs the sequence backward and puts each output back at its own
    position (Fig. 6, right). Returns ``(..., hidden)`` with the input's layout, in float32: the
    LSTM runs with autocast off (torch's CUDA autocast would run cuDNN RNNs in fp16, and bf16
    rounding compounds over a recurrence; the sweeps are a small part of the cost). On CUDA that fp32
    is true fp32 only with cuDNN's TF32 off, which the trainer and evaluate ensure
    (``reidkit.models.caffenet.disable_cudnn_tf32``).
    """
    if reverse:
        x = x.flip(axis)
    moved = x.movedim(axis, -2)  # (..., L, C)
    shape = moved.shape
    with torch.autocast(x.device.type, enabled=False):  # the recurrence in fp32, even under bf16 autocast
        out, _ = lstm(moved.reshape(-1, shape[-2], shape[-1]).float())
    out = out.reshape(*shape[:-1], out.shape[-1]).movedim(-2, axis)
    return out.flip(axis) if reverse else out


class DifferenceHead(nn.Module):
    """"CNN+DIFF" of Table 2: the SRM with its spatial RNNs removed.

    d = pool5(a) − pool5(b) → 1×1 conv → ReLU → dropout → FC → logit.
    """

    def __init__(self, in_channels: int, seq_len: int, grid: tuple[int, int], mid_channels: int, dropout: float = 0.5):
        super().__init__()
        self.conv = nn.Linear(in_channels, mid_channels)  # 1×1 conv
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(seq_len * grid[0] * grid[1] * mid_channels, 1)

    def forward(self, pool5_a: torch.Tensor, pool5_b: torch.Tensor, return_maps: bool = False):
        with torch.autocast(pool5_a.device.type, enabled=False):  # a difference: fp32 (see SpatialRecurrentModel.forward)
            return self._forward(pool5_a.float(), pool5_b.float(), return_maps)

    def _forward(self, pool5_a: torch.Tensor, pool5_b: torch.Tensor, return_maps: bool):
        d = (pool5_a - pool5_b).permute(0, 1, 3, 4, 2)  # (N, T, h, w, C)
        x = F.relu(self.conv(d))
        logit = self.fc(self.dropout(x).flatten(1)).squeeze(1)
        if return_maps:
            return logit, {"difference": _to_plot(d), "conv": _to_plot(x)}
        return logit


class SpatialRecurrentModel(nn.Module):
    """Spatial recurrent model, SRM (Sec. 3.3, Fig. 5–7): M(x^i, x^j) from the pool5 difference.

        d = pool5(x^i) − pool5(x^j)                  per frame: the initial dissimilarity map
        u = ReLU(1×1 conv(d))                         the input of the six spatial RNNs
        s_k = LSTM_k swept over u, k = 1..6           time, width, height × forward, backward
        c = ReLU(1×1 conv([s_1, …, s_6]))             the "contextual feature" (Fig. 7)
        logit = FC(dropout(c))                        M = σ(logit)

    Each sweep (Fig. 6) runs an LSTM along one axis of the (T, h, w) map, separately for every
    position of the other two axes, and writes each output back at the position of its input.
    Directions: time_fwd = frame 1 → T; width_fwd = left → right; height_fwd = top → bottom;
    each ``_bwd`` is the opposite. Six separate LSTMs (no shared weights), ``self.rnns[name]``.
    The paper sweeps "feature maps" without fixing the order of time and space; all six here
    read the same map u, as in Fig. 5.
    """

    def __init__(
        self, in_channels: int, seq_len: int, grid: tuple[int, int],
        mid_channels: int, hidden: int, out_channels: int, dropout: float = 0.5,
    ):
        super().__init__()
        self.conv_in = nn.Linear(in_channels, mid_channels)  # 1×1 conv
        self.rnns = nn.ModuleDict({name: nn.LSTM(mid_channels, hidden, batch_first=True) for name in DIRECTIONS})
        self.conv_out = nn.Linear(len(DIRECTIONS) * hidden, out_channels)  # 1×1 conv → contextual feature
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(seq_len * grid[0] * grid[1] * out_channels, 1)

    def forward(self, pool5_a: torch.Tensor, pool5_b: torch.Tensor, return_maps: bool = False):
        """Logits ``(N,)``; with ``return_maps`` also a dict of ``(N, T, C, h, w)`` maps:
        ``difference``, ``conv`` (the sweeps' input), one per direction (``time_fwd`` …
        ``height_bwd``) and ``context`` (the contextual feature). Runs in fp32 under autocast:
        the difference of two similar bf16 maps keeps little precision (measured: CNN+DIFF
        rank-1 14.7 with a bf16 head against 24.7 in fp32, 160 steps on a synthetic draw)."""
        with torch.autocast(pool5_a.device.type, enabled=False):
            return self._forward(pool5_a.float(), pool5_b.float(), return_maps)

    @torch.no_grad()
    def impulse_response(self, T: int, grid: tuple[int, int], at: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        """Fig. 6, measured: how far each of the six sweeps carries one location's input.

        The 1×1-conv input ``u`` of the sweeps is set to the response of an all-zero difference
        map, plus a unit impulse in every channel at ``at`` = (t, y, x). Returned per direction:
        ``(T, h, w)``, the L2 norm over channels of the sweep's output change caused by the
        impulse — zero wherever the sweep has not yet passed the impulse's position.
        """
        h, w = grid
        p = next(self.parameters())
        base = F.relu(self.conv_in(torch.zeros(1, T, h, w, self.conv_in.in_features, device=p.device)))
        bumped = base.clone()
        bumped[0, at[0], at[1], at[2]] += 1.0
        out = {}
        for name, lstm in self.rnns.items():
            axis, direction = name.split("_")
            run = [sweep(lstm, u, SWEEP_AXES[axis], reverse=direction == "bwd") for u in (base, bumped)]
            out[name] = (run[1] - run[0]).norm(dim=-1)[0].cpu()
        return out

    def _forward(self, pool5_a: torch.Tensor, pool5_b: torch.Tensor, return_maps: bool):
        d = (pool5_a - pool5_b).permute(0, 1, 3, 4, 2)  # (N, T, h, w, C)
        u = F.relu(self.conv_in(d))
        outs = {}
        for name, lstm in self.rnns.items():
            axis, direction = name.split("_")
            outs[name] = sweep(lstm, u, SWEEP_AXES[axis], reverse=direction == "bwd")
        context = F.relu(self.conv_out(torch.cat([outs[n] for n in DIRECTIONS], dim=-1)))
        logit = self.fc(self.dropout(context).flatten(1)).squeeze(1)
        if not return_maps:
            return logit
        maps = {"difference": _to_plot(d), "conv": _to_plot(u)}
        maps.update({n: _to_plot(o) for n, o in outs.items()})
        maps["context"] = _to_plot(context)
        return logit, maps
