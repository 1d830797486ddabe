"""The one training loop. Pre-training runs it, and any other training feeds it its own batches
(``TrainData``) and a few ``TrainConfig`` values.

One optimizer step (``Trainer.train_step``), the guide's §8 loop made robust:

    for each of grad_accum micro-batches:         x, y: (batch_size, block_size) token ids
        loss = model(x, y) / grad_accum             (autocast: bf16/fp16 matmuls, fp32 weights)
        loss.backward()                             (DDP: gradients all-reduced on the last micro-batch only)
    clip the global gradient norm to grad_clip
    AdamW step with lr = schedule(step), zero the gradients

Around it ``fit`` evaluates, logs, samples text, checkpoints, stops cleanly on SIGINT/SIGTERM and on a NaN loss,
and resumes bit-exactly: the checkpoint holds the optimizer moments, every RNG and every batch sampler's state.

``export_model`` (optional) turns the trained module into the one saved as ``model.safetensors``: LoRA saves
``lora.merged_copy`` (plain merged weights any command loads). The trained module's own weights then ride in
the trainer state too (the merged ones alone cannot give the frozen base back bit-exactly), and resume loads
those.

Data streams: the batches of one optimizer step come from ``world_size * grad_accum`` independent streams;
micro-step ``m`` of rank ``r`` reads stream ``r * grad_accum + m`` (see ``stream_index``). So 2 processes x
batch B and 1 process x batch B x grad_accum 2 see exactly the same data, and the same loss curve.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
import torch

from sifirdan import checkpoint as ckpt
from sifirdan.errors import UserError
from sifirdan.model.gpt import IGNORE_INDEX
from sifirdan.train import metrics as M
from sifirdan.train.config import TrainConfig
from sifirdan.train.distributed import DistInfo, all_reduce_mean, any_rank, gather_objects, init_distributed
from sifirdan.train.runtime import CpuShare, autocast, resolve_device, resolve_dtype, setup_cpu
from sifirdan.train.schedule import lr_at

Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y), each (B, T) int64; y == -100 is not scored


class BatchSource(Protocol):
    """An endless, resumable stream of training batches (e.g. ``sifirdan.data.BatchSampler``)."""

    def next_batch(self) -> Batch: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def stream_index(rank: int, micro_step: int, grad_accum: int) -> int:
    """Which data stream micro-step ``micro_step`` of process ``rank`` reads (of ``world_size * grad_accum``)."""
    return rank * grad_accum + micro_step


@dataclass
class TrainData:
    """Everything the loop needs from the data side; no assumption about where it came from."""

    train: list[BatchSource]  # this rank's sources, one per micro-step: len == grad_accum
    eval: dict[str, Callable[[], Iterable[Batch]]] = field(default_factory=dict)  # split -> the same fixed batches each call
    final: Callable[[], Iterable[Batch]] | None = None  # full non-overlapping pass over the validation text
    bytes_per_token: dict[str, float] = field(default_factory=dict)  # split -> UTF-8 bytes per token (bits/byte)
    chars_per_token: dict[str, float] = field(default_factory=dict)  # split -> characters per token (bits/char)
    # what to show at each evaluation instead of a text continuation (fine-tuning: greedy answers to fixed val
    # instructions): model -> [{"prompt": ..., "text": ...}]
    samples: Callable[[torch.nn.Module], list[dict]] | None = None


@dataclass
class TrainResult:
    status: str  # "done" | "interrupted" (signal) | "stopped" (fit(stop_at=...)) | "diverged" (NaN/inf loss)
    step: int
    best_val_loss: float | None = None
    final: dict | None = None  # the full validation pass
    message: str = ""
    signal_name: str | None = None


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW (or, with ``optimizer="muon"``, Muon for the blocks' matrices and AdamW for the rest: train/muon.py);
    weight decay on matrices/embeddings (>= 2-D) only: decaying biases and LayerNorm gains towards 0 only hurts.
    Fused AdamW kernel where PyTorch has one (CUDA, and CPU in recent versions): one launch for all params."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_all:
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    else:
        kept = set()  # parameters never decayed besides biases and gains: the embeddings, when asked
        if not cfg.decay_embeddings:
            kept = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
        groups = [
            {"params": [p for p in params if p.dim() >= 2 and id(p) not in kept], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2 or id(p) in kept], "weight_decay": 0.0},
        ]
    fused = device.type in ("cuda", "cpu")
    if cfg.optimizer == "muon":
        from sifirdan.train.muon import MuonAdamW, muon_parameters

        mine = muon_parameters(model)
        muon_groups = [{**g, "params": [p for p in g["params"] if id(p) in mine]} for g in groups]
        adamw_groups = [{**g, "params": [p for p in g["params"] if id(p) not in mine]} for g in groups]
        return MuonAdamW(muon_groups, adamw_groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                         muon_lr_scale=cfg.muon_lr_scale, fused=fused)
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, **kwargs)


def _rng_state(device: torch.device) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


DIVERGED_HINT = (
    "likely causes: learning rate too high (try --learning-rate 1e-4 or a longer --warmup-iters), "
    "fp16 overflow (use --dtype bf16 or fp32), or bad data (token ids out of range, empty or binary text)"
)


class Trainer:
    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        data: TrainData,
        *,
        tokenizer=None,
        out_dir: str | Path | None = None,
        run_config: dict | None = None,
        dist_info: DistInfo | None = None,
        resume: bool = False,
        verbose: bool = True,
        export_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.cfg = cfg
        self._log = log  # where the trainer's lines go (default: stderr)
        self.export_model = export_model
        self.data = data
        self.tokenizer = tokenizer
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_config = dict(run_config or {})
        self.dist = dist_info or DistInfo()
        self.verbose = verbose and self.dist.is_main
        if len(data.train) != cfg.grad_accum:
            raise ValueError(f"TrainData.train needs one source per micro-step ({cfg.grad_accum}), got {len(data.train)}")

        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.cpu_share = None  # adapts the thread count to a busy machine (default threads, one process)
        if self.device.type == "cpu":
            setup_cpu(cfg.threads, self.dist.local_world_size, cfg.flush_denormal)
            if cfg.threads == 0 and self.dist.local_world_size == 1:
                self.cpu_share = CpuShare()
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        init_distributed(self.dist, self.device)

        self.raw_model = ckpt.unwrap_model(model).to(self.device)
        self.raw_model.train()
        self.neftune = None  # the embedding-noise hook (train/neftune.py), active in train() mode only
        if cfg.neftune_alpha > 0:
            from sifirdan.train.neftune import add_embedding_noise

            self.neftune = add_embedding_noise(self.raw_model, cfg.neftune_alpha)
        self.optimizer = make_optimizer(self.raw_model, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        # The C kernels stand in for GPT.forward where they apply (fp32 on a CPU that runs them fast); the
        # wrapper owns no parameters, so the optimizer, DDP and checkpoints see the GPT's own. torch.compile is
        # the other way to speed up the forward pass: with it, the kernels stay out.
        from sifirdan import kernels

        net = kernels.accelerate(self.raw_model, enabled=cfg.cpu_kernels and not cfg.compile and self.device.type == "cpu")
        self.kernels_note = (
            f"C kernels: {kernels.describe()}" if net is not self.raw_model
            else f"C kernels: off ({self._kernels_off_reason(cfg, kernels)})"
        )
        self.eval_model = net  # evaluation: the same forward, without DDP
        if cfg.compile:
            net = torch.compile(net)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = net

        mc = self.raw_model.config
        self.tokens_per_step = cfg.batch_size * mc.block_size * cfg.grad_accum * self.dist.world_size
        self.flops_per_token = M.flops_per_token(self.raw_model.num_parameters(), mc.n_layer, mc.block_size, mc.n_embd)
        self.peak_flops = M.peak_flops(self.device)

        self.step = 0
        self.best_val_loss: float | None = None
        self.last_eval_step: int | None = None
        self.evals_done = 0
        # dropout RNG: distinct per rank (otherwise every rank would drop the same units)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self.empty_micro_batches = 0  # micro-batches with no scored target (see train_step)
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self._stop_signal: str | None = None
        self.metrics = M.MetricsLog(self.out_dir / "metrics.jsonl" if self.out_dir and self.dist.is_main else None)
        self._bar = None
        if resume:
            if self.out_dir is None:
                raise ValueError("resume needs out_dir")
            self.load_state(self.out_dir / "last")
            if self.dist.is_main:
                self.metrics.truncate_after(self.step)

    def _kernels_off_reason(self, cfg, kernels) -> str:
        if not cfg.cpu_kernels:
            return "--no-cpu-kernels"
        if cfg.compile:
            return "--compile"
        if self.device.type != "cpu":
            return f"device {self.device.type}"
        return kernels.why_not(self.raw_model) or "not applicable"

    # ------------------------------------------------------------------------------------------ output
    def log(self, msg: str) -> None:
        if not self.verbose:
            return
        if self._log is not None:
            if self._bar is not None:
                self._bar.clear()
            self._log(msg)
            if self._bar is not None:
                self._bar.refresh()
        elif self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, want_grad_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, grad norm or None) as
        device tensors -- no host sync here, so a GPU keeps queueing work."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # lr_scale: Muon's groups (train/muon.py)
        total = torch.zeros((), device=self.device)
        for m, source in enumerate(self.data.train):
            x, y = source.next_batch()
            # a micro-batch with no scored target (every one IGNORE_INDEX) has no mean loss: 0/0. It still runs
            # forward and backward (DDP needs every rank to), with a loss of exactly 0 and zero gradients.
            empty = y.device.type == "cpu" and not bool((y != IGNORE_INDEX).any())
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            last = m == cfg.grad_accum - 1
            # DDP all-reduces gradients in every backward(); during accumulation only the last one needs it
            sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.model.no_sync()
            with sync:
                with autocast(self.device, self.dtype):
                    if empty:
                        self.empty_micro_batches += 1
                        logits, _ = self.model(x)
                        loss = logits.float().sum() * 0.0
                    else:
                        _, loss = self.model(x, y)
                self.scaler.scale(loss / cfg.grad_accum).backward()
            total += loss.detach().float()
        norm = None
        if cfg.grad_clip > 0 or want_grad_norm:
            self.scaler.unscale_(self.optimizer)  # clip true gradients, not loss-scaled ones (fp16)
            params = [p for p in self.raw_model.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / cfg.grad_accum, norm

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _mean_loss(self, batches: Iterable[Batch]) -> tuple[float, int]:
        """Token-weighted mean loss over batches (exact even when the last batch is short)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        for x, y in batches:
            n = int((y != IGNORE_INDEX).sum())
            if n == 0:  # nothing scored (all padding / prompt): no loss to weigh in, not even 0 * NaN
                continue
            x = x.to(self.device)
            y = y.to(self.device)
            with autocast(self.device, self.dtype):
                _, loss = self.eval_model(x, y)
            total += loss.double() * n
            count += n
        return (total.item() / count if count else float("nan")), count

    @contextlib.contextmanager
    def _eval_mode(self):
        # fork_rng: evaluation and sampling must not move the training RNG (bit-exact resume, and changing
        # eval_interval must not change what is learned)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.raw_model.eval()
            try:
                yield
            finally:
                self.raw_model.train()

    def estimate_loss(self) -> dict[str, float]:
        """Mean loss on the fixed evaluation batches of every split (averaged over ranks)."""
        out = {}
        with self._eval_mode():
            for split, batches in self.data.eval.items():
                loss, _ = self._mean_loss(batches())
                out[split] = float(all_reduce_mean(torch.tensor([loss], device=self.device), self.dist).item())
        return out

    def final_evaluation(self) -> dict | None:
        """The full non-overlapping pass over the validation text (rank 0 only)."""
        if self.data.final is None or not self.dist.is_main:
            return None
        with self._eval_mode():
            loss, n = self._mean_loss(self.data.final())
        return {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "bits_per_byte": M.bits_per_unit(loss, self.data.bytes_per_token.get("val")),
            "bits_per_char": M.bits_per_unit(loss, self.data.chars_per_token.get("val")),
            "tokens": n,
        }

    def sample_text(self, prompt: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.8) -> str | None:
        """A short continuation of a fixed prompt with a fixed seed (samples from different steps compare),
        through the one generation engine; its own generator leaves the training randomness untouched."""
        from sifirdan.generate import Engine, GenerationConfig

        if self.tokenizer is None:
            return None
        prompt = self.cfg.sample_prompt if prompt is None else prompt
        n_new = self.cfg.sample_tokens if max_new_tokens is None else max_new_tokens
        config = GenerationConfig(max_new_tokens=n_new, temperature=temperature, seed=self.cfg.seed, stop_token_ids=())
        with self._eval_mode():
            return prompt + Engine(self.raw_model, self.tokenizer).generate(prompt, config).text

    def _evaluate_and_record(self) -> None:
        losses = self.estimate_loss()
        self.last_eval_step = self.step
        self.evals_done += 1
        if not self.dist.is_main:
            return
        train_l, val_l = losses.get("train"), losses.get("val")
        rec = {"kind": "eval", "iter": self.step, "train_loss": train_l, "val_loss": val_l}
        if val_l is not None:
            rec["val_bits_per_byte"] = M.bits_per_unit(val_l, self.data.bytes_per_token.get("val"))
            rec["val_bits_per_char"] = M.bits_per_unit(val_l, self.data.chars_per_token.get("val"))
        self.metrics.write(rec)
        parts = [f"{k} loss {v:.4f}" for k, v in losses.items()]
        self.log(f"step {self.step}: " + ", ".join(parts))  # the guide's §8 line
        if val_l is not None and math.isfinite(val_l) and (self.best_val_loss is None or val_l < self.best_val_loss):
            self.best_val_loss = val_l
            if self.out_dir is not None and self.step > 0 and self.cfg.save_best:
                ckpt.save_checkpoint(self.out_dir / "best", self._saved_model(), self.tokenizer, self._config_record(val_l))
        if self.data.samples is not None and self.cfg.sample_interval and self.step > 0:
            with self._eval_mode():
                answers = self.data.samples(self.raw_model)
            for a in answers:
                self.log(f"answer @ {self.step}: {a['prompt']!r} -> {a['text']!r}")
                self.metrics.write({"kind": "sample", "iter": self.step, **a})
        elif self.cfg.sample_interval and (self.evals_done - 1) % self.cfg.sample_interval == 0 and self.step > 0:
            text = self.sample_text()
            if text is not None:
                self.log(f"sample @ {self.step}: {text!r}")
                self.metrics.write({"kind": "sample", "iter": self.step, "text": text})

    # ------------------------------------------------------------------------------------------ checkpoints
    def _config_record(self, val_loss: float | None = None) -> dict:
        return {
            **self.run_config,
            "train": self.cfg.to_dict(),
            "step": self.step,
            "val_loss": val_loss,
            "world_size": self.dist.world_size,
        }

    def _saved_model(self) -> torch.nn.Module:
        """What ``model.safetensors`` holds: the model itself, or ``export_model`` of it (e.g. LoRA merged)."""
        if self.export_model is None:
            return self.raw_model
        with torch.no_grad():
            return self.export_model(self.raw_model)

    def state_dict(self) -> dict:
        """Trainer state (collective under DDP: every rank must call it)."""
        mine = {
            "rng": _rng_state(self.device),
            "sources": [s.state_dict() for s in self.data.train],
        }
        state = {
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "last_eval_step": self.last_eval_step,
            "evals_done": self.evals_done,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ranks": gather_objects(mine, self.dist),
        }
        if self.export_model is not None:
            # model.safetensors holds the exported module; the trained one's exact weights go here (a tied
            # weight once: safetensors refuses shared tensors)
            state["model"], state["model_aliases"] = ckpt._dedupe_tied(self.raw_model.state_dict())
        return state

    def _load_model_state(self, weights: dict, aliases: dict, directory: Path) -> None:
        weights = dict(weights)
        for alias, target in aliases.items():
            if target in weights:
                weights[alias] = weights[target]
        try:
            with torch.no_grad():
                self.raw_model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:200]
            raise UserError(f"{directory}: the weights in its trainer state do not fit this model ({detail}); "
                            "resume with the settings the run was started with (LoRA rank and targets included)") from None

    def load_state(self, directory: Path) -> None:
        meta = ckpt.read_config(directory)
        if not ckpt.has_trainer_state(directory):
            raise UserError(f"{directory} has no trainer state (it is a model-only checkpoint); resume from a run's last/ directory")
        state = ckpt.load_trainer_state(directory, meta)
        ranks = state["ranks"]
        if len(ranks) != self.dist.world_size:
            raise UserError(
                f"{directory} was saved by {len(ranks)} process(es) but this run has {self.dist.world_size}; "
                f"resume with the same --nproc_per_node x nodes"
            )
        if "model" in state:  # saved with export_model: model.safetensors is not the trained module
            self._load_model_state(state["model"], state.get("model_aliases") or {}, directory)
        else:
            ckpt.load_weights(self.raw_model, directory, meta)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        mine = ranks[self.dist.rank]
        for source, s in zip(self.data.train, mine["sources"]):
            source.load_state_dict(s)
        _set_rng_state(mine["rng"], self.device)
        self.step = int(state["step"])
        self.best_val_loss = state.get("best_val_loss")
        self.last_eval_step = state.get("last_eval_step")
        self.evals_done = int(state.get("evals_done", 0))

    def save_last(self) -> None:
        state = self.state_dict()  # collective
        if self.dist.is_main and self.out_dir is not None:
            ckpt.save_checkpoint(self.out_dir / "last", self._saved_model(), self.tokenizer, self._config_record(), state)

    # ------------------------------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def _catch_signals(self):
        """First SIGINT/SIGTERM: finish the current step, save, stop. A second SIGINT interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name
            self.log(f"{self._stop_signal} received: saving a checkpoint after this step (Ctrl-C again to abort)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    # ------------------------------------------------------------------------------------------ the loop
    def _log_step(self, norm: torch.Tensor | None, t0: float, steps: int) -> float:
        """Progress line + metrics record (the one host sync every log_interval steps)."""
        now = time.perf_counter()
        dt = max(now - t0, 1e-9)
        loss = all_reduce_mean(self._loss_sum / max(self._loss_count, 1), self.dist).item()
        self._loss_sum.zero_()
        self._loss_count = 0
        tok_s = self.tokens_per_step * steps / dt
        rec = {
            "kind": "train",
            "iter": self.step,
            "loss": loss,
            "lr": lr_at(self.step - 1, self.cfg),
            "grad_norm": float(norm) if norm is not None else None,
            "tokens_per_s": tok_s,
            "peak_mem_mb": M.peak_memory_mb(self.device),
        }
        if self.empty_micro_batches:
            rec["empty_micro_batches"] = self.empty_micro_batches  # so far: no scored target, loss 0
        if self.peak_flops:
            rec["mfu"] = self.flops_per_token * tok_s / self.peak_flops
        if self.dist.is_main:
            self.metrics.write(rec)
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{tok_s:,.0f}")
            else:
                self.log(
                    f"iter {self.step}/{self.cfg.max_iters} | loss {loss:.4f} | lr {rec['lr']:.2e} | "
                    f"{tok_s:,.0f} tok/s | {rec['peak_mem_mb']:.0f} MB"
                )
        return now

    def _share_cpu(self) -> None:
        """Every log step: use the cores other programs leave free (see ``CpuShare``)."""
        if self.cpu_share is None:
            return
        changed = self.cpu_share.adjust()
        if changed is not None:
            self.log(f"CPU: other programs use {self.cpu_share.cores - changed} of {self.cpu_share.cores} cores; "
                     f"training on {changed} thread(s) (pass --threads N to fix the count)")

    def _check_finite(self, loss: torch.Tensor, sync_now: bool) -> bool:
        """False once a non-finite loss was seen. Checked every step on CPU (free), at log/save time on GPU."""
        self._nonfinite |= ~torch.isfinite(loss)
        if not sync_now:
            return True
        return not any_rank(bool(self._nonfinite.item()), self.dist, self.device)

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``max_iters`` (or until step ``stop_at``: saved like an interruption, status "stopped")."""
        cfg = self.cfg
        if self.dist.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        status, message = "done", ""
        self._bar = None
        if self.verbose and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=cfg.max_iters, initial=min(self.step, cfg.max_iters), desc="training",
                             unit="it", dynamic_ncols=True, file=sys.stderr)
        t0, steps_since = time.perf_counter(), 0
        last_good_step = self.step
        with self._catch_signals():
            while True:
                if (self.step % cfg.eval_interval == 0 or self.step >= cfg.max_iters) and self.last_eval_step != self.step:
                    self._evaluate_and_record()
                    t0, steps_since = time.perf_counter(), 0  # do not count eval time in tokens/s
                if self.step >= cfg.max_iters:
                    break
                stop = self._stop_signal is not None
                if self.dist.enabled and self.step % cfg.log_interval == 0:
                    stop = any_rank(stop, self.dist, self.device)
                if stop:
                    status = "interrupted"
                    break
                if stop_at is not None and self.step >= stop_at:
                    status = "stopped"
                    break
                log_now = (self.step + 1) % cfg.log_interval == 0
                save_now = cfg.checkpoint_interval and (self.step + 1) % cfg.checkpoint_interval == 0
                loss, norm = self.train_step(want_grad_norm=log_now)
                self._loss_sum += loss
                self._loss_count += 1
                steps_since += 1
                if self._bar is not None:
                    self._bar.update(1)
                sync = self.device.type == "cpu" or log_now or save_now
                if not self._check_finite(loss, sync):
                    status = "diverged"
                    break
                if log_now:
                    t0 = self._log_step(norm, t0, steps_since)
                    steps_since = 0
                    self._share_cpu()
                if save_now and self.step < cfg.max_iters:
                    self.save_last()
                    last_good_step = self.step
        if self._bar is not None:
            self._bar.close()
            self._bar = None

        final = None
        if status == "diverged":
            where = f"{self.out_dir / 'last'} (step {last_good_step})" if self.out_dir and last_good_step else "no checkpoint"
            message = f"loss became NaN/inf at step {self.step}; training stopped, last good checkpoint: {where}. {DIVERGED_HINT}"
            self.log(message)
        else:
            self.save_last()
            if status == "interrupted":
                message = (
                    f"stopped by {self._stop_signal} at step {self.step}/{cfg.max_iters}; saved {self.out_dir / 'last'}; "
                    f"continue with: sifirdan pretrain --resume {self.out_dir}"
                )
                self.log(message)
            elif status == "done" and cfg.final_eval:
                final = self.final_evaluation()
                if final is not None:
                    self.metrics.write({"kind": "final", "iter": self.step, **{f"val_{k}": v for k, v in final.items()}})
                    bpb, bpc = final["bits_per_byte"], final.get("bits_per_char")
                    self.log(
                        f"final: val loss {final['loss']:.4f} (perplexity {final['perplexity']:.1f}"
                        + (f", {bpb:.3f} bits/byte" if bpb is not None else "")
                        + (f", {bpc:.3f} bits/char" if bpc is not None else "")
                        + f") over all {final['tokens']:,} validation tokens"
                    )
        if self.dist.is_main and self.out_dir is not None:
            try:
                M.plot_losses(self.metrics.records or _read_records(self.out_dir / "metrics.jsonl"), self.out_dir / "loss.png",
                              title=self.out_dir.name)
            except Exception as e:  # a plotting problem must never lose a finished run
                self.log(f"could not draw loss.png: {e}")
        return TrainResult(status, self.step, self.best_val_loss, final, message, self._stop_signal)


def _read_records(path: Path) -> list[dict]:
    import json

    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out
