"""The public model list of bench/coverage.py: one model per family (the smallest variant),
random weights. transformers architectures are tiny configs written once to a folder as
`hf:` models (`hf_folder`)."""

from __future__ import annotations

import json
from pathlib import Path

TIMM = """resnet18 resnext26ts regnetx_002 regnety_002 efficientnet_b0 tf_efficientnetv2_b0
mobilenetv2_050 mobilenetv3_small_050 mobilenetv4_conv_small ghostnet_100 ghostnetv2_100
convnext_atto vit_tiny_patch16_224 deit_tiny_patch16_224 swin_tiny_patch4_window7_224
maxvit_nano_rw_256 mobilevit_xxs mobilevitv2_050 efficientvit_b0 efficientvit_m0 levit_128s
repvit_m1 fastvit_t8 edgenext_xx_small densenet121 inception_v3 xception41 dla34 dpn68
hrnet_w18_small rexnet_100 mnasnet_050 mixnet_s lcnet_050 hgnetv2_b0 cspdarknet53
ese_vovnet19b_dw nf_resnet26 res2net50_14w_8s resnest14d selecsls42b skresnet18 coat_lite_tiny
pit_ti_224 poolformer_s12 gcvit_xxtiny pvt_v2_b0 mobileone_s0 efficientformerv2_s0
tiny_vit_5m_224 inception_next_tiny resmlp_12_224 xcit_nano_12_p16_224 davit_tiny
focalnet_tiny_srf vgg11 starnet_s1 mambaout_femto eva02_tiny_patch14_224 fasternet_t0
repghostnet_050""".split()  # noqa: SIM905

TORCHVISION = """alexnet convnext_tiny densenet121 efficientnet_b0 efficientnet_v2_s googlenet
inception_v3 maxvit_t mnasnet0_5 mobilenet_v2 mobilenet_v3_small regnet_x_400mf regnet_y_400mf
resnet18 resnext50_32x4d shufflenet_v2_x0_5 squeezenet1_0 swin_t swin_v2_t vgg11 vit_b_16
wide_resnet50_2 deeplabv3_mobilenet_v3_large lraspp_mobilenet_v3_large fcn_resnet50
ssdlite320_mobilenet_v3_large retinanet_resnet50_fpn fcos_resnet50_fpn
fasterrcnn_mobilenet_v3_large_320_fpn keypointrcnn_resnet50_fpn r3d_18 r2plus1d_18 s3d
mvit_v2_s""".split()  # noqa: SIM905

_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             vocab_size=1000, max_position_embeddings=128)
_DEC = dict(_TEXT, num_key_value_heads=2, tie_word_embeddings=False)
_VIS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=64, patch_size=16)
_SEQ2SEQ = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                vocab_size=1000, max_position_embeddings=128)
_AUDIO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
_STAGES = dict(depths=[1, 1], hidden_sizes=[16, 32], embedding_size=16, image_size=64)

# name: (model_type, config kwargs, auto class or None for AutoModel/AutoModelForCausalLM)
TRANSFORMERS: dict[str, tuple[str, dict, str | None]] = {
    "bert": ("bert", _TEXT, None),
    "roberta": ("roberta", _TEXT, None),
    "deberta-v2": ("deberta-v2", _TEXT, None),
    "albert": ("albert", dict(_TEXT, embedding_size=32), None),
    "electra": ("electra", dict(_TEXT, embedding_size=32), None),
    "distilbert": ("distilbert", dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                      vocab_size=1000, max_position_embeddings=128), None),
    "xlm-roberta": ("xlm-roberta", _TEXT, None),
    "mpnet": ("mpnet", _TEXT, None),
    "mobilebert": ("mobilebert", dict(_TEXT, embedding_size=32, intra_bottleneck_size=32,
                                      true_hidden_size=32), None),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=128),
             "causal"),
    "gpt-neo": ("gpt_neo", dict(hidden_size=64, num_layers=2, num_heads=4, vocab_size=1000,
                                max_position_embeddings=128, attention_types=[[["global",
                                "local"], 1]], window_size=16), "causal"),
    "opt": ("opt", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        ffn_dim=128, vocab_size=1000, max_position_embeddings=128,
                        word_embed_proj_dim=64), "causal"),
    "llama": ("llama", _DEC, "causal"),
    "mistral": ("mistral", _DEC, "causal"),
    "qwen2": ("qwen2", _DEC, "causal"),
    "qwen3": ("qwen3", dict(_DEC, head_dim=16), "causal"),
    "gemma": ("gemma", dict(_DEC, head_dim=16), "causal"),
    "gemma2": ("gemma2", dict(_DEC, head_dim=16), "causal"),
    "phi3": ("phi3", dict(_DEC, pad_token_id=0, bos_token_id=1, eos_token_id=2), "causal"),
    "falcon": ("falcon", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              vocab_size=1000), "causal"),
    "stablelm": ("stablelm", _DEC, "causal"),
    "t5": ("t5", dict(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16,
                      vocab_size=1000), None),
    "bart": ("bart", _SEQ2SEQ, None),
    "whisper-encoder": ("whisper", dict(_SEQ2SEQ, num_mel_bins=80, max_source_positions=50,
                                        max_target_positions=64), "audio-classification"),
    "wav2vec2": ("wav2vec2", _AUDIO, None),
    "hubert": ("hubert", _AUDIO, None),
    "wavlm": ("wavlm", _AUDIO, None),
    "vit": ("vit", _VIS, None),
    "deit": ("deit", _VIS, None),
    "dinov2": ("dinov2", dict(_VIS, patch_size=8), None),
    "beit": ("beit", _VIS, None),
    "swin": ("swin", dict(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1],
                          num_heads=[2, 2], window_size=4), None),
    "convnext": ("convnext", dict(_STAGES, num_stages=2), None),
    "resnet": ("resnet", dict(_STAGES, layer_type="basic"), None),
    "mobilevit": ("mobilevit", dict(image_size=64, hidden_sizes=[32, 48, 64],
                                    neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64]), None),
    "segformer": ("segformer", dict(image_size=64, hidden_sizes=[16, 32, 40, 64],
                                    decoder_hidden_size=64, depths=[1, 1, 1, 1]),
                  "semantic-segmentation"),
    "detr": ("detr", dict(use_timm_backbone=False, use_pretrained_backbone=False,
                          backbone_config={"model_type": "resnet", "depths": [1, 1, 1, 1],
                                           "hidden_sizes": [16, 32, 64, 128],
                                           "embedding_size": 16, "layer_type": "basic",
                                           "out_features": ["stage4"]},
                          d_model=64, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=4, decoder_attention_heads=4,
                          encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=10),
             "object-detection"),
    "clip": ("clip", dict(text_config=dict(_TEXT, max_position_embeddings=64),
                          vision_config=_VIS, projection_dim=32), None),
    "siglip": ("siglip", dict(text_config=dict(_TEXT, max_position_embeddings=64),
                              vision_config=_VIS), None),
}

_HEADS = {"causal": "AutoModelForCausalLM", "audio-classification":
          "AutoModelForAudioClassification", "semantic-segmentation":
          "AutoModelForSemanticSegmentation", "object-detection": "AutoModelForObjectDetection"}


def hf_folder(name: str, root: Path) -> Path:
    """A saved tiny random model of TRANSFORMERS[name] under root (written once, seeded)."""
    import torch
    import transformers

    model_type, kwargs, head = TRANSFORMERS[name]
    folder = root / name
    stamp = json.dumps([model_type, kwargs, head, transformers.__version__], sort_keys=True)
    if (folder / "stamp.json").is_file() and (folder / "stamp.json").read_text() == stamp:
        return folder
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    auto = getattr(transformers, _HEADS.get(head or "", "AutoModel"))
    torch.manual_seed(0)
    model = auto.from_config(config)
    model.save_pretrained(folder)
    (folder / "stamp.json").write_text(stamp)
    return folder


def all_specs(hf_root: Path | None) -> list[tuple[str, str]]:
    """(group, spec) for every model; the hf: specs name folders under hf_root."""
    out = [("timm", f"timm:{n}") for n in TIMM]
    out += [("torchvision", f"torchvision:{n}") for n in TORCHVISION]
    root = hf_root or Path("HF")
    out += [("transformers", f"hf:{root / n}") for n in TRANSFORMERS]
    return out
