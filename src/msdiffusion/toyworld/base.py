"""A base model that knows the toy world: the SDXL-shaped ``toy`` architecture, trained on the
world's training scenes. A tool for the learning proof (``msdiffusion.toyworld.learn``), not a
product feature: the adapter is then trained on top of it with ``msdiffusion train``, exactly as on
SDXL.

Three short phases, each from the training split only (held-out colour pairs are never seen):

1. **VAE** (4× down, 4 latent channels): reconstruction (MSE + L1) with a small KL term; the
   latent scaling factor is set to 1 / std of the latents, as SDXL's is.
2. **Image encoder** (the CLIP vision tower): contrastive, two frames of one subject are a
   positive pair. Stands in for CLIP's pre-training — a random tower keeps too little of the
   colours for the adapter to read (a linear probe on its penultimate states finds a held-out
   reference's primary colour 65 % and its second colour 33 % of the time; chance 12.5 %).
3. **UNet + both text encoders**: ε-prediction on cached latents (SDXL's noise schedule, min-SNR
   weighting, 10 % empty captions for classifier-free guidance), EMA of the UNet.

The result is an SDXL pipeline folder (``base/``) and a CLIP vision folder (``image_encoder/``),
loadable by ``MSDiffusionXLPipeline.from_pretrained`` and ``msdiffusion train`` like the released
components.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..atomic import atomic_dir, atomic_path
from ..encoding import prepare_reference
from ..testing.sdxl import random_components
from .world import IMAGE_SIZE, render, sample_reference, sample_scene

__all__ = ["BaseSettings", "train_base", "render_scenes", "time_ids"]

TIME_IDS = (IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE)  # SDXL micro-conditioning


@dataclass
class BaseSettings:
    """Sizes and lengths of the three phases (defaults: the shipped base)."""

    seed: int = 0
    scenes: int = 24000  # training scenes rendered once (VAE and UNet data)
    batch_size: int = 32
    vae_steps: int = 1200
    vae_lr: float = 1e-3
    encoder_identities: int = 3000  # subjects with `encoder_views` reference frames each
    encoder_views: int = 3
    encoder_steps: int = 1200
    encoder_lr: float = 5e-4
    unet_steps: int = 2600
    unet_lr: float = 3e-4
    text_lr: float = 1e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500  # UNet-phase checkpoints (resume after an interruption)
    threads: int | None = None  # torch threads (None: torch's default)


def time_ids(batch: int) -> torch.Tensor:
    return torch.tensor([TIME_IDS], dtype=torch.float32).repeat(batch, 1)  # (B, 6)


def render_scenes(seed: int, count: int, *, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Training scenes 0..count-1: ``(N, 64, 64, 3)`` uint8 and their captions."""
    pixels = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    captions = []
    for i in tqdm(range(count), desc="rendering scenes", disable=not progress):
        scene = sample_scene(seed, "train", i)
        image, _ = render(scene)
        pixels[i] = np.asarray(image)
        captions.append(scene.caption)
    return pixels, captions


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:  # linear warm-up, then cosine down to 10 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _Log:
    """A JSONL loss log (phase, step, loss, seconds) next to the weights."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.time()

    def write(self, phase: str, step: int, **values: float) -> None:
        entry = {"phase": phase, "step": step, "seconds": round(time.time() - self.start, 1)}
        entry.update({k: round(float(v), 6) for k, v in values.items()})
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")


# ---- phase 1: VAE -----------------------------------------------------------------------------


def train_vae(
    vae: Any, pixels: np.ndarray, settings: BaseSettings, log: _Log, progress: bool = True
) -> Any:
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, settings.vae_steps))
    gen = np.random.default_rng([settings.seed, 1])
    bar = tqdm(range(settings.vae_steps), desc="VAE", disable=not progress)
    for step in bar:
        x = _to_tensor(pixels[gen.integers(len(pixels), size=settings.batch_size)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == settings.vae_steps - 1:
            bar.set_postfix(rec=f"{rec.item():.4f}")
            log.write("vae", step, loss=rec.item(), kl=kl.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # SDXL's convention: scaled latents have unit variance
        sample = _to_tensor(pixels[:512])
        std = (
            torch.cat(
                [vae.encode(sample[i : i + 64]).latent_dist.mean for i in range(0, len(sample), 64)]
            )
            .std()
            .item()
        )
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


# ---- phase 2: image encoder -------------------------------------------------------------------


def _reference_views(
    settings: BaseSettings, feature_extractor: Any, progress: bool
) -> torch.Tensor:
    """``(identities, views, 3, s, s)`` preprocessed reference crops of training subjects."""
    views = []
    for i in tqdm(
        range(settings.encoder_identities), desc="rendering references", disable=not progress
    ):
        subject = sample_scene(settings.seed, "train", 10**7 + i, count=1).subjects[0]
        crops = []
        for k in range(settings.encoder_views):
            ref = sample_reference(subject, settings.seed, 10**7 + i * 16 + k)
            crops.append(prepare_reference(ref.crop()))
        views.append(feature_extractor(images=crops, return_tensors="pt").pixel_values)
    return torch.stack(views)


def train_image_encoder(
    encoder: Any, feature_extractor: Any, settings: BaseSettings, log: _Log, progress: bool = True
) -> Any:
    views = _reference_views(settings, feature_extractor, progress)  # (I, V, 3, s, s)
    encoder.train().requires_grad_(True)
    opt = torch.optim.AdamW(encoder.parameters(), lr=settings.encoder_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, settings.encoder_steps))
    gen = np.random.default_rng([settings.seed, 2])
    n = settings.batch_size * 2  # identities per batch, two views each
    bar = tqdm(range(settings.encoder_steps), desc="image encoder", disable=not progress)
    for step in bar:
        ids = gen.choice(len(views), size=n, replace=False)
        pick = np.stack([gen.choice(views.shape[1], size=2, replace=False) for _ in ids])
        a = views[ids, pick[:, 0]]  # (n, 3, s, s)
        b = views[ids, pick[:, 1]]
        emb = F.normalize(encoder(torch.cat([a, b])).image_embeds, dim=-1)  # (2n, D)
        logits = emb[:n] @ emb[n:].T / 0.1  # (n, n): row i's positive is column i
        target = torch.arange(n)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == settings.encoder_steps - 1:
            accuracy = (logits.argmax(1) == target).float().mean().item()
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
            log.write("image_encoder", step, loss=loss.item(), accuracy=accuracy)
    return encoder.eval().requires_grad_(False)


# ---- phase 3: UNet + text encoders ------------------------------------------------------------


def _encode_text(
    components: dict[str, Any], ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, 77) → SDXL prompt embeds (B, 77, C) and pooled embeds (B, D_pool)."""
    out_1 = components["text_encoder"](ids, output_hidden_states=True)
    out_2 = components["text_encoder_2"](ids, output_hidden_states=True)
    states = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
    return states, out_2.text_embeds


def _tokens(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (N, 77)


def train_unet(
    components: dict[str, Any],
    pixels: np.ndarray,
    captions: list[str],
    settings: BaseSettings,
    log: _Log,
    progress: bool = True,
    checkpoint: Path | None = None,
) -> torch.nn.Module:
    """Trains the UNet and both text encoders in place; returns the EMA UNet. With
    ``checkpoint``, resumes from it and rewrites it every ``settings.checkpoint_every`` steps."""
    from diffusers import DDPMScheduler

    vae, unet = components["vae"], components["unet"]
    tokenizer = components["tokenizer"]
    assert tokenizer.get_vocab() == components["tokenizer_2"].get_vocab()  # one id space
    with torch.no_grad():
        moments = torch.cat(
            [
                vae.encode(_to_tensor(pixels[i : i + 64])).latent_dist.parameters
                for i in tqdm(
                    range(0, len(pixels), 64), desc="caching latents", disable=not progress
                )
            ]
        )  # (N, 8, h, w)
    ids = _tokens(tokenizer, captions)  # (N, 77)
    empty = _tokens(tokenizer, [""])  # (1, 77)
    scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    alphas = scheduler.alphas_cumprod  # (T,)
    snr = alphas / (1.0 - alphas)
    text = [components["text_encoder"], components["text_encoder_2"]]
    for module in [unet, *text]:
        module.train().requires_grad_(True)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr": settings.unet_lr},
            {"params": [p for m in text for p in m.parameters()], "lr": settings.text_lr},
        ],
        weight_decay=0.01,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(settings.warmup_steps, settings.unet_steps)
    )
    gen = torch.Generator().manual_seed(settings.seed)
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        for module, key in (
            (unet, "unet"),
            (ema, "ema"),
            (text[0], "text_encoder"),
            (text[1], "text_encoder_2"),
            (opt, "optimizer"),
            (sched, "scheduler"),
        ):
            module.load_state_dict(state[key])
        gen.set_state(state["generator"])
        start = int(state["step"])
    scale = vae.config.scaling_factor
    bar = tqdm(
        range(start, settings.unet_steps),
        desc="UNet",
        disable=not progress,
        initial=start,
        total=settings.unet_steps,
    )
    for step in bar:
        idx = torch.randint(len(moments), (settings.batch_size,), generator=gen)
        mean, logvar = moments[idx].chunk(2, dim=1)
        latents = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)) * scale
        batch_ids = ids[idx].clone()
        dropped = torch.rand(len(idx), generator=gen) < settings.caption_dropout
        batch_ids[dropped] = empty
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, len(alphas), (len(idx),), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        states, pooled = _encode_text(components, batch_ids)
        pred = unet(
            noisy,
            t,
            encoder_hidden_states=states,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids(len(idx))},
        ).sample
        weight = torch.clamp(snr[t], max=settings.min_snr_gamma) / snr[t]  # min-SNR (ε target)
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1.0 - decay)
        if checkpoint is not None and (step + 1) % settings.checkpoint_every == 0:
            state = {
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "text_encoder": text[0].state_dict(),
                "text_encoder_2": text[1].state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "step": step + 1,
            }
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
        if step % 50 == 0 or step == settings.unet_steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log.write("unet", step, loss=loss.item(), lr=sched.get_last_lr()[0])
    for module in text:
        module.eval().requires_grad_(False)
    return ema


# ---- all phases -------------------------------------------------------------------------------


def save_base(components: dict[str, Any], out: Path, dtype: torch.dtype = torch.float16) -> None:
    """``out/base`` (an SDXL pipeline folder) and ``out/image_encoder`` (CLIP vision), weights in
    ``dtype`` (fp16 keeps the shipped files small; load them in any dtype)."""
    from diffusers import StableDiffusionXLPipeline

    parts = {
        k: components[k]
        for k in (
            "vae",
            "text_encoder",
            "text_encoder_2",
            "tokenizer",
            "tokenizer_2",
            "unet",
            "scheduler",
        )
    }
    # dropped captions were trained as "" (not zeros): the unconditional branch encodes ""
    pipe = StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=False)
    pipe.to(dtype=dtype)
    with atomic_dir(out / "base") as tmp:  # whole or not there; the umask's permissions
        pipe.save_pretrained(tmp, safe_serialization=True)
    pipe.to(dtype=torch.float32)
    encoder = components["image_encoder"]
    with atomic_dir(out / "image_encoder") as tmp:
        encoder.to(dtype).save_pretrained(tmp, safe_serialization=True)
        components["feature_extractor"].save_pretrained(tmp)
    encoder.to(torch.float32)


def train_base(
    out_dir: str | Path, settings: BaseSettings | None = None, *, progress: bool = True
) -> Path:
    """Run the three phases and write ``out_dir/{base,image_encoder}``, ``base_log.jsonl`` and
    ``base_settings.json`` (last: it marks a complete base). Returns ``out_dir``.

    Each phase leaves its weights in ``out_dir/phases/`` (the UNet phase a checkpoint every
    ``checkpoint_every`` steps), so an interrupted run continues where it stopped."""
    settings = settings or BaseSettings()
    out = Path(out_dir)
    phases = out / "phases"
    phases.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    log = _Log(out / "base_log.jsonl")
    torch.manual_seed(settings.seed)
    components = random_components("toy", seed=settings.seed)
    scenes = phases / "scenes.npz"
    if scenes.exists():
        with np.load(scenes) as cached:
            pixels, captions = cached["pixels"], [str(c) for c in cached["captions"]]
    else:
        pixels, captions = render_scenes(settings.seed, settings.scenes, progress=progress)
        np.savez(phases / "scenes.tmp.npz", pixels=pixels, captions=np.asarray(captions))
        (phases / "scenes.tmp.npz").replace(scenes)
    for name, phase in (("vae", train_vae), ("image_encoder", train_image_encoder)):
        module = components[name]
        done = phases / f"{name}.safetensors"
        if done.exists():
            _load_phase(module, done)
            continue
        if name == "vae":
            phase(module, pixels, settings, log, progress)
        else:
            phase(module, components["feature_extractor"], settings, log, progress)
        _save_phase(module, done)
    components["unet"] = train_unet(
        components, pixels, captions, settings, log, progress, checkpoint=phases / "unet.pt"
    )
    save_base(components, out)
    (out / "base_settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    return out


def _save_phase(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    config = getattr(module, "config", None)
    scaling = getattr(config, "scaling_factor", None)  # the VAE's, set after its training
    with atomic_path(path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in module.state_dict().items()},
            str(tmp),
            metadata={"scaling_factor": str(scaling)} if scaling is not None else None,
        )


def _load_phase(module: torch.nn.Module, path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))
    with safe_open(str(path), "pt") as handle:
        scaling = (handle.metadata() or {}).get("scaling_factor")
    if scaling is not None:
        module.register_to_config(scaling_factor=float(scaling))
    module.eval().requires_grad_(False)
