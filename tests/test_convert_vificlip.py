"""qclip-convert vificlip: a fully fine-tuned ViFi-CLIP checkpoint becomes one open_clip-layout
``.safetensors`` file holding every tensor of the CLIP it was saved from (the token embedding from the
weights it started from, checked against its embedded class prompts), which ``create_clip`` builds
as that very model; checkpoints that cannot be represented, or do not fit, are refused."""

import os

import open_clip
import pytest
import torch
from clipvqa_layout import CfgNode, yacs_importable
from safetensors.torch import load_file, save_file

from qclip_engine.cli.convert import _parser
from qclip_engine.cli.convert import main as convert_main
from qclip_engine.convert.vificlip import convert_vificlip
from qclip_engine.errors import ConversionError
from qclip_engine.model.backbone import create_clip

CLASSES = ("air drumming", "ApplyEyeMakeup", "riding a bike")  # fake class names; one CamelCase as UCF's
PROMPTS = "module.prompt_learner.complete_text_embeddings"


def random_clip(backbone, seed):
    """A tiny open_clip CLIP with every tensor moved off its init (LayerNorms' ones and zeros too)."""
    clip = create_clip(backbone, None, init_seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return clip


def vificlip_name(open_clip_name):
    """ViFi-CLIP's name (as its DDP-wrapped training saved it) of an open_clip tensor; None: it has none."""
    if open_clip_name == "token_embedding.weight":
        return None  # the prompt learner used it once and kept only the embedded prompts
    head, _, rest = open_clip_name.partition(".")
    if head == "visual":
        return "module.image_encoder." + rest
    if open_clip_name == "logit_scale":
        return "module.logit_scale"
    return "module.text_encoder." + open_clip_name


def embedded_prompts(clip, backbone):
    """What ViFi-CLIP's prompt learner stores: "a photo of a {name}." looked up in the token embedding
    in fp16, then cast to fp32."""
    ids = open_clip.get_tokenizer(backbone)([f"a photo of a {name}." for name in CLASSES])
    return clip.token_embedding.weight.detach().half()[ids].float()


def vificlip_checkpoint(clip, backbone, prompts=True):
    """The dict ViFi-CLIP's epoch_saving writes around ``clip``'s tensors."""
    model = {vificlip_name(k): v.clone() for k, v in clip.state_dict().items() if vificlip_name(k)}
    if prompts:
        model[PROMPTS] = embedded_prompts(clip, backbone)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=2e-6)
    param.sum().backward()
    optimizer.step()
    config = CfgNode({"DATA": {"NUM_FRAMES": 16, "INPUT_SIZE": 224, "DATASET": "kinetics400"},
                      "MODEL": {"ARCH": "ViT-B/16"},
                      "TRAINER": {"ViFi_CLIP": {"USE": "both", "CTX_INIT": "a photo of a", "PROMPT_MODEL": False}}})
    return {"model": model, "optimizer": optimizer.state_dict(), "lr_scheduler": {"t_initial": 30},
            "max_accuracy": 83.25, "epoch": 9, "config": config.freeze()}


def save(checkpoint, path):
    with yacs_importable():
        torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def truth(clipvqa_backbone, tmp_path_factory):
    """(the fine-tuned CLIP, its ViFi-CLIP checkpoint file, its full open_clip weights as the token
    embedding's source)."""
    clip = random_clip(clipvqa_backbone, seed=5)
    folder = tmp_path_factory.mktemp("vificlip")
    source = folder / "openai-like.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(source))
    return clip, save(vificlip_checkpoint(clip, clipvqa_backbone), folder / "full_finetuned.pth"), source


def argv(checkpoint, out, backbone, source):
    return ["vificlip", str(checkpoint), "--out", str(out), "--backbone", backbone, "--token-embedding-from", str(source)]


def test_the_file_holds_every_tensor_of_the_clip_it_was_saved_from(truth, clipvqa_backbone, tmp_path):
    clip, checkpoint, source = truth
    prompts = embedded_prompts(clip, clipvqa_backbone)  # as the checkpoint holds them
    # the rows were embedded in fp16, so the sanity check passes within its tolerance, not by equality
    tokens = open_clip.get_tokenizer(clipvqa_backbone)(["a photo of a"])[0][:5]
    assert not torch.equal(prompts[0, :5], clip.token_embedding.weight.detach()[tokens])  # fp16 rounding shows

    out = tmp_path / "weights" / "vificlip.safetensors"  # a missing folder is created
    done = convert_vificlip(checkpoint, out, backbone=clipvqa_backbone, token_embedding_from=str(source))
    assert done.out == out and out.is_file()
    expected = clip.state_dict()
    written = load_file(str(out))
    assert set(written) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(written[name], tensor), name
    assert done.check.startswith("passed") and f"all {len(CLASSES)} class prompts" in done.check
    assert done.dropped == [("prompt_learner.complete_text_embeddings", tuple(prompts.shape))]
    assert prompts.shape[0] == len(CLASSES)
    assert done.epoch == 9 and done.max_accuracy == 83.25
    assert done.left_out == ["lr_scheduler", "optimizer"]
    visual = sum(k.startswith("visual.") for k in expected)
    assert dict(((src, dst), n) for src, dst, n in done.rules) == {
        ("image_encoder.*", "visual.*"): visual, ("text_encoder.*", "*"): len(expected) - visual - 2,
        ("logit_scale", "logit_scale"): 1}
    assert done.prefixed == len(expected)  # every model key but token_embedding, plus the prompts: all 'module.'

    loaded = create_clip(clipvqa_backbone, str(out)).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = open_clip.get_tokenizer(clipvqa_backbone)(["a photo of a air drumming.", "riding"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), clip.encode_image(images))
        assert torch.equal(loaded.encode_text(texts), clip.encode_text(texts))
    assert torch.equal(loaded.logit_scale, clip.logit_scale)


def test_the_cli_prints_what_it_mapped_dropped_and_checked(truth, clipvqa_backbone, tmp_path, capsys):
    clip, checkpoint, source = truth
    out = tmp_path / "vificlip.safetensors"
    assert convert_main(argv(checkpoint, out, clipvqa_backbone, source)) == 0
    printed = capsys.readouterr().out
    expected = clip.state_dict()
    visual = sum(k.startswith("visual.") for k in expected)
    assert f"mapped {len(expected) - 1} tensors" in printed
    assert "image_encoder.*  →  visual.*" in printed and f"({visual})" in printed
    assert f"text_encoder.*   →  *  ({len(expected) - visual - 2})" in printed
    assert "dropped: prompt_learner.complete_text_embeddings" in printed
    assert f"token_embedding.weight {list(expected['token_embedding.weight'].shape)} from {source}" in printed
    assert "sanity check passed" in printed
    assert "epoch 9, max_accuracy 83.25" in printed and "'DATA.NUM_FRAMES': 16" in printed
    assert "left out (training state): lr_scheduler, optimizer" in printed
    assert f"weights file: {out}" in printed
    written = load_file(str(out))
    assert set(written) == set(expected) and all(torch.equal(written[k], v) for k, v in expected.items())


def test_without_the_embedded_prompts_it_converts_and_says_it_could_not_check(truth, clipvqa_backbone, tmp_path):
    clip, _, source = truth
    path = save(vificlip_checkpoint(clip, clipvqa_backbone, prompts=False), tmp_path / "no_prompts.pth")
    done = convert_vificlip(path, tmp_path / "w.safetensors", backbone=clipvqa_backbone, token_embedding_from=str(source))
    assert done.check.startswith("not checked") and done.dropped == []
    written = load_file(str(done.out))
    assert all(torch.equal(written[k], v) for k, v in clip.state_dict().items())


def test_a_token_embedding_the_prompts_were_not_embedded_with_is_refused(truth, clipvqa_backbone, tmp_path, capsys):
    _, checkpoint, _ = truth
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in random_clip(clipvqa_backbone, seed=6).state_dict().items()}, str(other))
    out = tmp_path / "w.safetensors"
    with pytest.raises(ConversionError, match="is not the one this checkpoint's prompts were embedded with"):
        convert_vificlip(checkpoint, out, backbone=clipvqa_backbone, token_embedding_from=str(other))
    assert convert_main(argv(checkpoint, out, clipvqa_backbone, other)) == 2
    assert f"the token embedding from {other} is not the one" in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == ["other.safetensors"]  # no file, no temp file


def test_a_prompt_learning_checkpoint_is_refused(truth, clipvqa_backbone, tmp_path, capsys):
    clip, _, source = truth
    checkpoint = vificlip_checkpoint(clip, clipvqa_backbone)
    width = clip.visual.conv1.weight.shape[0]
    checkpoint["model"]["module.image_encoder.VPT"] = torch.zeros(2, width)
    checkpoint["model"]["module.prompt_learner.ctx"] = torch.zeros(4, clip.ln_final.weight.shape[0])
    path = save(checkpoint, tmp_path / "prompting.pth")
    with pytest.raises(ConversionError, match="prompt-learning") as refused:
        convert_vificlip(path, tmp_path / "w.safetensors", backbone=clipvqa_backbone, token_embedding_from=str(source))
    assert "image_encoder.VPT" in str(refused.value) and "prompt_learner.ctx" in str(refused.value)
    assert convert_main(argv(path, tmp_path / "w.safetensors", clipvqa_backbone, source)) == 2
    assert "image_encoder.VPT" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()


def test_missing_unknown_and_misshapen_tensors_are_listed(truth, clipvqa_backbone, tmp_path):
    clip, _, source = truth
    checkpoint = vificlip_checkpoint(clip, clipvqa_backbone)
    del checkpoint["model"]["module.text_encoder.ln_final.bias"]
    positions = checkpoint["model"]["module.image_encoder.positional_embedding"]
    checkpoint["model"]["module.image_encoder.positional_embedding"] = positions[:-1].clone()  # a patch row short
    path = save(checkpoint, tmp_path / "misfit.pth")
    with pytest.raises(ConversionError) as refused:
        convert_vificlip(path, tmp_path / "w.safetensors", backbone=clipvqa_backbone, token_embedding_from=str(source))
    message = str(refused.value)
    rows, width = clip.visual.positional_embedding.shape
    assert "missing ['ln_final.bias']" in message
    assert f"visual.positional_embedding: {(rows - 1, width)}, expected {(rows, width)}" in message

    checkpoint = vificlip_checkpoint(clip, clipvqa_backbone)
    checkpoint["model"]["module.temporal_head.weight"] = torch.zeros(2)
    path = save(checkpoint, tmp_path / "unknown.pth")
    with pytest.raises(ConversionError, match=r"not tensors of a ViFi-CLIP model \(.*\):\n  temporal_head\.weight$"):
        convert_vificlip(path, tmp_path / "w.safetensors", backbone=clipvqa_backbone, token_embedding_from=str(source))
    assert not (tmp_path / "w.safetensors").exists()


def test_a_missing_checkpoint_is_not_found(clipvqa_backbone, tmp_path, capsys):
    with pytest.raises(ConversionError) as refused:
        convert_vificlip(tmp_path / "absent.pth", tmp_path / "w.safetensors", backbone=clipvqa_backbone)
    assert refused.value.code == "not_found"
    assert convert_main(["vificlip", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "[not_found]" in capsys.readouterr().err


def test_an_out_that_cannot_be_the_file_is_refused_before_reading(clipvqa_backbone, tmp_path, capsys):
    (tmp_path / "taken.safetensors").mkdir()
    (tmp_path / "plain").write_text("")
    absent = tmp_path / "absent.pth"  # never read: the refusal comes first
    for out, why in ((tmp_path / "taken.safetensors", "is a directory"),
                     (tmp_path / "plain" / "w.safetensors", "is not a directory"),
                     (tmp_path / "w.pt", "must end in .safetensors")):
        assert convert_main(["vificlip", str(absent), "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert why in captured.err and "reading" not in captured.out and "not_found" not in captured.err
    with pytest.raises(ConversionError, match=r"must end in \.safetensors"):
        convert_vificlip(absent, tmp_path / "w.pt", backbone=clipvqa_backbone)


def test_every_option_states_its_default():
    kinds = next(a for a in _parser()._actions if a.dest == "kind").choices
    options = [a for a in kinds["vificlip"]._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} == {"out", "token_embedding_from", "backbone"}
    for action in options:
        assert action.help and "default" in action.help, action.option_strings
    assert kinds["vificlip"].parse_args(["x.pth", "--out", "y.safetensors"]).token_embedding_from == "openai"


# Names as a released ViFi-CLIP checkpoint's "model" holds them (its trainer's module tree, saved under
# DistributedDataParallel) → where open_clip's ViT-B-16 keeps each: written out, not derived from the map.
RELEASED_NAMES = {
    "module.image_encoder.conv1.weight": "visual.conv1.weight",
    "module.image_encoder.class_embedding": "visual.class_embedding",
    "module.image_encoder.positional_embedding": "visual.positional_embedding",
    "module.image_encoder.transformer.resblocks.0.attn.in_proj_weight": "visual.transformer.resblocks.0.attn.in_proj_weight",
    "module.image_encoder.ln_post.weight": "visual.ln_post.weight",
    "module.image_encoder.proj": "visual.proj",
    "module.text_encoder.transformer.resblocks.11.mlp.c_fc.weight": "transformer.resblocks.11.mlp.c_fc.weight",
    "module.text_encoder.positional_embedding": "positional_embedding",
    "module.text_encoder.ln_final.bias": "ln_final.bias",
    "module.text_encoder.text_projection": "text_projection",
    "module.logit_scale": "logit_scale",
}


def test_the_released_names_land_where_open_clip_keeps_them():
    from qclip_engine.convert.vificlip import expected_state, map_vificlip

    state = {k.removeprefix("module."): torch.zeros(1) for k in RELEASED_NAMES}
    state["prompt_learner.complete_text_embeddings"] = torch.zeros(2, 77, 8)
    mapped, _, dropped = map_vificlip(state)
    assert set(mapped) == set(RELEASED_NAMES.values())
    assert [name for name, _ in dropped] == ["prompt_learner.complete_text_embeddings"]
    assert set(RELEASED_NAMES.values()) <= set(expected_state("ViT-B-16"))  # open_clip's own names
    assert all(vificlip_name(ours) == theirs for theirs, ours in RELEASED_NAMES.items())  # the fixtures' map agrees
