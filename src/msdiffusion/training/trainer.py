"""The training loop (DESIGN §2.4) on accelerate: one CPU to many GPU nodes (DDP, FSDP, DeepSpeed).

Per optimizer step: ``gradient_accumulation_steps`` micro-batches, each
    batch → frozen encoders (or the cache) → noise, t ~ U{0..T-1} → AdapterUNet → MSE → backward;
then grad-norm clipping (the global norm, under every engine: ``distributed``), AdamW, the LR
schedule, the EMA. The frozen weights are in the weight dtype (bf16 on GPUs), the adapter in fp32
under autocast. Every ``checkpoint.every`` steps an atomic, verified checkpoint (adapter,
optimizer, scheduler, EMA, RNG of every process, data position); ``resume="latest"`` continues
bit-exactly, with the hyper-parameters of the config (``resume``). SIGTERM/SIGUSR1 stop the run
at the next step boundary, after a checkpoint (``preemption``). Every ``validation.every`` steps a
grid of images. Logged scalars go to the tracker and to ``<output_dir>/logs/metrics.jsonl``.
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
from ..errors import CheckpointError, InputError, MSDiffusionError
from ..runtime import dtype_label, to_dtype
from .baddata import SkipLog
from .checkpoint import CheckpointManager, TrainState
from .components import build_adapter, load_components, move_module, resolve_weight_dtype
from .config import TrainConfig, flatten
from .distributed import (
    clip_gradients,
    configure_engine,
    engine_of,
    from_main,
    full_adapter_state,
)
from .encoders import FrozenEncoders, ModelInputs
from .inputs import TrainingInput
from .launch import make_accelerator
from .model import AdapterUNet
from .preemption import StopSignals
from .resume import apply_optimization, config_changes, not_exact, refuse

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "train"]

logger = logging.getLogger("msdiffusion.training")
ENCODERS = ("vae", "text_encoder", "text_encoder_2", "image_encoder")


class TrainingDiverged(MSDiffusionError):
    """The loss became NaN or infinite; the run stopped before updating any weight with it."""


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path | None  # None when a signal stopped the run (its checkpoint holds it)
    step: int
    loss: float | None
    samples_skipped: int
    stopped_by: str | None = None  # the signal that stopped the run early (SIGTERM, SIGUSR1)
    checkpoint: Path | None = None  # the last checkpoint written


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
        # a process group someone else started outlives the run (it is theirs to end)
        self._owns_group = not torch.distributed.is_initialized()
        self.accelerator = make_accelerator(config)
        acc = self.accelerator
        self.is_main = acc.is_main_process
        logger.setLevel(logging.INFO if self.is_main else logging.ERROR)
        self.engine = engine_of(acc)
        self.weight_dtype = resolve_weight_dtype(config.model.weight_dtype, acc.device)
        if self.engine == "fsdp" and config.ema.enabled:
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
        self._positions: dict[int, tuple[int, int, int]] = {}  # this process's shard streams
        self._batches = 0  # micro-batches this process consumed, all runs of the lineage
        self._local = [0, 0, 0, 0]  # drawn, skipped, boxes emptied, subjects dropped
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
        from .cache import cache_fingerprint

        config = self.config
        fingerprint = cache_fingerprint(config, self.cache_dtype()) if self.cached else None
        self.input = TrainingInput(
            config,
            self.accelerator,
            self.skips,
            self.components["feature_extractor"],
            cache_fingerprint=fingerprint,
        )
        self.state.extra.update(self.input.extra)
        self.state.data = self.input.identity

    def cache_dtype(self) -> torch.dtype:
        name = self.config.data.cache_dtype
        return self.weight_dtype if name == "auto" else to_dtype(name)

    def _setup_optimization(self) -> None:
        from diffusers.optimization import get_scheduler

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
        adapter = self.model.adapter
        self._trained_names = [n for n, p in adapter.named_parameters() if p.requires_grad]
        self._frozen = {  # fp32 copies: DeepSpeed casts the whole module
            n: t.detach().float().cpu().clone()
            for n, t in adapter.state_dict(keep_vars=True).items()
            if not (isinstance(t, torch.nn.Parameter) and t.requires_grad)
        }
        self.ema = self._new_ema() if config.ema.enabled else None
        self._ema_registered = False
        configure_engine(acc, self.model, config)
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(
            self.model, self.optimizer, self.lr_scheduler
        )
        self.params = list(acc.unwrap_model(self.model).trainable_parameters())
        if self.ema is not None:
            self.ema.to(acc.device)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

    def _new_ema(self) -> Any:
        from diffusers.training_utils import EMAModel

        return EMAModel(
            [p.detach().float() for p in self.model.trainable_parameters()],
            decay=self.config.ema.decay,
            use_ema_warmup=self.config.ema.warmup,
        )

    # ---- the adapter's weights ------------------------------------------------------------------
    def adapter_state(self, ema: bool = True) -> dict[str, torch.Tensor]:
        """The adapter's full fp32 weights on the main process — the EMA ones if ``ema`` and EMA
        is on — ({} on the others; collective under FSDP and DeepSpeed)."""
        shadow = None
        if ema and self.ema is not None:
            shadow = dict(zip(self._trained_names, self.ema.shadow_params, strict=True))
        return full_adapter_state(
            self.engine,
            self.model,
            self.accelerator.unwrap_model(self.model).adapter,
            self._frozen,
            is_main=self.is_main,
            ema=shadow,
        )

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

            with torch.random.fork_rng(devices=[]):  # a new module's random init: not ours
                fresh = MSAdapter(self.accelerator.unwrap_model(self.model).adapter.config)
            fresh.load_state_dict_checked(state)
            fresh.save_pretrained(directory)

    def export_adapter(self, directory: Path) -> Path:
        """Write the adapter with ``save_pretrained`` (atomic; EMA weights when EMA is on)."""
        self._write_adapter(self.adapter_state(ema=True), directory)
        return directory

    def _save_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        # Save only the adapter (not the frozen UNet), in our own format: the trained weights.
        self._write_adapter(self.adapter_state(ema=False), Path(output_dir) / "adapter")
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

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        self._flush_counts()
        acc = self.accelerator
        kwargs = {"exclude_frozen_parameters": True} if self.engine == "deepspeed" else {}
        if self.input.streamed:
            self.state.stream = self.input.stream_state(self._positions, self._batches)
        self.state.extra["config"] = self.config.to_dict()
        path = self.checkpoints.save(
            self.state.step,
            self.state,
            lambda tmp: acc.save_state(str(tmp), **kwargs),
            is_main=self.is_main,
            barrier=acc.wait_for_everyone,
        )
        self._saved_at = self.state.step
        logger.info("checkpoint: %s", path)
        return path

    def resume(self, spec: str) -> bool:
        """Load a checkpoint (``"latest"`` or a folder); False when "latest" finds none.

        ``latest``: the newest checkpoint that verifies and loads (a damaged one is reported and
        set aside, the one before it used). Checkpoints newer than the one loaded leave the
        lineage (``checkpoints/abandoned/``). The config's hyper-parameters then take effect
        (``resume.py``); what cannot continue exactly is refused unless allowed."""
        acc, config = self.accelerator, self.config
        candidates = self.checkpoints.candidates(spec)
        if not candidates:
            logger.info(
                "resume: no checkpoint in %s yet; starting from step 0", self.checkpoints.root
            )
            return False
        damaged: list[Path] = []
        for path in candidates:
            problems = from_main(acc, self.checkpoints.verify(path) if self.is_main else None)
            saved = self.checkpoints.read_state(path) if not problems else None
            if saved is not None:
                changes = config_changes(saved.extra.get("config", {}), config.to_dict())
                inexact = not_exact(path, saved, acc.num_processes) + self.input.inexact(saved)
                refuse(changes, inexact, config.allow_inexact_resume, str(path))
                try:
                    self._load(path, saved)
                    break
                except Exception as err:  # a file that verified but does not load (old format)
                    problems = [f"it does not load ({err.__class__.__name__}: {err})"]
            if spec != "latest":
                raise CheckpointError(f"resume: {path} is damaged: {'; '.join(problems)}")
            logger.warning("resume: %s is damaged (%s); trying the one before", path, problems[0])
            damaged.append(path)
        else:
            raise CheckpointError(
                f"resume: no usable checkpoint in {self.checkpoints.root} (all damaged)"
            )
        if self.is_main:
            for where in self.checkpoints.continue_from(saved.step, damaged):
                logger.warning("resume: a checkpoint leaves the lineage: now %s", where)
        acc.wait_for_everyone()
        unwrapped_scheduler = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)
        apply_optimization(self.optimizer, unwrapped_scheduler, self.ema, config)
        saved.resumes.append(
            {
                "step": saved.step,
                "from": str(path),
                "changes": {c.key: [c.old, c.new] for c in changes},
                "inexact": inexact + [c.key for c in changes if c.inexact],
            }
        )
        saved.parent = str(path)
        saved.world_size, saved.batch_size = acc.num_processes, config.batch_size
        saved.data = self.input.identity
        saved.extra.update(self.input.extra)
        self.state = saved
        self._positions = {k: v for k, v in self.input.positions(saved).items() if k >= 0}
        self._batches = int((saved.stream or {}).get("batches", 0))
        logger.info("resumed from %s at step %d", path, saved.step)
        return True

    def _load(self, path: Path, saved: TrainState) -> None:
        """``accelerator.load_state``; an EMA is registered when the checkpoint holds one, and
        started from the loaded weights when it does not (an inexact resume allowed it)."""
        acc = self.accelerator
        has_ema = (path / "custom_checkpoint_0.pkl").is_file()
        if self.ema is not None and has_ema:
            self._register_ema()
        kwargs = {"load_module_strict": False} if self.engine == "deepspeed" else {}
        acc.load_state(str(path), **kwargs)
        if self.ema is not None and not has_ema:
            self.ema.shadow_params = [p.detach().float().clone() for p in self.params]

    def _register_ema(self) -> None:
        if self.ema is not None and not self._ema_registered:
            self.accelerator.register_for_checkpointing(self.ema)
            self._ema_registered = True

    # ---- one step -------------------------------------------------------------------------------
    def model_inputs(self, batch: dict[str, Any]) -> ModelInputs:
        device = self.accelerator.device
        if self.cached:
            return self.encoders.cached_batch(batch, device)
        return self.encoders.encode_batch(batch, device)

    def loss(self, inputs: ModelInputs) -> torch.Tensor:
        """ε-prediction (or v-prediction, per the scheduler) MSE at t ~ U{0..T-1}."""
        latents = inputs.latents
        # an explicit shape, not randn_like: the same numbers whatever the latents' memory layout
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
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

    def _micro_step(self, batch: dict[str, Any], stop: StopSignals) -> tuple[float, bool]:
        """One micro-batch; returns the loss (mean over processes) and whether any process was
        asked to stop (both from one all-reduce)."""
        acc = self.accelerator
        with acc.accumulate(self.model):
            loss = self.loss(self.model_inputs(batch))
            flag = torch.tensor(float(stop.received is not None), device=loss.device)
            shared = acc.reduce(torch.stack([loss.detach().float(), flag]), "mean")
            mean, stopping = shared[0].item(), shared[1].item() > 0
            if not math.isfinite(mean):
                latest = self.checkpoints.latest()
                raise TrainingDiverged(
                    f"loss is {mean} at step {self.state.step + 1}; stopped before updating the "
                    f"weights. Last good checkpoint: {latest or 'none'} (resume from it with a "
                    "lower learning rate: --resume latest --learning-rate …)"
                )
            acc.backward(loss)
            if acc.sync_gradients and self.config.optim.max_grad_norm is not None:
                clip_gradients(acc, self.model, self.params, self.config.optim.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return mean, stopping

    def _optimizer_step(self, batches: Any, stop: StopSignals) -> tuple[float, bool]:
        """``gradient_accumulation_steps`` micro-steps, then the schedule and the EMA; returns
        the step's loss (mean over micro-steps and processes) and whether to stop after it."""
        config, acc, state = self.config, self.accelerator, self.state
        losses, stopping = [], False
        for _ in range(config.gradient_accumulation_steps):
            batch = next(batches)
            self._count(batch)
            loss, stopping = self._micro_step(batch, stop)
            losses.append(loss)
            state.position += config.batch_size * acc.num_processes
        assert acc.sync_gradients, "accumulation and optimizer steps out of step"
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.params)
        state.step += 1
        self._interval[0].extend(losses)
        return sum(losses) / len(losses), stopping

    def _log_interval(self, global_batch: int) -> dict[str, str]:
        """Log the interval's mean loss, lr, samples/s and counts; returns the progress postfix."""
        self._flush_counts()
        losses, start, start_step = self._interval
        elapsed = time.perf_counter() - start
        state = self.state
        logs = {
            "loss": sum(losses) / len(losses),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "samples_per_s": global_batch * (state.step - start_step) / max(elapsed, 1e-9),
            "skipped": state.samples_skipped,
            "boxes_emptied": state.boxes_emptied,
            "subjects_dropped": state.subjects_dropped,
        }
        self.accelerator.log(logs, step=state.step)
        if self.is_main:  # plain-text twin of the tracker's scalars, for plots and scripts
            path = self.output_dir / "logs" / "metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.step, **logs}) + "\n")
        self._interval = ([], time.perf_counter(), state.step)
        return {
            "loss": f"{logs['loss']:.4f}",
            "lr": f"{logs['lr']:.2e}",
            "sps": f"{logs['samples_per_s']:.1f}",
        }

    # ---- counts ---------------------------------------------------------------------------------
    def _count(self, batch: dict[str, Any]) -> None:
        """Skipped records, emptied boxes and dropped subjects of a consumed batch; the position
        of the stream it came from."""
        skipped = batch.get("skipped", [])
        self.skips.report(skipped, "load time")
        emptied = ((batch["boxes"] == 0).all(-1) & batch["valid"]).sum()  # zero box: emptied
        self._local[0] += len(batch["id"]) + len(skipped)
        self._local[1] += len(skipped)
        self._local[2] += int(emptied)
        self._local[3] += sum(batch.get("subjects_dropped", []))
        self._batches += 1
        if batch.get("stream"):
            stream, *position = batch["stream"][-1]
            self._positions[stream] = tuple(position)

    def _flush_counts(self) -> None:
        counts = torch.tensor(self._local, dtype=torch.float64, device=self.accelerator.device)
        drawn, skipped, emptied, dropped = self.accelerator.reduce(counts, "sum").tolist()
        state = self.state
        state.samples_drawn += int(drawn)
        state.samples_skipped += int(skipped)
        state.boxes_emptied += int(emptied)
        state.subjects_dropped += int(dropped)
        self._local = [0, 0, 0, 0]
        self.skips.check(state.samples_skipped, state.samples_drawn, "training data", runtime=True)

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> Path | None:
        """Render the validation grid (main process; the others wait)."""
        from .validation import validate

        return validate(self)

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        config, acc = self.config, self.accelerator
        if config.resume:
            self.resume(config.resume)
        self._register_ema()  # (a resume registers it before loading, if the checkpoint has one)
        state = self.state
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.output_dir / "config.json", config.to_dict())
        if config.logging.report_to:
            hparams = {
                k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in flatten(config.to_dict()).items()
            }
            acc.init_trackers(config.logging.project_name, config=hparams)
        loader = self.input.loader(state)
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
        self._interval = ([], time.perf_counter(), state.step)  # losses, start time, start step
        self._saved_at = -1
        bar = tqdm(
            total=config.max_steps,
            initial=state.step,
            desc="training",
            unit="step",
            disable=not self.is_main,
        )
        batches = iter(loader)
        last_loss, stopped_by, checkpoint = None, None, None
        self.model.train()
        try:
            with StopSignals() as stop:
                while state.step < config.max_steps:
                    last_loss, stopping = self._optimizer_step(batches, stop)
                    bar.update(1)
                    final = state.step == config.max_steps
                    if state.step % config.logging.every == 0 or final:
                        bar.set_postfix(self._log_interval(global_batch))
                    for callback in self.callbacks:
                        callback(self, state)
                    every = config.checkpoint.every
                    if (every and state.step % every == 0) or final or stopping:
                        checkpoint = self.save_checkpoint()
                    if stopping and not final:
                        stopped_by = stop.received or "a signal to another process"
                        break
                    v_every = config.validation.every
                    if v_every and (state.step % v_every == 0 or final):
                        self.validate()
        finally:
            bar.close()
        adapter_dir = None
        if stopped_by is None:
            adapter_dir = self.export_adapter(self.output_dir / "adapter")
        acc.wait_for_everyone()
        if self.is_main:
            if adapter_dir is not None:
                logger.info("adapter exported to %s", adapter_dir)
            else:
                logger.warning("stopped by %s at step %d: %s", stopped_by, state.step, checkpoint)
        if self._owns_group:
            acc.end_training()  # trackers finished, the process group it started destroyed
        else:
            for tracker in acc.trackers:
                tracker.finish()
        return TrainResult(
            self.output_dir,
            adapter_dir,
            state.step,
            last_loss,
            state.samples_skipped,
            stopped_by,
            checkpoint,
        )


def train(
    config: TrainConfig, callbacks: Sequence[Callable[[Trainer, TrainState], None]] = ()
) -> TrainResult:
    """Train an adapter as ``config`` says (see docs/training.md); returns where it went."""
    return Trainer(config, callbacks).run()
