"""DVLTA-VQA's building blocks ("Decoupled Vision-Language Modeling with Text-Guided Adaptation for
Blind Video Quality Assessment"; no released code: every open point is named in its module as
"paper says / we chose / why"):

* ``tadaconv.py`` — TAdaConv (Huang et al., ICLR 2022), per-frame calibrated convolution and its
  routing function, as its released code computes them;
* ``cbam.py`` — channel and spatial attention (Woo et al., ECCV 2018);
* ``adapter.py`` — the Video-Based Temporal CLIP's time pooling and convolutional adapter
  (``α·A(Z) + (1 − α)·Z``, α = 0.4);
* ``temporal_context.py`` — the Temporal Context Module (3D-CNN stem, TAdaConv with aggregation,
  CBAM) and its ablation to C3D / R(2+1)D;
* ``fusion.py`` — the text adapter, the text-guided fusion (weights = cosine similarities) and its
  concat / add ablations, the positive/negative prompt score, the PLCC loss.

Not yet a model family: the streams' wiring, the frozen FAST-VQA and CLIP towers, the input spec
and the registry line are still to come.
"""
