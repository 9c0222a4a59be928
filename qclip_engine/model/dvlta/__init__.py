"""DVLTA-VQA ("Decoupled Vision-Language Modeling with Text-Guided Adaptation for Blind Video Quality
Assessment") as a model family of this engine, from its paper (it has no released code).

From a video to its score (``model.py``, ``graph.py``):

1. **One decode, two inputs** (``video/resize.py``: ``fragments_and_crop``): each sampled frame
   becomes an (S, 2S) frame — on the left its FAST-VQA fragments (S × S, 32-pixel cells cut at
   native resolution), on the right its short-side-then-centre crop (S × S). The graph splits them.
2. **Ventral stream** (``ventral.py``, eqs. 8–9): the frozen FAST-VQA Swin-T 3D on the fragments
   (its ``views`` clips), then ``Conv3D_2(GELU(Conv3D_1(·)))`` and the mean → F_bvfe ``[B, D]``.
3. **Dorsal stream**, on every ``dorsal_stride``-th frame's crop: the **Video-Based Temporal CLIP**
   (``adapter.py``, eqs. 1–4): the frozen CLIP tower's patch tokens, the mean over time, the
   convolutional adapter ``α·A(Z) + (1 − α)·Z``, the spatial mean → F_vbtc ``[B, D]``; and the
   **Temporal Context Module** (``temporal_context.py``, ``tadaconv.py``, ``cbam.py``, eqs. 5–7) →
   F_tcm ``[B, D]``.
4. **Text-guided fusion** (``fusion.py``, eqs. 10–11): ``w_k = cos(F_k, TextAdapter(T))``, ``F_fused =
   Σ_k w_k F_k``, T the frozen text tower's embedding of ``fusion_prompt``.
5. **Score** (eqs. 12–13): ``S± = cos(F_fused, T±)`` of the positive and negative prompts — the
   family's two levels, ``level_sims = [S−, S+]`` — and ``Q = softmax(s·[S−, S+])₊``, in (0, 1).

Training (Sec. III-F, IV-C): ``1 − PLCC`` over the batch; AdamW at lr 1e-3 on every trainable tensor;
frozen: the CLIP visual and text towers and the FAST-VQA backbone (kept in eval mode while training).

The paper's ablations are config keys, each changing only what it names (every trainable part
draws its initial values from its own seed): ``branches`` (drop one of ``bvfe``, ``vbtc``,
``tcm``: Table IV), ``fusion`` (``concat`` / ``add``: Fig. 2), ``temporal_op`` (``c3d`` /
``r2plus1d``: Table III).

Every point the paper leaves open — paper says / we chose / why (the modules give the details):

* **Frame and fragment counts.** Paper: "T frames" and "fragments", no counts. We chose: the ventral
  FAST-VQA's own input spec (default ``ventral: fastervqa``: 32 frames, ``temporal_fragments:8``,
  7 × 7 fragments at S = 224) for the whole model, and ``dorsal_stride: 2`` (16 frames) for the
  dorsal stream. Why: the frozen FAST-VQA sizes its windows from its frames and was trained on that
  sampling; one sampler means one decode; 16 frames is what ViFi-CLIP's fully supervised
  Kinetics-400 model takes, and the CLIP tower, run per frame, is the costliest part.
* **The dorsal frames.** Paper: "a sequence of continuous video frames". We chose: every
  ``dorsal_stride``-th of the sampled frames (with FasterVQA's sampler: 8 runs of 2 frames 4 apart),
  as one clip even when the ventral stream scores several views (FAST-VQA-B: every stride-th of
  its 4 × 32 frames). Why: the same decode as the ventral stream, and the dorsal stream averages
  over time anyway; ``dorsal_stride: 1`` gives it every frame.
* **The dorsal crop and normalisation.** Paper: nothing. We chose: short side to 256 (S = 224),
  centre crop, the released CLIPVQA/X-CLIP transform's rounding and non-antialiased bilinear
  (``mmcv_short_side_crop``); ImageNet's mean/std on 0–255 for both halves. Why: that is ViFi-CLIP's
  test pipeline (X-CLIP's), and FAST-VQA normalises with the same statistics.
* **Eq. 9's two Conv3D.** Paper: two 3-D convolutions with GELU, no sizes. We chose: 1 × 1 × 1,
  ``C → ventral_hidden (64) → D``, with bias, then the mean over time, space and views. Why: it is
  FAST-VQA's own quality-map head (``C → 64 → GELU → 1``) with its single output widened to D, the
  width eq. 10 compares with text; the released head is not used.
* **Features brought to one width.** Paper: eq. 10 compares every branch with the text embedding,
  no projection given. We chose: D = the CLIP model's embedding width (512 for ViT-B/16); F_vbtc is
  in D already (patch tokens through ``ln_post`` and ``proj``), F_bvfe gets there by eq. 9's last
  conv, F_tcm by a ``Linear(width, D)``. Why: the fewest new parameters; no branch is privileged.
* **The temporal modelling layer** (eq. 2). Paper: average pooling over the T frame embeddings. We
  chose: exactly that, on the patch-token maps. **The adapter** (eqs. 3–4): r = 4, 1 × 1 convs,
  bias-free Conv + BN + ReLU, α = 0.4 fixed (``adapter_*`` keys; ``adapter.py``).
* **The 3-D CNN and TAdaConv** (eqs. 5–6). Paper: "a 3D-CNN", TAdaConv, "another layer of
  TadaConv", no sizes. We chose: a two-layer 3-D stem (7 × 7 stride 4, then 3 × 3 stride 2, time
  unstrided), width 64 (``tcm_width``), TAda2D's routing (r = 4, kernels 3, 3) and aggregation
  (temporal pool of 3), two layers (``temporal_context.py``, ``tadaconv.py``).
* **CBAM** (eq. 7). We chose: Woo et al.'s sequential channel-then-spatial order, the channel MLP
  reduction 16, a 7 × 7 spatial conv per frame (``cbam.py``).
* **The guiding text and the text adapter.** Paper: ViFi-CLIP's text embedding through a "Text
  Adapter", no prompt, no form. We chose: ``fusion_prompt: "the quality of this video"`` and a
  residual bottleneck ``t + W2·ReLU(W1·t)`` starting as the identity (``fusion.py``). Why: a
  neutral quality sentence; training starts from the plain CLIP cosines.
* **Fusion weights.** Paper: the cosines, applied directly (eq. 11). We chose: exactly those — no
  softmax, they need not sum to 1.
* **The quality prompts.** Paper: "e.g. 'high quality' and 'low quality'". We chose those
  (``positive_prompt``, ``negative_prompt``), without a template.
* **The softmax's scale.** Paper: none written. We chose: ``score_scale: 1``; PLCC does not
  depend on it, a calibration maps the score to MOS.
* **Weight decay and schedule.** Paper: AdamW, lr 1e-3. We chose: one AdamW group with
  ``train.weight_decay``, the engine's warm-up and cosine.
* **What an artifact stores.** Every tensor, the frozen towers included (as CLIPVQA's and
  FAST-VQA's do): a scored artifact never needs the files it was built from.

Loading the frozen parts: ``ventral_pretrained`` is a ``qclip-convert fastvqa`` artifact (its
backbone is taken; the ``ventral`` settings must be the variant it was converted as);
``backbone``/``pretrained`` are open_clip's (``ViT-B-16`` with ``openai``, or a weights file: ViFi-CLIP's
checkpoint converts to one with ``qclip-convert vificlip``), with ``quick_gelu: true`` for OpenAI
weights.

The package: ``config.py`` (:class:`DVLTAConfig`), ``ventral.py``, ``adapter.py``,
``temporal_context.py``, ``tadaconv.py``, ``cbam.py``, ``fusion.py``, ``model.py`` (:class:`DVLTA`),
``graph.py`` (the deployable).
"""

from .config import BRANCHES, DVLTAConfig
from .model import DVLTA

__all__ = ["BRANCHES", "DVLTA", "DVLTAConfig"]
