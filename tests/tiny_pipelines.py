"""Tiny diffusers pipelines with random weights, built in the tests (nothing is downloaded): pixel DDPM
(UNet2DModel + DDPMScheduler), Stable Diffusion (UNet2DConditionModel + AutoencoderKL + CLIP text encoder and a
character-level CLIP tokenizer, scaled-linear β) and Stable Diffusion 3 (SD3Transformer2DModel + two CLIP encoders,
no T5; FlowMatchEulerDiscreteScheduler, shift 3). ``seed`` picks other random weights of the same architecture."""
import json

import torch


def _byte_chars():
    """The 256 printable stand-ins of byte-level BPE (printable bytes map to themselves, the rest above 255)."""
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def tiny_tokenizer(folder):
    """A CLIP tokenizer over single characters (no merges): vocab.json + merges.txt written here."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in _byte_chars():
            vocab[c + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(folder)


def clip_config(vocab_size):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def tiny_vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=16, **kw)


def build_ddpm(folder, seed: int = 0):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(beta_schedule="linear")).save_pretrained(folder)
    return folder


def build_sd(folder, tmp, seed: int = 0):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer(tmp / "sd_tok")
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(clip_config(len(tok))).eval(),
                                   tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_sd3(folder, tmp, seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = tiny_tokenizer(tmp / "sd3_tok")
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(clip_config(len(tok))).eval(), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(clip_config(len(tok))).eval(), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(folder)
    return folder
