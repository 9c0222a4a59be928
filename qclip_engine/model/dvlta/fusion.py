"""DVLTA-VQA's text-guided adaptive fusion (Sec. III-D, eqs. 10–11), its quality score (Sec. III-E,
eqs. 12–13) and its loss (Sec. III-F, eqs. 14–15).

* ``TextAdapter(dim, hidden=dim // 4)``: ``t + W2 · ReLU(W1 · t)``, W2 (weight and bias) zero at init.
* ``text_guided_fusion(features [B, K, D], text [D] or [B, D]) → (fused [B, D], weights [B, K])``:
  ``w_k = cos(F_k, T)`` (eq. 10), ``F_fused = Σ_k w_k · F_k`` (eq. 11).
* ``FusionHead(dim, branches=3, mode="text" | "concat" | "add")``: ``forward(features) → fused``;
  ``weights(features) → [B, K]`` (text: the cosines; add: 1/K each).
* ``quality_from_prompts(fused, positive, negative, scale=1.0) → [B]`` and ``PromptQuality(dim, scale)``:
  ``Q = e^{s·S+} / (e^{s·S+} + e^{s·S−})``, ``S± = cos(F_fused, T±)`` (eqs. 12–13); its ``sims`` gives
  ``[S−, S+]`` and ``score_from_sims`` Q from them (the family's two levels, negative first).
* ``plcc_loss(pred, target) = 1 − PLCC`` (eqs. 14–15).

Choices (DVLTA-VQA has no released code):

* **Text adapter.** Paper says: text features "are first processed by the Text Adapter" (Fig. 1,
  Sec. III); no form given. We chose: a residual bottleneck MLP ``t + W2 · ReLU(W1 · t)``, hidden
  ``dim // 4``, W2's weight and bias zero. Why: at initialisation the adapter is the identity, so
  training starts from the frozen CLIP text embedding (the fusion weights are the plain CLIP cosines)
  and learns only a correction; the bottleneck keeps it as small as the visual adapter (r = 4).
* **Which text guides the fusion.** Paper says: "the text embedding T_text" from ViFi-CLIP's text
  encoder; the prompt is not given. We chose: one embedding ``[D]`` held as the buffer ``text`` of
  :class:`FusionHead` (zeros until the family sets it from the CLIP text encoder; with zeros every
  weight is 0). Why: the text encoder is frozen, so the embedding is a constant of the exported graph;
  the adapter after it is what trains. The quality prompts T± (eq. 12) do **not** go through the
  adapter: Fig. 1 places it in the fusion only.
* **Fusion weights.** Paper says: ``W_F = F · T / (‖F‖ ‖T‖)`` applied directly (eq. 11). We chose: the
  raw cosines — no softmax, no normalisation, so weights lie in [−1, 1], need not sum to 1 and may be
  negative. Why: that is eq. 10–11 as written. Norms are clamped at ``eps = 1e-8`` (a zero vector
  gets weight 0). ``normalize=True`` (FusionHead ``normalize_branches``) L2-normalises each F_k before
  the sum — not the paper's; off by default — so that a branch's norm does not set its share.
* **Common dimension.** Eqs. 10–11 need every F_k in the text embedding's D; the branch projections
  are the family's (e.g. ``TemporalContextModule(out_dim=D)``).
* **Ablation (Fig. 2).** Paper says: "direct concatenation (concat) and simple weighted addition
  (add)". We chose: ``concat`` — ``Linear(K · D → D)`` (with bias) on the concatenated features, back
  to D so eqs. 12–13 still apply; ``add`` — the mean of the K features (fixed equal weights). Why: the
  switch then changes only the fusion; the score and the branches are untouched.
* **Score.** Paper says (eq. 13): a 2-way softmax of ``S+`` and ``S−``, no temperature; ``Sim`` is
  cosine (as eq. 10). We chose: ``scale = 1`` by default, computed as ``sigmoid(s · (S+ − S−))`` (the
  same number, without overflow); ``PromptQuality(scale=...)`` takes a CLIP-style scale (e.g. 100),
  ``learn_scale=True`` learns its log. Why: with s = 1 the score can only span
  ``[σ(−2), σ(2)] ≈ [0.12, 0.88]`` — fine for a PLCC loss, which is affine-invariant, but a CLIP-style
  scale may be wanted when the absolute score matters.
* **PLCC loss.** Paper says: ``1 − Cov / (√Var_p √Var_gt)`` (eqs. 14–15). We chose: batch statistics
  with 1/n (the ratio is the same with 1/(n−1)), computed in float32, ``eps = 1e-8`` added to each
  variance under the square root. Why: a constant batch (either side, or B = 1) then gives
  Cov = 0, PLCC = 0, loss = 1 with finite gradients; the bias on a real batch is ~eps / (2 Var)
  (≈ 5e-7 for scores with a 0.1 standard deviation).
"""

from __future__ import annotations

import torch
from torch import nn

FUSION_MODES = ("text", "concat", "add")
EPS = 1e-8


class TextAdapter(nn.Module):
    """``t + W2 · ReLU(W1 · t)`` on ``[..., D]``; W2 starts at zero, so the adapter starts as the identity."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = dim // 4 if hidden is None else hidden
        if hidden < 1:
            raise ValueError(f"hidden must be at least 1, got {hidden}")
        self.down = nn.Linear(dim, hidden)  # W1
        self.up = nn.Linear(hidden, dim)  # W2
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return text + self.up(torch.relu(self.down(text)))


def _unit(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``a · b / (‖a‖ ‖b‖)`` over the last axis (broadcast), each norm clamped at ``eps``."""
    return (_unit(a, eps) * _unit(b, eps)).sum(dim=-1)


def text_guided_fusion(features: torch.Tensor, text: torch.Tensor, normalize: bool = False,
                       eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 10–11: ``features [B, K, D]``, ``text [D]`` (or ``[B, D]``) → ``(Σ_k w_k F_k [B, D], w [B, K])``
    with ``w_k = cos(F_k, T)`` (raw cosines: no softmax). ``normalize``: sum the unit-norm F_k instead."""
    if text.dim() == 2:
        text = text[:, None, :]  # per-sample text [B, D] → [B, 1, D]
    weights = cosine(features, text, eps)  # [B, K]
    branches = _unit(features, eps) if normalize else features
    return (weights.unsqueeze(-1) * branches).sum(dim=1), weights


class FusionHead(nn.Module):
    """``features [B, K, D]`` → ``[B, D]``: text-guided (eqs. 10–11), ``concat`` + Linear, or ``add`` (mean)."""

    def __init__(self, dim: int, branches: int = 3, mode: str = "text", text_hidden: int | None = None,
                 text: torch.Tensor | None = None, normalize_branches: bool = False, eps: float = EPS):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"mode must be one of {FUSION_MODES}, got {mode!r}")
        self.dim, self.branches, self.mode = dim, branches, mode
        self.normalize_branches, self.eps = normalize_branches, eps
        if mode == "text":
            self.text_adapter = TextAdapter(dim, text_hidden)
            self.register_buffer("text", torch.zeros(dim) if text is None else text.detach().reshape(dim).clone())
        elif mode == "concat":
            self.proj = nn.Linear(branches * dim, dim)

    def set_text(self, embedding: torch.Tensor) -> None:
        """The guiding text embedding ``[D]`` (from the frozen CLIP text encoder)."""
        if self.mode != "text":
            raise ValueError(f"mode {self.mode!r} has no guiding text")
        with torch.no_grad():
            self.text.copy_(embedding.reshape(self.dim))

    def _check(self, features: torch.Tensor) -> None:
        if features.dim() != 3 or features.shape[1] != self.branches or features.shape[2] != self.dim:
            raise ValueError(f"expected [B, {self.branches}, {self.dim}], got {tuple(features.shape)}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._check(features)
        if self.mode == "text":
            return text_guided_fusion(features, self.text_adapter(self.text), self.normalize_branches, self.eps)[0]
        if self.mode == "concat":
            return self.proj(features.flatten(1))
        return features.mean(dim=1)

    def weights(self, features: torch.Tensor) -> torch.Tensor:
        """Each branch's weight ``[B, K]``: the text cosines (``text``), ``1/K`` (``add``); ``concat`` has none."""
        self._check(features)
        if self.mode == "text":
            return cosine(features, self.text_adapter(self.text), self.eps)
        if self.mode == "add":
            return features.new_full(features.shape[:2], 1.0 / self.branches)
        raise ValueError("concat fusion has no per-branch weights")


def quality_from_prompts(fused: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                         scale: float | torch.Tensor = 1.0, eps: float = EPS) -> torch.Tensor:
    """Eqs. 12–13: ``fused [B, D]``, prompts ``[D]`` → ``e^{s·S+} / (e^{s·S+} + e^{s·S−})`` ``[B]``,
    ``S± = cos(fused, T±)`` — computed as ``sigmoid(s · (S+ − S−))``."""
    s_pos = cosine(fused, positive, eps)
    s_neg = cosine(fused, negative, eps)
    return torch.sigmoid(scale * (s_pos - s_neg))


class PromptQuality(nn.Module):
    """Eqs. 12–13 with the prompt embeddings as buffers ``positive``, ``negative`` ``[D]`` (zeros until set)."""

    def __init__(self, dim: int, scale: float = 1.0, learn_scale: bool = False,
                 positive: torch.Tensor | None = None, negative: torch.Tensor | None = None, eps: float = EPS):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.dim, self.eps = dim, eps
        for name, value in (("positive", positive), ("negative", negative)):
            self.register_buffer(name, torch.zeros(dim) if value is None else value.detach().reshape(dim).clone())
        log_scale = torch.tensor(float(scale)).log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def set_prompts(self, positive: torch.Tensor, negative: torch.Tensor) -> None:
        with torch.no_grad():
            self.positive.copy_(positive.reshape(self.dim))
            self.negative.copy_(negative.reshape(self.dim))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return quality_from_prompts(fused, self.positive, self.negative, self.log_scale.exp(), self.eps)

    def sims(self, fused: torch.Tensor) -> torch.Tensor:
        """``[S−, S+]`` per video, ``[B, 2]`` (the negative prompt first: the lower level)."""
        return torch.stack([cosine(fused, self.negative, self.eps), cosine(fused, self.positive, self.eps)], dim=-1)

    def score_from_sims(self, sims: torch.Tensor) -> torch.Tensor:
        """Eq. 13 from :meth:`sims`: ``softmax(s · [S−, S+])`` of the positive, as ``sigmoid(s · (S+ − S−))``."""
        return torch.sigmoid(self.log_scale.exp().to(sims.dtype) * (sims[..., 1] - sims[..., 0]))


def plcc_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Eqs. 14–15: ``1 − Cov(p, y) / (√(Var p + eps) √(Var y + eps))`` over the batch (1/n statistics)."""
    p, y = pred.reshape(-1).float(), target.reshape(-1).float()
    if p.shape != y.shape:
        raise ValueError(f"pred and target differ in size: {p.numel()} vs {y.numel()}")
    pc, yc = p - p.mean(), y - y.mean()
    cov = (pc * yc).mean()
    plcc = cov / ((pc.square().mean() + eps).sqrt() * (yc.square().mean() + eps).sqrt())
    return 1.0 - plcc
