"""Tiny random-weight diffusers pipelines built in the tests (nothing is downloaded), and helpers shared by the
pipeline tests: tokenizers made offline from a small vocabulary, tiny text encoders and VAEs, one builder per
pipeline class, a fingerprint of a folder, and the teacher → OSS / λ-opt path.

Sizes are the smallest the classes accept: 16×16 images, 1–2 layers, hidden sizes 32–64; Wan videos of 5 frames
(3 latent frames with the VAE's temporal factor 2).
"""

import hashlib
import json

import torch

GUIDANCE = 3.0
PROMPTS = ["a red cube", "two blue balls", "a green tree"]


# ---- tokenizers ------------------------------------------------------------------------------------------------


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


def tiny_t5_tokenizer():
    """A T5 (Unigram) tokenizer over single letters and digits, word-initial or not: <pad> 0, </s> 1, <unk> 2."""
    from transformers.models.t5.tokenization_t5 import T5Tokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


# ---- encoders, VAEs --------------------------------------------------------------------------------------------


def clip_config(vocab_size):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def t5_config(cls_config, vocab_size, d_model=32):
    return cls_config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def tiny_t5_encoder(vocab_size, d_model=32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(t5_config(T5Config, vocab_size, d_model)).eval()


def tiny_vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=16,
        **kw,
    )


# ---- pipelines ---------------------------------------------------------------------------------------------------


def build_ddpm(folder, seed: int = 0):
    """A pixel DDPMPipeline: UNet2DModel (8×8 RGB) + DDPMScheduler (linear β). ``seed``: other random weights."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(beta_schedule="linear")).save_pretrained(folder)
    return folder


def build_sd(folder, tmp, seed: int = 0):
    """Stable Diffusion 1.x layout: UNet2DConditionModel + AutoencoderKL + CLIP text encoder, DDIM with
    scaled-linear β."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer(tmp / "sd_tok")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(clip_config(len(tok))).eval(),
        tokenizer=tok,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sd3(folder, tmp, seed: int = 0):
    """Stable Diffusion 3 layout: SD3Transformer2DModel + two CLIP encoders, no T5; FlowMatchEuler, shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = tiny_tokenizer(tmp / "sd3_tok")
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(clip_config(len(tok))).eval(),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(clip_config(len(tok))).eval(),
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sdxl(folder, tmp):
    """SDXL: two CLIP encoders (the second with projection: pooled embeddings), a UNet with "text_time"
    added conditioning (size/crop time ids), EulerDiscreteScheduler with SDXL's β and leading spacing."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tok = tiny_tokenizer(tmp / "sdxl_tok")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        norm_num_groups=8,
    )
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(clip_config(len(tok))).eval(),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(len(tok))).eval(),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=sched,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sd35(folder, tmp):
    """SD3.5 (medium layout): an SD3 transformer with RMS QK norm and a dual-attention (MMDiT-X) layer, two CLIP
    encoders and a T5 encoder; FlowMatchEulerDiscreteScheduler with shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    tok = tiny_tokenizer(tmp / "sd35_tok")
    t5tok = tiny_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(clip_config(len(tok))).eval(),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(clip_config(len(tok))).eval(),
        tokenizer_2=tok,
        text_encoder_3=tiny_t5_encoder(len(t5tok), d_model=64),
        tokenizer_3=t5tok,
    )
    pipe.save_pretrained(folder)
    return folder


def build_flux(folder, tmp, schnell=False):
    """FLUX.1 layout: CLIP (pooled) + T5 encoders, a FluxTransformer2DModel on 2×2-packed latents (in_channels =
    4 × 4 latent channels). dev: guidance embedding and dynamic shifting (FLUX.1-dev's scheduler config);
    schnell: neither, shift 1 (FLUX.1-schnell's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tok = tiny_tokenizer(tmp / f"flux{'s' if schnell else ''}_tok")
    t5tok = tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=not schnell,
        axes_dims_rope=(4, 4, 8),
    )
    sched = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=4096,
        max_shift=1.15,
        shift=1.0 if schnell else 3.0,
        use_dynamic_shifting=not schnell,
    )
    pipe = FluxPipeline(
        scheduler=sched,
        transformer=transformer,
        vae=tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=CLIPTextModel(clip_config(len(tok))).eval(),
        tokenizer=tok,
        text_encoder_2=tiny_t5_encoder(len(t5tok)),
        tokenizer_2=t5tok,
    )
    pipe.save_pretrained(folder)
    return folder


def build_wan(folder, flow_shift=3.0):
    """Wan 2.1 text-to-video layout: a UMT5 encoder, a WanTransformer3DModel (patch 1×2×2), an AutoencoderKLWan
    with spatial and temporal factor 2, and Wan's UniPCMultistepScheduler (flow sigmas, flow_shift)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tok = tiny_t5_tokenizer()
    text_encoder = UMT5EncoderModel(t5_config(UMT5Config, len(tok))).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1],
        num_res_blocks=1,
        temperal_downsample=[True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 2.0, 0.5, 1.0],
        scale_factor_temporal=2,
        scale_factor_spatial=2,
    )
    sched = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift
    )
    WanPipeline(
        tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=sched, transformer=transformer
    ).save_pretrained(folder)
    return folder


# ---- checks --------------------------------------------------------------------------------------------------------


def fingerprint(folder) -> dict:
    """Every file under ``folder`` (relative path → sha256): what a run must leave unchanged."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class TimestepRecorder:
    """Records the ``timestep`` keyword each forward of a diffusers transformer receives (float64 list)."""

    def __init__(self, module):
        self.seen = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        self.seen.append(torch.as_tensor(kwargs["timestep"]).double().flatten()[0].item())

    def remove(self):
        self.handle.remove()


def distill(model, out_dir, guidance, nfe=3, samples=3, teacher_steps=10):
    """Teacher trajectories (shards) → OSS (ddim student) and λ-opt (dpmpp2m) schedules for ``model``."""
    from optsteps.optimizers.lambda_opt import lambda_opt_schedule
    from optsteps.optimizers.oss import OSSOptions, oss_search
    from optsteps.pipeline.config import TeacherConfig
    from optsteps.teacher.load import LabelledDenoiser, load_teacher
    from optsteps.teacher.trajectories import generate_trajectories

    cfg = TeacherConfig(solver="unipc", steps=teacher_steps, schedule="uniform-lambda", guidance=guidance, seed=0)
    man = generate_trajectories(model, cfg, out_dir, samples=samples, shard_size=samples, progress=False)
    assert man["model_sha256"] == model.identity["sha256"] and len(man["shards"]) == 1
    t, states, labels = load_teacher(cfg, model, out_dir, samples)
    assert states.shape == (teacher_steps + 1, samples) + tuple(model.sample_shape)
    assert torch.isfinite(states).all()
    den = LabelledDenoiser(model, labels, guidance)
    res = oss_search(
        t,
        states,
        den,
        model.noise_schedule,
        nfe,
        "ddim",
        OSSOptions(start_window=0),
        eval_batch_size=samples,
        model=model.name,
    )
    lam = lambda_opt_schedule(model.noise_schedule, nfe, "dpmpp2m", model=model.name)
    assert res.schedule.nfe == nfe and lam.nfe == nfe
    assert res.schedule.t[0] == t[0] and res.cost >= 0
    return res.schedule, lam, labels
