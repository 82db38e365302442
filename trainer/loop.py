"""The run: wires config, model, data stream, optimizer, step, evaluation, checkpoints and logging together.

Every optimizer step draws `grad_accum` (weak or strong) batches and runs `trainer.step.train_step` on each, then
steps the schedule; every `log_every` / `eval_every` / `save_every` steps it logs, evaluates, checkpoints. A stop
signal (`trainer.stop`) makes it checkpoint and exit with EXIT_PREEMPTED.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch

from trainer import checkpoint as ckpt
from trainer.config import Config, ConfigError, dump_yaml, to_dict
from trainer.distributed import build_accelerator, destroy
from trainer.optim import build_optimizer, build_scheduler, rebase_schedule
from trainer.step import NonFiniteError, move_batch, train_step
from trainer.stop import EXIT_PREEMPTED, StopFlag
from trainer.tracking import MetricsLogger
from trainer.vocab import collect_tokenizer_texts


class Trainer:
    """Owns the accelerator, model, optimizer, data stream and outputs of one run."""

    def __init__(self, cfg: Config):
        from shards.mixing import MixedStream
        from trainer.model import build_model
        from trainer.model.tuning import prepare_for_training

        self.cfg = cfg
        self.accelerator = acc = build_accelerator(cfg)
        self.out_dir = cfg.output_dir
        self.ckpt_root = self.out_dir / "checkpoints"
        if self.out_dir.exists() and not self.out_dir.is_dir():  # every rank sees it: none waits for another
            raise ConfigError(f"run.output_dir: {self.out_dir} is a file, not a folder")
        if acc.is_main_process:
            try:
                self.ckpt_root.mkdir(parents=True, exist_ok=True)
                (self.out_dir / "eval").mkdir(exist_ok=True)
                (self.out_dir / "config.yaml").write_text(dump_yaml(cfg))
            except OSError as e:
                raise ConfigError(f"run.output_dir: {self.out_dir} cannot be written: {e.strerror}") from None
        acc.wait_for_everyone()

        from accelerate.utils import set_seed

        set_seed(cfg.run.seed)
        candidates, fresh_ok = ckpt.resume_candidates(cfg.train.resume, self.ckpt_root)
        self.resume_from = self._verified(candidates)
        if self.resume_from is None and (candidates or not fresh_ok):
            raise ckpt.CheckpointError(ckpt.no_usable(candidates, cfg.train.resume))
        if self.resume_from is not None:
            # The tokenizer of a random-init text tower was trained at the start of the run: take the saved one.
            model = ckpt.load_model(self.resume_from)
        elif cfg.train.init_from:
            model = ckpt.load_model(cfg.train.init_from, what="train.init_from")
        else:
            texts = None
            if cfg.model.text.pretrained is None:
                from shards.records import ReadStats

                read = ReadStats()
                texts = collect_tokenizer_texts(cfg, stats=read)
                if read.skipped:
                    acc.print(
                        f"tokenizer texts: {read.skipped} of {read.expected} samples skipped as corrupt"
                    )
            model = build_model(cfg.model, cfg.loss, sample_rate=cfg.data.sample_rate, tokenizer_texts=texts)
        model.set_gradient_checkpointing(cfg.train.grad_checkpointing)
        counts = prepare_for_training(model, cfg, fresh=self.resume_from is None)
        if counts["frozen"]:
            acc.print(f"parameters: {counts['trainable']:,} trainable, {counts['frozen']:,} frozen")
        self.tokenize = model.tokenize
        optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # The scheduler steps once per optimizer step (not once per process, as a prepared one would); saved with the state.
        acc.register_for_checkpointing(self.scheduler)

        self.stream = MixedStream(
            cfg.data, rank=acc.process_index, world_size=acc.num_processes, seed=cfg.run.seed
        )
        self.step = 0
        self.resume_step = -1
        self.saved_step = -1  # the step of the last checkpoint written or loaded: a step is never saved twice
        self.skipped_steps = 0  # optimizer steps skipped for non-finite values, over the whole run
        if self.resume_from is not None:
            self._resume(candidates)
        self.logger = (
            MetricsLogger(self.out_dir, cfg.wandb, cfg.run.name, to_dict(cfg), self.step)
            if acc.is_main_process
            else None
        )

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def _verified(self, candidates: list[Path]) -> Path | None:
        """The first of `candidates` whose files match their checksums; the main process checks and reports."""
        from trainer.distributed import broadcast_from_main

        acc = self.accelerator
        return broadcast_from_main(
            ckpt.first_verified(candidates, acc.print) if acc.is_main_process else None
        )

    def _resume(self, candidates: list[Path]) -> None:
        """Load self.resume_from; if that fails on any rank, the next older checkpoint that verifies, and so on."""
        from trainer.distributed import broadcast_from_main, gather_to_main

        acc, path = self.accelerator, self.resume_from
        while path is not None:
            error = None
            try:
                self._load(path)
            except Exception as e:  # any failure: report it and fall back, never a silent fresh start
                error = f"{type(e).__name__}: {e}"
            errors = gather_to_main(error)
            message = broadcast_from_main(
                "; ".join(f"rank {r}: {m}" for r, m in enumerate(errors) if m) if errors is not None else None
            )
            if not message:
                break
            acc.print(f"checkpoint {path.name} could not be loaded, trying the next older one: {message}")
            path = self._verified(candidates[candidates.index(path) + 1 :])
        if path is None:
            raise ckpt.CheckpointError(ckpt.no_usable(candidates, self.cfg.train.resume))
        self.resume_from = path
        if acc.is_main_process:
            ckpt.settle_resumed(self.ckpt_root, path, self.cfg.train.keep_last, acc.print)
        acc.wait_for_everyone()
        acc.print(f"resumed from {path} at step {self.step}")

    def _load(self, path: Path) -> None:
        from shards.mixing import MixedStream

        state = ckpt.read_state(path)
        self.accelerator.load_state(str(path / "accelerate"))
        self.step = self.resume_step = self.saved_step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        data_state = ckpt.load_data_state(path, self.accelerator.process_index)
        try:
            if data_state is None:
                raise ValueError(f"no data state for rank {self.accelerator.process_index} in {path}")
            self.stream.load_state_dict(data_state)  # checks rank, world size, workers, seed and sources
        except ValueError as e:
            # A new seed, so the restarted stream does not replay the samples the run began with.
            acc = self.accelerator
            seed = self.cfg.run.seed + self.step
            self.stream = MixedStream(
                self.cfg.data, rank=acc.process_index, world_size=acc.num_processes, seed=seed
            )
            # The counts go on from the run's totals, kept on one rank (logs and checkpoints sum over ranks).
            if acc.is_main_process:
                self.stream.carry_counts(state.get("data_seen", {}), state.get("samples", {}))
            acc.print(f"resume: the data stream restarts (seed {seed}), its saved state does not apply: {e}")
        # This run's optim.lr and max_steps may differ from the saved run's.
        rebase_schedule(self.scheduler, self.cfg.optim.lr)

    def _counts(self, extra: list[float] = ()) -> tuple[list[float], dict[str, int], dict[str, int]]:
        """`extra` values, data_seen and the stream's read counts, each summed over all ranks (collective)."""
        seen = self.stream.data_seen
        sources = sorted(seen)
        read = self.stream.read_stats.as_dict()
        values = [*extra, *(float(seen[s]) for s in sources), *(float(v) for v in read.values())]
        totals = self._world_sum(values)
        n = len(extra)
        data_seen = {s: int(v) for s, v in zip(sources, totals[n : n + len(sources)])}
        samples = {k: int(v) for k, v in zip(read, totals[n + len(sources) :])}
        return totals[:n], data_seen, samples

    def _params_finite(self) -> bool:
        """Whether every parameter (this rank's ZeRO-3 partition) is finite on every rank (collective)."""
        model = self.accelerator.unwrap_model(self.model)
        local = all(bool(torch.isfinite(getattr(p, "ds_tensor", p)).all()) for p in model.parameters())
        return not self._any_rank(not local)

    def save(self) -> Path | None:
        """Checkpoint this step (collective); a step already saved is not saved again, non-finite weights never."""
        if self.step == self.saved_step:
            self.accelerator.print(f"checkpoint of step {self.step} already saved")
            return None
        if not self._params_finite():
            raise NonFiniteError(
                f"step {self.step}: the model's weights are not finite (the update of a step with a finite loss and "
                "gradient norm overflowed); nothing was saved, the last checkpoint stays as it is. Lower optim.lr"
            )
        _, data_seen, samples = self._counts()
        trainer_state = {
            "samples_seen": sum(data_seen.values()),  # over all ranks
            "world_size": self.accelerator.num_processes,
            "num_workers": self.cfg.data.num_workers,
            "data_seen": data_seen,
            "samples": samples,
            "skipped_steps": self.skipped_steps,
            "time": time.time(),
        }
        path = ckpt.save_checkpoint(
            self.accelerator,
            self.ckpt_root,
            self.step,
            self.model,
            trainer_state,
            self.stream.state_dict(),
            dump_yaml(self.cfg),
            self.cfg.train.keep_last,
        )
        self.saved_step = self.step
        self.accelerator.print(f"saved checkpoint {path}")
        return path

    # -- evaluation -------------------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        from trainer.eval_runner import evaluate_sets, write_report

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            results = evaluate_sets(model, self.cfg, self.accelerator)
        finally:
            model.train(was_training)
        if self.accelerator.is_main_process and results:
            write_report(self.out_dir, self.step, results)
            self.logger.log_eval(self.step, results)
        return results

    # -- the loop ---------------------------------------------------------------------------------------------------

    def _world_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return (
            self.accelerator.reduce(t, reduction="sum").tolist()
            if self.accelerator.num_processes > 1
            else values
        )

    def _any_rank(self, flag: bool) -> bool:
        return self._world_sum([float(flag)])[0] > 0

    def train(self) -> int:
        cfg, acc = self.cfg, self.accelerator
        stop = StopFlag()
        stop.install()
        batches = iter(self.stream)
        window: dict[str, list[float]] = {}
        window_samples = window_seconds = 0.0
        window_start = time.perf_counter()
        last_kind = "weak"
        progress = None
        if acc.is_main_process:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.train.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        preempted = False
        bad_streak = 0  # optimizer steps in a row with non-finite values
        self.model.train()
        try:
            while self.step < cfg.train.max_steps:
                grad_norm = math.nan
                skipped = bad_loss = False
                batch_sources: list[tuple[str, str, str]] = []  # (kind, source, key) of this step's samples
                for _ in range(cfg.train.grad_accum):
                    batch = move_batch(next(batches), acc.device)
                    last_kind = batch["kind"]
                    step = train_step(acc, self.model, self.optimizer, self.tokenize, batch, cfg)
                    result = step.loss
                    if step.grad_norm is not None:
                        grad_norm, skipped = step.grad_norm, step.skipped
                    for k, v in result.parts.items():
                        window.setdefault(k, []).append(v)
                    loss = result.total.item()
                    bad_loss = bad_loss or not math.isfinite(loss)
                    window.setdefault("loss", []).append(loss)
                    batch_sources += [(last_kind, s, k) for s, k in zip(batch["sources"], batch["keys"])]
                    n = batch["audio"].shape[0]
                    window_samples += n
                    window_seconds += float(batch["audio_mask"].sum()) / cfg.data.sample_rate
                lr = self.scheduler.get_last_lr()[0]  # the lr this step used
                self.scheduler.step()
                self.step += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.3f}", kind=last_kind)
                # A non-finite loss on any rank poisoned the gradients of all (trainer.step), so `skipped` agrees over
                # ranks. Under fp16 a skip with every loss finite is a loss-scale overflow, the scaler's business.
                if cfg.train.mixed_precision == "fp16":
                    bad = self._any_rank(bad_loss)
                else:
                    bad = skipped or bad_loss
                self.skipped_steps += skipped
                bad_streak = bad_streak + 1 if bad else 0

                last = self.step == cfg.train.max_steps
                stopping = bad_streak > cfg.train.nan_patience
                if cfg.train.log_every and (self.step % cfg.train.log_every == 0 or last or stopping):
                    self._log(window, window_samples, window_seconds, window_start, grad_norm, last_kind, lr)
                    window, window_samples, window_seconds = {}, 0.0, 0.0
                    window_start = time.perf_counter()
                if stopping:
                    raise NonFiniteError(
                        self._nonfinite_message(bad_loss, grad_norm, bad_streak, batch_sources)
                    )
                if (
                    cfg.train.eval_every
                    and self.step % cfg.train.eval_every == 0
                    and self.step < cfg.train.max_steps
                ):
                    self.evaluate()
                if (
                    cfg.train.save_every
                    and self.step % cfg.train.save_every == 0
                    and self.step < cfg.train.max_steps
                ):
                    self.save()
                if self._any_rank(stop.signal is not None):
                    acc.print(f"signal received: checkpointing at step {self.step} and exiting for requeue")
                    self.save()
                    preempted = True
                    break
            if not preempted:
                if self.step > self.resume_step:  # nothing new to save when resumed at max_steps
                    self.save()
                if cfg.train.eval_every:
                    self.evaluate()
        finally:
            stop.restore()
            if progress is not None:
                progress.close()
            if self.logger is not None:
                self.logger.close()
            close = getattr(batches, "close", None)  # stops DataLoader workers now, not at garbage collection
            if close is not None:
                close()
        acc.wait_for_everyone()
        if acc.is_main_process:
            print(f"{'stopped' if preempted else 'finished'} at step {self.step}; outputs in {self.out_dir}")
        return EXIT_PREEMPTED if preempted else 0

    def _nonfinite_message(self, bad_loss: bool, grad_norm: float, streak: int, batch) -> str:
        """The one line a run stops with when it meets non-finite values (collective: names every rank's batch)."""
        from collections import Counter

        from trainer.distributed import broadcast_from_main, gather_to_main

        gathered = gather_to_main((bad_loss, batch))
        message = None
        if gathered is not None:
            bad_loss = any(loss for loss, _ in gathered)
            samples = [x for _, part in gathered for x in part]
            kinds = "/".join(sorted({kind for kind, _, _ in samples}))
            counts = Counter(source for _, source, _ in samples)
            keys = [key for _, _, key in samples]
            what = "loss" if bad_loss else "gradient norm"
            message = (
                f"non-finite {what} at step {self.step} (grad_norm {grad_norm}) on a {kinds} batch from "
                + ", ".join(f"{s} ({n} samples)" for s, n in sorted(counts.items()))
                + f": {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}; "
                + f"{streak} bad step(s) in a row, train.nan_patience={self.cfg.train.nan_patience}. "
                + "The update was skipped and nothing was saved; the last checkpoint is "
                + (f"step_{self.saved_step}" if self.saved_step >= 0 else "none")
                + ". Lower optim.lr, or raise train.nan_patience to skip rare bad batches"
            )
        return broadcast_from_main(message)

    def _log(self, window, n_samples, n_seconds, start, grad_norm, kind, lr) -> None:
        acc = self.accelerator
        elapsed = max(time.perf_counter() - start, 1e-9)
        totals, data_seen, samples = self._counts([n_samples, n_seconds])
        model = acc.unwrap_model(self.model)
        record: dict[str, Any] = {
            "step": self.step,
            "loss": _mean(window.get("loss")),
            "loss_weak": _mean(window.get("loss_weak")),
            "loss_strong": _mean(window.get("loss_strong")),
            "lr": lr,
            "logit_scale": float(model.logit_scale_value()),
            "samples_per_s": totals[0] / elapsed,
            "audio_seconds_per_s": totals[1] / elapsed,
            "grad_norm": grad_norm,
            "batch_kind": kind,
            "data_seen": data_seen,
            "samples": samples,
            "skipped_steps": self.skipped_steps,
        }
        if "loss_temporal" in window:
            record["loss_temporal"] = _mean(window["loss_temporal"])
        if torch.cuda.is_available():
            record["max_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if self.logger is not None:
            self.logger.log(record)


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def train(cfg: Config) -> int:
    """Run one training job to max_steps (or until a stop signal); returns the process exit status."""
    try:
        trainer = Trainer(cfg)
        return trainer.train()
    finally:
        with contextlib.suppress(Exception):
            destroy()
