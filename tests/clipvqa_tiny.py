"""The tiny CLIPVQA the model tests share: an OpenAI-layout ViT small enough for the CPU, its
size, and the hand-written reference pieces (LayerNorm, uniform attention, QuickGELU)."""


import torch


# An OpenAI-layout ViT small enough for CPU: width 128 (2 heads), 2 blocks, 16-px patches on 32 px
# (P = 4 patches), embed 128 (SAT/VAT: 2 heads); text width 64, 2 blocks.
TINY = "CLIPVQA-T-test"
FRAMES, LAYERS, PATCHES, WIDTH, DIM = 4, 2, 4, 128, 128
LN_EPS = 1e-5


def pixels(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, FRAMES, 32, 32, 3), generator=g, dtype=torch.uint8)


def layer_norm(x):
    """LayerNorm with unit weight and zero bias, written out."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS)


def set_identity_attention(attn, dim):
    """nn.MultiheadAttention with zero query/key weights (uniform attention over the keys), identity
    value and output projections, no biases: the output is the mean of the keys' inputs."""
    with torch.no_grad():
        attn.in_proj_weight.zero_()
        attn.in_proj_weight[2 * dim:].copy_(torch.eye(dim))
        attn.in_proj_bias.zero_()
        attn.out_proj.weight.copy_(torch.eye(dim))
        attn.out_proj.bias.zero_()


def capture_block_io(model):
    """Inputs and outputs of every visual block, in call order."""
    inputs, outputs, handles = [], [], []
    for block in model.visual.transformer.resblocks:
        handles.append(block.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone())))
        handles.append(block.register_forward_hook(lambda m, args, out: outputs.append(out.detach().clone())))
    return inputs, outputs, handles


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)
