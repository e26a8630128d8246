"""The training loop (DESIGN §2.4) on accelerate: one CPU to many GPU nodes (DDP, FSDP, DeepSpeed).

Per optimizer step: ``gradient_accumulation_steps`` micro-batches, each
    batch → frozen encoders (or the cache) → noise, t ~ U{0..T-1} → AdapterUNet → MSE → backward;
then grad-norm clipping, AdamW, the LR schedule, the EMA. The frozen weights are in the weight
dtype (bf16 on GPUs), the adapter in fp32 under autocast. Every ``checkpoint.every`` steps an
atomic checkpoint (adapter, optimizer, scheduler, EMA, RNG of every process, data position);
``resume="latest"`` continues bit-exactly. Every ``validation.every`` steps a grid of images.
Logged scalars go to the tracker and to ``<output_dir>/logs/metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..atomic import atomic_write_json
from ..errors import InputError, MSDiffusionError
from ..runtime import dtype_label, to_dtype
from .baddata import SkipLog
from .checkpoint import CheckpointManager, TrainState
from .components import build_adapter, load_components, move_module, resolve_weight_dtype
from .config import TrainConfig
from .encoders import FrozenEncoders, ModelInputs
from .launch import make_accelerator, usable_records
from .model import AdapterUNet

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "train"]

logger = logging.getLogger("msdiffusion.training")
ENCODERS = ("vae", "text_encoder", "text_encoder_2", "image_encoder")


class TrainingDiverged(MSDiffusionError):
    """The loss became NaN or infinite; the run stopped before updating any weight with it."""


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    step: int
    loss: float | None
    samples_skipped: int


def _flat_hparams(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(_flat_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            out[prefix + key] = value
        else:
            out[prefix + key] = str(value)
    return out


class Trainer:
    """Builds everything from a config; ``run()`` trains and exports the adapter.

    ``callbacks`` are called as ``callback(trainer, state)`` after every optimizer step (on every
    process) — for custom logging, early stopping (raise), or fault injection in tests.
    """

    def __init__(
        self, config: TrainConfig, callbacks: Sequence[Callable[[Trainer, TrainState], None]] = ()
    ):
        self.config = config.validate()
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output_dir)
        self.accelerator = make_accelerator(config)
        acc = self.accelerator
        self.is_main = acc.is_main_process
        logger.setLevel(logging.INFO if self.is_main else logging.ERROR)
        from accelerate.utils import DistributedType

        self.distributed_type = acc.distributed_type
        fsdp = acc.distributed_type == DistributedType.FSDP
        self.weight_dtype = resolve_weight_dtype(config.model.weight_dtype, acc.device, fsdp=fsdp)
        if fsdp and config.ema.enabled:
            raise InputError(
                "ema.enabled",
                "is not supported under FSDP (each process holds a "
                "shard of the weights); use DDP or DeepSpeed ZeRO-2",
                True,
            )
        if self.weight_dtype != torch.float32 and acc.mixed_precision == "no":
            raise InputError(
                "mixed_precision",
                "must be fp16 or bf16 when the frozen weights are "
                f"{self.weight_dtype} (the fp32 adapter runs under autocast)",
                "no",
            )
        self.checkpoints = CheckpointManager(
            self.output_dir / "checkpoints", config.checkpoint.keep
        )
        self.state = TrainState(world_size=acc.num_processes, batch_size=config.batch_size)
        self.skips = SkipLog(config.bad_data, enabled_logging=self.is_main)
        self._setup_model()
        self._setup_data()
        self._setup_optimization()

    # ---- setup ---------------------------------------------------------------------------------
    def _setup_model(self) -> None:
        from accelerate.utils import set_seed

        config, acc = self.config, self.accelerator
        set_seed(config.seed)  # the same adapter initialisation on every process
        components = load_components(config.model, dtype=self.weight_dtype)
        self.vae_dtype = (
            to_dtype(config.model.vae_dtype) if config.model.vae_dtype else self.weight_dtype
        )
        self.cached = config.data.cache_dir is not None
        # With the cache the encoders only serve validation: they wait on the CPU.
        self._place_encoders(torch.device("cpu") if self.cached else acc.device, components)
        move_module(components["unet"], acc.device, self.weight_dtype)
        adapter = build_adapter(config.model, components["unet"]).to(acc.device)
        self.components = components
        self.encoders = FrozenEncoders(**components)
        self.noise_scheduler = components["noise_scheduler"]
        self.model = AdapterUNet(components["unet"], adapter, region=config.model.region)
        if config.gradient_checkpointing:
            components["unet"].enable_gradient_checkpointing()
        if config.allow_tf32 and acc.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        set_seed(config.seed, device_specific=True)  # different noise on every process
        n_train = sum(p.numel() for p in self.model.trainable_parameters())
        logger.info(
            "adapter: %.1f M trainable parameters (fp32); frozen weights in %s",
            n_train / 1e6,
            dtype_label(self.weight_dtype),
        )

    def _place_encoders(
        self, device: torch.device, components: dict[str, Any] | None = None
    ) -> None:
        components = components if components is not None else self.components
        for name in ENCODERS:
            dtype = self.vae_dtype if name == "vae" else self.weight_dtype
            move_module(components[name], device, torch.float32 if device.type == "cpu" else dtype)

    def _setup_data(self) -> None:
        from .cache import CachedDataset, cache_fingerprint
        from .dataset import ManifestDataset

        config = self.config
        if self.cached:
            dtype = self.cache_dtype()
            self.dataset = CachedDataset(
                config.data.cache_dir,
                config.dropout,
                config.seed,
                expected_fingerprint=cache_fingerprint(config, dtype),
            )
            self.state.extra["cache_skipped"] = len(self.dataset.skipped)
            self.skips.report([tuple(s) for s in self.dataset.skipped], "when caching")
            total = len(self.dataset) + len(self.dataset.skipped)
            self.skips.check(len(self.dataset.skipped), total, "cache", runtime=False)
            logger.info(
                "data: %d cached records (%d skipped when caching)",
                len(self.dataset),
                len(self.dataset.skipped),
            )
        else:
            records, root, n_bad = usable_records(config, self.accelerator, self.skips)
            self.state.extra["manifest_skipped"] = n_bad
            self.dataset = ManifestDataset(
                records,
                root,
                config.data,
                config.dropout,
                self.components["feature_extractor"],
                seed=config.seed,
            )

    def cache_dtype(self) -> torch.dtype:
        name = self.config.data.cache_dtype
        return self.weight_dtype if name == "auto" else to_dtype(name)

    def _setup_optimization(self) -> None:
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        config, acc, o = self.config, self.accelerator, self.config.optim
        self.optimizer = torch.optim.AdamW(
            list(self.model.trainable_parameters()),
            lr=o.learning_rate,
            betas=(o.adam_beta1, o.adam_beta2),
            weight_decay=o.weight_decay,
            eps=o.adam_epsilon,
        )
        self.lr_scheduler = get_scheduler(
            o.lr_scheduler,
            self.optimizer,
            num_warmup_steps=o.lr_warmup_steps,
            num_training_steps=config.max_steps,
        )
        self.ema = None
        if config.ema.enabled:
            self.ema = EMAModel(
                list(self.model.trainable_parameters()),
                decay=config.ema.decay,
                use_ema_warmup=config.ema.warmup,
            )
        if acc.state.deepspeed_plugin is not None:  # no prepared DataLoader tells it the size
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = (
                config.batch_size
            )
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(
            self.model, self.optimizer, self.lr_scheduler
        )
        self.params = list(acc.unwrap_model(self.model).trainable_parameters())
        if self.ema is not None:
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

    # ---- checkpoints ----------------------------------------------------------------------------
    def _is(self, kind: str) -> bool:
        from accelerate.utils import DistributedType

        return self.distributed_type == DistributedType[kind]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapter's full fp32 weights (gathered under FSDP/DeepSpeed; collective there)."""
        if self._is("FSDP") or self._is("DEEPSPEED"):
            full = self.accelerator.get_state_dict(self.model)
            return {
                k.removeprefix("adapter."): v.float()
                for k, v in full.items()
                if k.startswith("adapter.")
            }
        adapter = self.accelerator.unwrap_model(self.model).adapter
        return {k: v.detach().float() for k, v in adapter.state_dict().items()}

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The adapter holds its EMA weights inside the block (its own ones again after it)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def _write_adapter(self, state: dict[str, torch.Tensor], directory: Path) -> None:
        """``state`` as an adapter folder (``save_pretrained``, atomic), on the main process."""
        if self.is_main:
            from ..models.adapter import MSAdapter

            fresh = MSAdapter(self.accelerator.unwrap_model(self.model).adapter.config)
            fresh.load_state_dict_checked({k: v.cpu() for k, v in state.items()})
            fresh.save_pretrained(directory)

    def export_adapter(self, directory: Path) -> Path:
        """Write the adapter with ``save_pretrained`` (atomic; EMA weights when EMA is on)."""
        with self.ema_weights():
            state = self.adapter_state()
        self._write_adapter(state, directory)
        return directory

    def _save_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        # Save only the adapter (not the frozen UNet) in our own format.
        self._write_adapter(self.adapter_state(), Path(output_dir) / "adapter")
        while weights:
            weights.pop()

    def _load_hook(self, models: list[Any], input_dir: str) -> None:
        from ..models.adapter import MSAdapter

        if not models:  # DeepSpeed and FSDP load their own module state
            return
        loaded = MSAdapter.from_pretrained(Path(input_dir) / "adapter")
        while models:
            target = self.accelerator.unwrap_model(models.pop()).adapter
            target.load_state_dict_checked(loaded.state_dict())

    def save_checkpoint(self) -> Path:
        self._flush_skip_counts()
        acc = self.accelerator
        kwargs = {"exclude_frozen_parameters": True} if self._is("DEEPSPEED") else {}
        self.state.extra["config"] = self.config.to_dict()
        path = self.checkpoints.save(
            self.state.step,
            self.state,
            lambda tmp: acc.save_state(str(tmp), **kwargs),
            is_main=self.is_main,
            barrier=acc.wait_for_everyone,
        )
        logger.info("checkpoint: %s", path)
        return path

    def resume(self, spec: str) -> bool:
        """Load a checkpoint (``"latest"`` or a folder); False when "latest" finds none."""
        path = self.checkpoints.resolve(spec)
        if path is None:
            logger.info(
                "resume: no checkpoint in %s yet; starting from step 0", self.checkpoints.root
            )
            return False
        kwargs = {"load_module_strict": False} if self._is("DEEPSPEED") else {}
        self.accelerator.load_state(str(path), **kwargs)
        saved = self.checkpoints.read_state(path)
        global_batch = self.config.batch_size * self.accelerator.num_processes
        if saved.position % global_batch:
            raise InputError(
                "resume",
                f"the checkpoint's data position {saved.position} does not "
                f"divide into the global batch {global_batch}",
                str(path),
            )
        old = saved.extra.get("config", {})
        for section in ("model", "data"):
            if old.get(section) not in (None, self.config.to_dict()[section]):
                logger.warning("resume: the %s section differs from the checkpoint's", section)
        saved.world_size, saved.batch_size = self.accelerator.num_processes, self.config.batch_size
        self.state = saved
        logger.info("resumed from %s at step %d", path, saved.step)
        return True

    # ---- one step -------------------------------------------------------------------------------
    def model_inputs(self, batch: dict[str, Any]) -> ModelInputs:
        device = self.accelerator.device
        if not self.cached:
            return self.encoders.encode_batch(batch, device)
        latents = self.encoders.sample_latents(batch["latent_moments"].to(device))
        return ModelInputs(
            latents=latents,
            prompt_embeds=batch["prompt_embeds"].to(device),
            pooled_prompt_embeds=batch["pooled_prompt_embeds"].to(device),
            time_ids=batch["time_ids"].to(device),
            image_embeds=batch["image_embeds"].to(device),
            phrase_embeds=batch["phrase_embeds"].to(device),
            boxes=batch["boxes"].to(device),
            valid=batch["valid"].to(device),
            drop_grounding=batch["drop_grounding"].to(device),
        )

    def loss(self, inputs: ModelInputs) -> torch.Tensor:
        """ε-prediction (or v-prediction, per the scheduler) MSE at t ~ U{0..T-1}."""
        latents = inputs.latents
        noise = torch.randn_like(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        kind = self.noise_scheduler.config.prediction_type
        target = (
            noise
            if kind == "epsilon"
            else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        )
        pred = self.model(noisy, timesteps, inputs)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    def _micro_step(self, batch: dict[str, Any]) -> float:
        acc = self.accelerator
        with acc.accumulate(self.model):
            loss = self.loss(self.model_inputs(batch))
            mean = acc.reduce(loss.detach(), "mean").item()  # one all-reduce: logs + NaN check
            if not math.isfinite(mean):
                latest = self.checkpoints.latest()
                raise TrainingDiverged(
                    f"loss is {mean} at step {self.state.step + 1}; stopped before updating the "
                    f"weights. Last good checkpoint: {latest or 'none'} (lower the learning rate "
                    "and resume with --resume latest)"
                )
            acc.backward(loss)
            if acc.sync_gradients and self.config.optim.max_grad_norm is not None:
                acc.clip_grad_norm_(self.params, self.config.optim.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return mean

    def _optimizer_step(self, batches: Any) -> float:
        """``gradient_accumulation_steps`` micro-steps, then the schedule and the EMA; returns
        the step's loss (mean over micro-steps and processes)."""
        config, acc, state = self.config, self.accelerator, self.state
        losses = []
        for _ in range(config.gradient_accumulation_steps):
            batch = next(batches)
            self._count_skips(batch)
            losses.append(self._micro_step(batch))
            state.position += config.batch_size * acc.num_processes
        assert acc.sync_gradients, "accumulation and optimizer steps out of step"
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.params)
        state.step += 1
        self._interval[0].extend(losses)
        return sum(losses) / len(losses)

    def _log_interval(self, global_batch: int) -> dict[str, str]:
        """Log the interval's mean loss, lr, samples/s and skips; returns the progress postfix."""
        self._flush_skip_counts()
        losses, start, start_step = self._interval
        elapsed = time.perf_counter() - start
        logs = {
            "loss": sum(losses) / len(losses),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "samples_per_s": global_batch * (self.state.step - start_step) / max(elapsed, 1e-9),
            "skipped": self.state.samples_skipped,
        }
        self.accelerator.log(logs, step=self.state.step)
        if self.is_main:  # plain-text twin of the tracker's scalars, for plots and scripts
            path = self.output_dir / "logs" / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": self.state.step, **logs}) + "\n")
        self._interval = ([], time.perf_counter(), self.state.step)
        return {
            "loss": f"{logs['loss']:.4f}",
            "lr": f"{logs['lr']:.2e}",
            "sps": f"{logs['samples_per_s']:.1f}",
        }

    # ---- bad data -------------------------------------------------------------------------------
    def _count_skips(self, batch: dict[str, Any]) -> None:
        skipped = batch.get("skipped", [])
        self.skips.report(skipped, "load time")
        self._local_drawn += len(batch["id"]) + len(skipped)
        self._local_skipped += len(skipped)

    def _flush_skip_counts(self) -> None:
        counts = torch.tensor(
            [self._local_drawn, self._local_skipped],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        counts = self.accelerator.reduce(counts, "sum")
        self.state.samples_drawn += int(counts[0])
        self.state.samples_skipped += int(counts[1])
        self._local_drawn = self._local_skipped = 0
        self.skips.check(
            self.state.samples_skipped, self.state.samples_drawn, "training data", runtime=True
        )

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> Path | None:
        """Render the validation grid (main process; the others wait)."""
        from .validation import render_validation, validation_requests

        acc, v = self.accelerator, self.config.validation
        path = None
        if self._is("FSDP"):  # the main process does not hold the whole sharded model
            logger.warning(
                "validation: skipped under FSDP; generate from a checkpoint's adapter "
                "folder with `msdiffusion generate --adapter` instead"
            )
        elif self.is_main and v.requests:
            unwrapped = acc.unwrap_model(self.model)
            if self.cached:
                self._place_encoders(acc.device)
            devices = [acc.device] if acc.device.type == "cuda" else []
            try:
                # leave the training RNG untouched
                with self.ema_weights(), torch.random.fork_rng(devices=devices):
                    requests = validation_requests(v, self.config.data.size)
                    path = self.output_dir / "validation" / f"step-{self.state.step:08d}.png"
                    grid = render_validation(
                        {**self.components, "unet": unwrapped.unet},
                        unwrapped.adapter,
                        requests,
                        path,
                        acc.autocast,
                    )
            finally:
                if self.cached:
                    self._place_encoders(torch.device("cpu"))
            self._log_image(grid)
            logger.info("validation: %s", path)
        acc.wait_for_everyone()
        return path

    def _log_image(self, grid: Any) -> None:
        import numpy as np

        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images(
                    {"validation": np.asarray(grid)[None]}, step=self.state.step, dataformats="NHWC"
                )

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from .dataset import collate_samples
        from .sampler import ShardedStream

        config, acc, state = self.config, self.accelerator, self.state
        if config.resume:
            self.resume(config.resume)
            state = self.state
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.output_dir / "config.json", config.to_dict())
        if config.logging.report_to:
            acc.init_trackers(config.logging.project_name, config=_flat_hparams(config.to_dict()))
        stream = ShardedStream(
            len(self.dataset),
            config.batch_size,
            rank=acc.process_index,
            world_size=acc.num_processes,
            seed=config.seed,
            start=state.position,
        )
        loader = DataLoader(
            self.dataset,
            batch_size=config.batch_size,
            sampler=stream,
            collate_fn=collate_samples,
            num_workers=config.data.num_workers,
            pin_memory=acc.device.type == "cuda",
            generator=torch.Generator().manual_seed(config.seed),
        )
        global_batch = config.batch_size * acc.num_processes * config.gradient_accumulation_steps
        logger.info(
            "training: steps %d→%d, %d samples per step (%d processes × %d × %d accumulation)",
            state.step,
            config.max_steps,
            global_batch,
            acc.num_processes,
            config.batch_size,
            config.gradient_accumulation_steps,
        )
        self._local_drawn = self._local_skipped = 0
        self._interval = ([], time.perf_counter(), state.step)  # losses, start time, start step
        bar = tqdm(
            total=config.max_steps,
            initial=state.step,
            desc="training",
            unit="step",
            disable=not self.is_main,
        )
        batches = iter(loader)
        last_loss = None
        self.model.train()
        try:
            while state.step < config.max_steps:
                last_loss = self._optimizer_step(batches)
                bar.update(1)
                final = state.step == config.max_steps
                if state.step % config.logging.every == 0 or final:
                    bar.set_postfix(self._log_interval(global_batch))
                for callback in self.callbacks:
                    callback(self, state)
                every = config.checkpoint.every
                if (every and state.step % every == 0) or final:
                    self.save_checkpoint()
                v_every = config.validation.every
                if v_every and (state.step % v_every == 0 or final):
                    self.validate()
        finally:
            bar.close()
        adapter_dir = self.export_adapter(self.output_dir / "adapter")
        acc.wait_for_everyone()
        if self.is_main:
            logger.info("adapter exported to %s", adapter_dir)
        acc.end_training()
        return TrainResult(
            self.output_dir, adapter_dir, state.step, last_loss, state.samples_skipped
        )


def train(
    config: TrainConfig, callbacks: Sequence[Callable[[Trainer, TrainState], None]] = ()
) -> TrainResult:
    """Train an adapter as ``config`` says (see docs/training.md); returns where it went."""
    return Trainer(config, callbacks).run()
