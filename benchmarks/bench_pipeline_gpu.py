"""Your own model on Ray GPU actors: teacher throughput against the bare UNet, and the OSS DP against K·N forwards.

    .venv/bin/python benchmarks/bench_pipeline_gpu.py            # GPU: an SD-1.5-architecture pipeline, fp16
    .venv/bin/python benchmarks/bench_pipeline_gpu.py --small    # CPU: a tiny SD pipeline (checks the script)

1. Builds a Stable Diffusion 1.5 *architecture* with random weights from its published configuration (the
   configs are written below; nothing is downloaded): UNet2DConditionModel (320/640/1280/1280 channels, 2 layers
   per block, cross-attention 768, 8 heads), AutoencoderKL (128/256/512/512, 4 latent channels), a 12-layer
   768-wide CLIP text encoder, the scaled-linear β schedule (0.00085…0.012, 1000 steps). The tokenizer is a
   character-level CLIP tokenizer (tests/tiny_pipelines.py), which only changes which token ids the prompts
   get. Saved with ``save_pretrained`` into ``--work`` (fp16 on the GPU: ~2 GB).
2. Runs the trajectories stage (``optsteps.pipeline.stages.trajectories``) with ``ray.enabled`` on one actor per
   GPU (``num_gpus_per_actor: 1``): each actor loads the pipeline once, on its GPU, in the entry's dtype
   (``auto``: fp16), and computes whole seed ranges; the driver loads no network and writes the shards.
   The teacher: ``--steps`` UniPC steps, classifier-free guidance ``--guidance`` (two UNet rows per sample and
   step, batched), ``--samples`` samples in shards of ``--shard-size``.
3. Times the bare UNet forward in the same process setting: the same batch (``max_batch`` rows: what
   ``PipelineModel.net`` sends to the UNet at once), dtype, latent size and text-embedding shape, CUDA-synchronised.
4. Runs the OSS dynamic program alone (``oss_search(refine=False)``, ``--nfe`` K steps) on the shards, with the
   pipeline loaded in this process, and compares its wall time with K·N batched forward passes at the bare rate
   of the DP's own batch (N = teacher steps; each pass = the S samples, times 2 for CFG, in ``max_batch`` chunks).

Printed (and written to ``--json``): teacher throughput in UNet rows/s (end to end, and steady state: shards after
the first round, so without actor start and pipeline load) against the bare UNet rows/s (goal ≥ 70 %), and the
OSS DP wall time against K·N batched forwards (goal ≤ 1.2). ``--small`` runs the same code on a tiny SD pipeline
on the CPU in float32 with 2 CPU actors (the ratios there say little: the tiny UNet is overhead-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for k, v in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_SCHEDULER_EVENTS": "0"}.items():
    os.environ.setdefault(k, v)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_pipelines: the character-level CLIP tokenizer and the tiny SD

PROMPTS = [
    "a photo of a cat",
    "a red apple on a wooden table",
    "a watercolor painting of a lighthouse at sunset",
    "two dogs playing in the snow",
    "a bowl of soup",
    "a city street at night",
    "a mountain lake",
    "an astronaut riding a horse",
]

# Stable Diffusion 1.5's published component configurations (unet/config.json, vae/config.json,
# text_encoder/config.json, scheduler/scheduler_config.json of the v1-5 release), as constructor arguments.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    act_fn="silu",
    norm_num_groups=32,
    sample_size=512,
)
SD15_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def build_sd15(folder: Path, device: str, dtype) -> Path:
    """The SD-1.5 architecture with random weights (initialised on ``device``), saved in ``dtype``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_pipelines import tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = tiny_tokenizer(folder.parent / (folder.name + "-tokenizer"))
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(
            CLIPTextConfig(vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=1, **SD15_TEXT)
        ).eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(dtype=dtype).save_pretrained(folder)
    return folder


def bare_unet_rows_per_s(folder: Path, device: str, dtype, batch: int, latent: int, iters: int) -> float:
    """UNet rows per second at ``batch`` rows of [4, latent, latent] with 77×768 text embeddings (synchronised)."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype, low_cpu_mem_usage=False)
    unet = unet.eval().requires_grad_(False).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype)
    emb = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g).to(device, dtype)
    t = torch.full((batch,), 500.0, device=device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(3):
            unet(x, t, encoder_hidden_states=emb, return_dict=False)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            unet(x, t, encoder_hidden_states=emb, return_dict=False)
        sync()
        dt = time.perf_counter() - t0
    del unet
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return batch * iters / dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a tiny SD pipeline on the CPU (2 CPU actors)")
    ap.add_argument("--work", default="/tmp/optsteps-bench-pipeline-gpu")
    ap.add_argument("--samples", type=int, default=None, help="teacher samples (default 64; --small 8)")
    ap.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 8; --small 2)")
    ap.add_argument("--steps", type=int, default=None, help="teacher steps N (default 50; --small 10)")
    ap.add_argument("--nfe", type=int, default=None, help="OSS student steps K (default 8; --small 3)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--max-batch", type=int, default=16, help="rows per UNet call (models.<name>.max_batch)")
    ap.add_argument("--actors", type=int, default=0, help="Ray actors (default: one per GPU; --small 2)")
    ap.add_argument("--iters", type=int, default=None, help="timed bare UNet calls (default 20; --small 10)")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    a = ap.parse_args(argv)
    small = a.small
    samples = a.samples or (8 if small else 64)
    shard = a.shard_size or (2 if small else 8)
    steps = a.steps or (10 if small else 50)
    nfe = a.nfe or (3 if small else 8)
    iters = a.iters or (10 if small else 20)

    import torch

    import optsteps.pipeline.stages as stages
    from optsteps.models import load_model
    from optsteps.optimizers.oss import OSSOptions, oss_search
    from optsteps.pipeline import layout
    from optsteps.pipeline.config import params_from_dict
    from optsteps.teacher.load import LabelledDenoiser, load_teacher

    if not small and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --small for the CPU check, or on a GPU machine")
    device = "cpu" if small else "cuda"
    dtype = torch.float32 if small else torch.float16
    gpus = 0 if small else torch.cuda.device_count()
    actors = a.actors or (2 if small else gpus)
    work = Path(a.work) / ("small" if small else "sd15")
    folder = work / "pipeline"
    t0 = time.perf_counter()
    if not (folder / "model_index.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        if small:
            from tiny_pipelines import build_sd

            build_sd(folder, work / "tokenizer")
        else:
            build_sd15(folder, device, dtype)
    build_s = time.perf_counter() - t0
    (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    shutil.rmtree(work / "artifacts" / "trajectories", ignore_errors=True)
    size = {} if small else {"height": 512, "width": 512}
    p = params_from_dict(
        {
            "artifacts": str(work / "artifacts"),
            "results": str(work / "results"),
            "models": {
                "sd15": {
                    "pipeline": str(folder),
                    "prompts": str(work / "prompts.txt"),
                    "guidance": a.guidance,
                    "dtype": "auto",
                    "device": "cpu" if small else "auto",
                    "max_batch": a.max_batch,
                    **size,
                }
            },
            "teacher": {"solver": "unipc", "steps": steps, "schedule": "uniform-lambda", "seed": 0},
            "trajectories": {"samples": samples, "shard_size": shard},
            "ray": {
                "enabled": True,
                "actors": actors,
                "num_cpus": max(2, actors),
                "num_gpus_per_actor": 1.0,
                "object_store_mb": 2048,
                "task_timeout_s": 1800,
            },
        }
    )
    q = p.for_model("sd15")
    cfg_rows = 2 if q.teacher.guidance != 1.0 else 1  # CFG: the cond and null rows of each sample, one batch

    # 2. the trajectories stage on Ray actors, with the arrival time of every shard
    from optsteps.integrations import ray_pool

    arrivals = []
    real_runner = ray_pool.ray_runner

    def timed_runner(*args, **kw):
        run = real_runner(*args, **kw)

        def timed(pending):
            for entry in run(pending):
                arrivals.append((time.perf_counter(), entry["count"]))
                yield entry

        return timed

    ray_pool.ray_runner = timed_runner
    try:
        t0 = time.perf_counter()
        man = stages.trajectories(p, "sd15")
        traj_s = time.perf_counter() - t0
    finally:
        ray_pool.ray_runner = real_runner
    import ray

    gpus_each = ray_pool.gpus_per_actor(p.ray) if q.entry("sd15").device != "cpu" else 0.0
    nodes = sorted({e["node"][:12] for e in man["shards"]})
    ray.shutdown()  # frees the actors' GPUs for the bare UNet timing
    teacher_e2e = samples * steps * cfg_rows / traj_s
    steady = None
    if len(arrivals) > actors and arrivals[-1][0] > arrivals[actors - 1][0]:
        # the shards after the first round, from the end of the first round: no actor start or pipeline load
        rows_after = sum(c for _, c in arrivals[actors:]) * steps * cfg_rows
        steady = rows_after / (arrivals[-1][0] - arrivals[actors - 1][0])

    # 3. the bare UNet at the same batch and dtype
    from optsteps.models import describe_model

    card = describe_model(q.entry("sd15"))
    latent = card.sample_shape[1]
    batch = min(a.max_batch, shard * cfg_rows)  # rows per UNet call in the teacher (a shard, CFG-doubled, chunked)
    bare = bare_unet_rows_per_s(folder, device, dtype, batch, latent, iters)
    dp_batch = min(a.max_batch, samples * cfg_rows)  # rows per UNet call in the DP (all S samples of a node)
    bare_dp = bare if dp_batch == batch else bare_unet_rows_per_s(folder, device, dtype, dp_batch, latent, iters)

    # 4. the OSS DP alone on the shards (the pipeline loaded here), against K·N batched forward passes
    model = load_model(q.entry("sd15"), q.artifacts)
    t, states, labels = load_teacher(q.teacher, model, layout.trajectories_dir(q, "sd15"), samples)
    den = LabelledDenoiser(model, labels, q.teacher.guidance)
    t0 = time.perf_counter()
    res = oss_search(
        t,
        states,
        den,
        model.noise_schedule,
        nfe,
        "unipc",
        OSSOptions(refine=False),
        eval_batch_size=samples,
        model="sd15",
    )
    dp_s = time.perf_counter() - t0
    kn_forward_s = nfe * steps * samples * cfg_rows / bare_dp
    finite = bool(torch.isfinite(states).all())

    out = {
        "mode": "small (CPU, tiny SD)" if small else "SD-1.5 architecture, random weights",
        "device": device if small else torch.cuda.get_device_name(0),
        "dtype": str(dtype).replace("torch.", ""),
        "gpus": gpus,
        "actors": actors,
        "gpus_per_actor": gpus_each,
        "ray_nodes": nodes,
        "build_s": round(build_s, 1),
        "latent": list(card.sample_shape),
        "samples": samples,
        "shard_size": shard,
        "teacher_steps": steps,
        "cfg_rows": cfg_rows,
        "unet_batch": batch,
        "shards": len(man["shards"]),
        "states_finite": finite,
        "trajectories_stage_s": round(traj_s, 2),
        "teacher_rows_per_s_end_to_end": round(teacher_e2e, 2),
        "teacher_rows_per_s_steady": None if steady is None else round(steady, 2),
        "bare_unet_rows_per_s": round(bare, 2),
        "teacher_vs_bare_end_to_end": round(teacher_e2e / bare, 3),
        "teacher_vs_bare_steady": None if steady is None else round(steady / bare, 3),
        "oss_nfe": nfe,
        "oss_dp_unet_batch": dp_batch,
        "bare_unet_rows_per_s_dp_batch": round(bare_dp, 2),
        "oss_dp_s": round(dp_s, 2),
        "kn_batched_forward_s": round(kn_forward_s, 2),
        "oss_dp_vs_kn_forward": round(dp_s / kn_forward_s, 3),
        "oss_model_evals_per_sample": res.schedule.extra.get("model_evals"),
    }
    print(json.dumps(out, indent=1))
    print(
        f"\nteacher throughput {out['teacher_rows_per_s_steady'] or teacher_e2e:.1f} UNet rows/s steady "
        f"({teacher_e2e:.1f} end to end) vs bare UNet {bare:.1f} rows/s at batch {batch} {out['dtype']}: "
        f"{(steady or teacher_e2e) / bare:.0%} (goal ≥ 70 %)"
    )
    print(
        f"OSS DP (K={nfe}, N={steps}, S={samples}) {dp_s:.1f} s vs K·N batched forwards {kn_forward_s:.1f} s: "
        f"{dp_s / kn_forward_s:.2f}× (goal ≤ 1.2)"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
