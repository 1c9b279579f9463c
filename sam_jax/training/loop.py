"""The training run: check inputs, cache the data, build and partition the model, train with resumable checkpoints,
validate, export the adapter, score every domain. `train/main.py` is flags around `train_and_evaluate`: `setup`
(inputs, data, model, restore), `train` (the steps, at the cadence of `sam_jax.training.cadence`), `finish`
(adapters, scores, summary.json).

With --distributed the run spans processes (`sam_jax.distributed`): --batch_size is the global batch, split evenly
over every device of every process, each process loading its own block of every batch; the learning rate applies
to that global batch's mean loss, so it does not change with the number of processes. The frozen base is
replicated once; orbax writes one checkpoint together with every process's data-iterator state; process 0 alone
writes config.json, the logs, the adapters and summary.json."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import grain
import jax
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from sam_jax import distributed
from sam_jax.adaptation import save_adapter
from sam_jax.adaptation.adapter_io import init_from_adapter
from sam_jax.data.brats import find_cases
from sam_jax.data.cache import Cache, build_cache, default_cache_dir
from sam_jax.data.domains import files_like
from sam_jax.data.phantom import write_phantom
from sam_jax.data.pipeline import make_dataset, make_iterator, select_slices
from sam_jax.errors import SamJaxError
from sam_jax.hashing import file_sha256
from sam_jax.outputs import OutputError, check_output_dir, reporting_full_disk, write_atomic
from sam_jax.progress import progress_bar
from sam_jax.training import checkpoint
from sam_jax.training.cadence import Cadence
from sam_jax.training.config import TrainConfig
from sam_jax.training.lock import hold as hold_workdir
from sam_jax.training.run_log import RunLog
from sam_jax.training.step import TrainStep, build_train_step, initial_model, make_eval_forward, optimizer
from sam_jax.training.stopping import Interrupted, StopSignals
from sam_jax.training.validate import broadcast_predictions, low_res_predictions, paper_dice
from sam_jax.training.workdir import claim as claim_workdir
from sam_jax.weights.io import read_metadata


class TrainingError(SamJaxError, RuntimeError):
    """A run that cannot start or cannot go on; the message says why and what was kept."""


class TrainingStopped(TrainingError):
    """A run stopped by a signal, after a checkpoint of its last step or between stages (`_on_interrupt`); exits
    with `exit_code`. `every_process`: every process of the run stopped with it (at the same step); else this one
    alone, whose peers must be told."""

    def __init__(self, message: str, exit_code: int, every_process: bool = True):
        super().__init__(message)
        self.exit_code = exit_code
        self.every_process = every_process


def check_inputs(cfg: TrainConfig) -> None:
    """Missing inputs, before any compute (the settings themselves were checked when `cfg` was built)."""
    problems = []
    if cfg.sam_weights and not Path(cfg.sam_weights).is_file():
        problems.append(f"--sam_weights {cfg.sam_weights}: no such file")
    elif cfg.sam_weights:
        try:
            read_metadata(cfg.sam_weights)  # the header only: a wrong file is refused without reading GBs
        except SamJaxError as e:
            problems.append(str(e))
    if cfg.init_adapter and not Path(cfg.init_adapter).is_file():
        problems.append(f"--init_adapter {cfg.init_adapter}: no such file")
    if (cfg.volume_batch or cfg.batch_size) % jax.device_count():
        name, value = ("volume_batch", cfg.volume_batch) if cfg.volume_batch else ("batch_size", cfg.batch_size)
        problems.append(f"--{name} {value} does not split over {jax.device_count()} devices")
    if not cfg.data_dir:
        problems.append("--data_dir is required")
    elif cfg.phantom_cases_per_domain <= 0 and not (Path(cfg.data_dir).is_dir() and find_cases(cfg.data_dir)):
        problems.append(f"--data_dir {cfg.data_dir}: no cases found, searched recursively ({files_like()})")
    elif jax.process_count() > 1:
        try:
            distributed.check_even_split(
                cfg.volume_batch or cfg.batch_size, "volume_batch" if cfg.volume_batch else "batch_size"
            )
        except distributed.DistributedError as e:
            problems.append(str(e))
    if problems:
        raise TrainingError("cannot start training:\n  - " + "\n  - ".join(problems))
    if not cfg.sam_weights:
        logging.warning(
            "NO SAM WEIGHTS (--sam_weights empty): the model starts from RANDOM initialisation. "
            "Convert sam_vit_b_01ec64.pth with convert/sam_weights.py for real results."
        )
    if cfg.cross_slice and cfg.slices == 1:
        logging.warning("--cross_slice with --slices=1: the depth branch sees one slice and adds nothing useful")


def _cache_root(cfg: TrainConfig) -> str:
    return cfg.cache_dir or default_cache_dir(cfg.data_dir)


def prepare_data(cfg: TrainConfig):
    """The cache (built or reused), the training cases, the held-out cases of the training domain (validation) and
    the evaluation cases of each domain."""
    if cfg.phantom_cases_per_domain > 0 and not (Path(cfg.data_dir).is_dir() and find_cases(cfg.data_dir)):
        logging.info("writing %d phantom cases per domain to %s", cfg.phantom_cases_per_domain, cfg.data_dir)
        write_phantom(cfg.data_dir, cfg.phantom_cases_per_domain, seed=cfg.seed)
    cache = build_cache(
        cfg.data_dir,
        _cache_root(cfg),
        normalisation=cfg.normalisation,
        crop_to_brain=cfg.crop_to_brain,
        skip_bad_cases=cfg.skip_bad_cases,
        workers=cfg.cache_workers,
    )
    split = cache.split()

    def of(domain, ids):
        return [c for c in ids if domain == "ALL" or cache.domain(c) == domain]

    train_ids = of(cfg.domain, split["train"])
    if not train_ids:
        raise TrainingError(f"no training cases of domain {cfg.domain} in {cfg.data_dir}")
    val_ids = of(cfg.domain, split["val"])
    warnings = [f"case {c} skipped (--skip_bad_cases): {'; '.join(faults)}" for c, faults in cache.skipped.items()]
    warnings += [
        f"case {c} has an empty segmentation: its slices train as tumour-free"
        for c in train_ids + val_ids
        if cache.entries[c]["has_seg"] and not any(cache.tumour_area(c))
    ]
    if not val_ids:
        warnings.append(
            f"no held-out case of domain {cfg.domain} in the split: no validation, no best checkpoint, "
            f"no final score for {cfg.domain}"
        )
    eval_sets = {}
    for domain in cfg.eval_domains:
        trained_on = cfg.domain in (domain, "ALL")
        ids = of(domain, split["val"] if trained_on else cache.case_ids)
        if ids:
            eval_sets[domain] = ids
        elif val_ids or not trained_on:
            warnings.append(
                f"no {domain} case to score ({'held-out' if trained_on else 'any'}): {domain} is "
                "missing from the final scores"
            )
    for warning in warnings:
        logging.warning("WARNING: %s", warning)
    return cache, train_ids, val_ids, eval_sets, warnings


def build(cfg: TrainConfig, tx: optax.GradientTransformation | None = None) -> tuple[TrainStep, dict]:
    """The run's train step (`build_train_step`) on its model, filled from SAM's weights, then from
    `--init_adapter`; and the frozen parameters inherited from that adapter (path → array), which this run's adapter
    file must carry too."""
    model = initial_model(cfg)
    from_parent = init_from_adapter(model, cfg.init_adapter, cfg.base_sha256) if cfg.init_adapter else {}
    train_step = build_train_step(cfg, model, tx)
    trained = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(train_step.trainable)}
    return train_step, {p: a for p, a in from_parent.items() if p not in trained}


def _resumes_from(workdir: Path, once: str = "") -> str:
    step = checkpoint.last_complete_step(workdir)
    if step is None:
        return f"No checkpoint was saved yet: the same command starts the run again{once}."
    return (
        f"The last complete checkpoint is step {step} in {workdir / 'checkpoints'}: the same command resumes "
        f"there{once}."
    )


def _disk_full(error: OutputError, workdir: Path) -> TrainingError:
    return TrainingError(f"{error}\n{_resumes_from(workdir, ' once the disk has room')}")


@contextlib.contextmanager
def _on_interrupt(what: str, kept: Callable[[], str]):
    """A stop signal (`Interrupted`) within the block stops the run saying what it interrupted and what is kept."""
    try:
        yield
    except Interrupted as e:
        raise TrainingStopped(f"stopped by {e.name} while {what}. {kept()}", e.exit_code, every_process=False) from None


@dataclasses.dataclass
class Run:
    """A run set up to train (`setup`): its data, model, checkpoints and where it stands (`trainable`, `opt_state`,
    `step`, updated by `train`)."""

    cfg: TrainConfig
    workdir: Path
    writer: bool  # process 0: writes the logs, adapters and summary
    cache: Cache
    val_ids: list[str]
    eval_sets: dict[str, list[str]]
    warnings: list[str]
    cadence: Cadence
    iterator: Any  # the training batches, checkpointed with the state
    shard: grain.sharding.ShardOptions
    batch_sharding: NamedSharding
    train_step: Callable
    eval_forward: Callable
    graphdef: nnx.GraphDef  # with `trainable` and `frozen`, the model (`broadcast_predictions`)
    frozen: nnx.State  # replicated on every device for the whole run
    inherited: dict  # frozen arrays taken from --init_adapter (path → array)
    mngr: ocp.CheckpointManager
    trainable: nnx.State
    opt_state: Any
    step: int
    key: jax.Array
    last_saved: int | None  # the newest checkpoint's step, named when the loss turns NaN

    def put(self, batch):
        """This process's block of rows → the global batch."""
        local = {k: v for k, v in batch.items() if k not in ("case_index", "slice_index")}
        return distributed.global_batch(local, self.batch_sharding, len(batch["image"]) * jax.process_count())

    def predictions(self, trainable, ids, max_slices=0):
        cfg = self.cfg
        if cfg.broadcast_clicks and cfg.prompt == "click":  # validated as the original code
            return broadcast_predictions(
                nnx.merge(self.graphdef, trainable, self.frozen), cfg, self.cache, ids, max_slices
            )
        return low_res_predictions(
            lambda b, r: self.eval_forward(trainable, self.frozen, b, r),
            self.cache,
            ids,
            modalities=cfg.modalities,
            slices=cfg.slices,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            max_slices=max_slices,
            put=self.put,
            shard=self.shard,
            to_host=distributed.to_host,
            gather_rows=distributed.gather_rows,
            prompt=cfg.prompt,
        )

    def validate(self) -> float:
        return paper_dice(self.predictions(self.trainable, self.val_ids, self.cfg.val_slices))["mean"]

    def state(self) -> dict:
        """What a checkpoint holds besides the data iterator."""
        return {
            "trainable": self.trainable,
            "opt_state": self.opt_state,
            "step": self.step,
            "rng": jax.random.key_data(self.key),
        }


class Best(NamedTuple):
    """The checkpoint of the best validation Dice."""

    step: int
    val_dice: float
    trainable: nnx.State


def _claim_and_prepare(cfg: TrainConfig, writer: bool, held: contextlib.ExitStack):
    """The workdir and `prepare_data`'s results: process 0 locks the workdir (held by `held`) before anything is
    written in it, claims it, and writes the phantom and the cache, once; the others then read what it wrote."""
    if writer:
        held.enter_context(hold_workdir(check_output_dir(cfg.workdir, "--workdir")))
        workdir = claim_workdir(cfg)
        data = prepare_data(cfg)
    distributed.barrier("data ready")
    if not writer:
        workdir = Path(cfg.workdir)
        data = prepare_data(cfg)
    return workdir, data


def setup(cfg: TrainConfig, held: contextlib.ExitStack) -> Run:
    """Check, cache, build, and restore the latest checkpoint if there is one. Process 0's lock on the workdir is
    held by `held`, until the caller closes it."""

    def kept():
        return _resumes_from(Path(cfg.workdir))

    with _on_interrupt("starting", kept):
        distributed.initialize(cfg)
        check_inputs(cfg)
    cfg = cfg.with_absolute_paths()
    writer = distributed.is_writer()
    with _on_interrupt(
        "preparing the data", lambda: f"Cases already cached stay cached in {_cache_root(cfg)}. {kept()}"
    ):
        workdir, data = _claim_and_prepare(cfg, writer, held)
    with _on_interrupt("building the model and restoring its checkpoint", kept):
        return _assemble(cfg, workdir, writer, data)


def _assemble(cfg: TrainConfig, workdir: Path, writer: bool, data) -> Run:
    """The run on its prepared data: the training stream, the model and its train step, the latest checkpoint."""
    cache, train_ids, val_ids, eval_sets, warnings = data
    selection = dict(
        slice_policy=cfg.slice_policy, empty_fraction=cfg.empty_fraction, click_policy=cfg.click_policy, seed=cfg.seed
    )
    # One epoch visits every selected slice (every case, with --volume_batch) once; the stream repeats forever and
    # batches run across epoch ends.
    slices_per_epoch = len(train_ids) if cfg.volume_batch else len(select_slices(cache, train_ids, **selection))
    cadence = Cadence.of(cfg, slices_per_epoch, validation=bool(val_ids))
    if cfg.schedule == "cosine" and cfg.warmup_steps >= cadence.total_steps:
        raise TrainingError(
            f"--warmup_steps {cfg.warmup_steps} ≥ the run's {cadence.total_steps} steps "
            f"({cfg.epochs} epochs of {slices_per_epoch} slices): it would end warming up"
        )
    shard = grain.sharding.ShardByJaxProcess()  # this process's block of every batch
    train_data = make_dataset(
        cache,
        train_ids,
        z=cfg.slices,
        modalities=cfg.modalities,
        batch_size=cfg.batch_size,
        volume_batch=cfg.volume_batch,
        drop_remainder=True,
        shard=shard,
        prompt=cfg.prompt,
        **selection,
    )
    iterator = make_iterator(train_data, num_workers=cfg.num_workers)
    logging.info("%d training slices per epoch, %d steps of %d", slices_per_epoch, cadence.total_steps, cfg.batch_size)

    train_step, inherited = build(cfg, optimizer(cfg, cadence.total_steps))
    mesh = distributed.data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    state = distributed.replicate(
        {
            "trainable": train_step.trainable,
            "opt_state": train_step.opt_state,
            "step": 0,
            "rng": jax.random.key_data(jax.random.key(cfg.seed)),
        },
        replicated,
    )
    mngr = checkpoint.manager(workdir, cfg.keep_checkpoints)
    restored = checkpoint.restore_latest(mngr, state, iterator)  # every process: the same step, its own iterator
    if restored is not None:
        state = restored
        logging.info("resumed from step %d in %s", int(distributed.to_host(state["step"])), workdir)
    return Run(
        cfg=cfg,
        workdir=workdir,
        writer=writer,
        cache=cache,
        val_ids=val_ids,
        eval_sets=eval_sets,
        warnings=warnings,
        cadence=cadence,
        iterator=iterator,
        shard=shard,
        batch_sharding=NamedSharding(mesh, PartitionSpec("data")),
        train_step=train_step.step,
        eval_forward=make_eval_forward(train_step.graphdef, cfg),
        graphdef=train_step.graphdef,
        frozen=distributed.replicate(train_step.frozen, replicated),
        inherited=inherited,
        mngr=mngr,
        trainable=state["trainable"],
        opt_state=state["opt_state"],
        step=int(distributed.to_host(state["step"])),
        key=jax.random.wrap_key_data(state["rng"]),
        last_saved=mngr.latest_step(),
    )


def _train_one_step(run: Run, progress, run_log: RunLog | None, speed) -> None:
    """One step, then what the cadence asks for at it: validation, a log line, a checkpoint."""
    batch = next(run.iterator)
    run.trainable, run.opt_state, metrics = run.train_step(
        run.trainable, run.opt_state, run.frozen, run.put(batch), jax.random.fold_in(run.key, run.step)
    )
    run.step += 1
    step = run.step
    metrics = {k: float(distributed.to_host(v)) for k, v in metrics.items()}
    loss = metrics["loss"]
    if not math.isfinite(loss):
        raise TrainingError(
            f"the loss became {loss} at step {step}; training stopped. The last good "
            f"checkpoint is step {run.last_saved} in {run.workdir / 'checkpoints'}"
            if run.last_saved is not None
            else f"the loss became {loss} at step {step}, before any checkpoint was saved"
        )
    slices_per_s = speed(step)
    progress.update(1)
    progress.set_postfix(loss=f"{loss:.4f}", slices_per_s=f"{slices_per_s:.1f}", refresh=False)
    record = {"step": step, "epoch": run.cadence.epoch(step), **metrics}
    if run.cadence.validates(step):
        record["val_dice"] = run.validate()
    if run.writer and run.cadence.logs(step):
        record["slices_per_s"] = slices_per_s
        run_log.write(step, record)
    if run.cadence.checkpoints(step):
        val = record.get("val_dice")
        checkpoint.save(
            run.mngr, step, run.state(), run.iterator, metrics=None if val is None else {checkpoint.BEST_METRIC: val}
        )
        run.last_saved = step


def _best(run: Run) -> Best | None:
    """The best validation checkpoint, once every save has finished."""
    with reporting_full_disk(run.workdir / "checkpoints"):
        run.mngr.wait_until_finished()
    best = checkpoint.best_step(run.mngr)
    if best is None:
        return None
    val_dice = float(run.mngr.metrics(best)[checkpoint.BEST_METRIC])
    if best == run.step:  # the parameters in memory are that checkpoint's: reading them back costs ~0.6 s
        return Best(best, val_dice, run.trainable)
    return Best(best, val_dice, checkpoint.restore_state(run.mngr, best, run.state())["trainable"])


def _stop(run: Run, stop: StopSignals) -> None:
    """Checkpoint the step just done (unless the cadence did), wait for every save, and raise `TrainingStopped`."""
    if run.last_saved != run.step:
        checkpoint.save(run.mngr, run.step, run.state(), run.iterator)
        run.last_saved = run.step
    with reporting_full_disk(run.workdir / "checkpoints"):
        run.mngr.wait_until_finished()
    raise TrainingStopped(
        f"stopped by {stop.name} after step {run.step} of {run.cadence.total_steps}: its checkpoint is kept in "
        f"{run.workdir / 'checkpoints' / str(run.step)}; the same command resumes from it",
        stop.exit_code,
    )


def train(run: Run) -> Best | None:
    """Steps from where `run` stands to its last; returns the best validation checkpoint, if any. A full disk stops
    the run with what the same command resumes from."""
    cfg = run.cfg
    run_log = RunLog(run.workdir, resumed_at=run.step) if run.writer else None
    progress = progress_bar(
        total=run.cadence.total_steps, initial=run.step, desc="train", unit="step", disable=not run.writer
    )
    first_step, tick = run.step, time.perf_counter()

    def speed(step):  # slices per second since this process started training
        samples = (step - first_step) * (cfg.volume_batch or cfg.batch_size) * cfg.slices
        return samples / max(time.perf_counter() - tick, 1e-9)

    try:
        with StopSignals() as stop:
            while run.step < run.cadence.total_steps:
                _train_one_step(run, progress, run_log, speed)
                if stop.reached(run.step):
                    _stop(run, stop)
        return _best(run)
    except OutputError as e:
        raise _disk_full(e, run.workdir) from None
    finally:
        progress.close()
        if run_log is not None:
            run_log.close()
        try:
            checkpoint.finish(run.mngr)
        except OutputError as e:
            raise _disk_full(e, run.workdir) from None


def _export_adapters(run: Run, best: Best | None) -> None:
    cfg = run.cfg
    lineage = dict(inherited=run.inherited, parent_sha256=file_sha256(cfg.init_adapter) if run.inherited else "")
    spec = cfg.spec()
    try:
        save_adapter(
            run.workdir / "adapter.safetensors",
            jax.tree.map(distributed.to_host, run.trainable),
            spec,
            cfg.base_sha256,
            **lineage,
        )
        if best is not None:  # the model the paper reports: best validation Dice
            save_adapter(
                run.workdir / "adapter_best.safetensors",
                jax.tree.map(distributed.to_host, best.trainable),
                spec,
                cfg.base_sha256,
                **lineage,
            )
    except OutputError as e:
        raise _disk_full(e, run.workdir) from None


def finish(run: Run, best: Best | None) -> dict:
    """Export the adapters (the last and the best), score every evaluation domain, write summary.json."""
    if run.writer:
        _export_adapters(run, best)
    scores = {domain: paper_dice(run.predictions(run.trainable, ids)) for domain, ids in run.eval_sets.items()}
    summary = {
        "steps": run.step,
        "epochs": run.cadence.epoch(run.step),
        "best_step": None if best is None else best.step,
        "best_val_dice": None if best is None else best.val_dice,
        "paper_dice": {d: s["mean"] for d, s in scores.items()},
        "tumour_slice_dice": {d: s["tumour_slice_dice"] for d, s in scores.items()},
        "per_case": {d: s["per_case"] for d, s in scores.items()},
        "skipped_cases": run.cache.skipped,
        "warnings": run.warnings,
    }
    if run.writer:
        write_atomic(run.workdir / "summary.json", json.dumps(summary, indent=2))
    return summary


def train_and_evaluate(cfg: TrainConfig) -> dict:
    """Train (or resume) in `cfg.workdir`; returns the final per-domain scores (also in workdir/summary.json)."""
    with contextlib.ExitStack() as held:  # the workdir's lock, until the run ends (or its process dies)
        run = setup(cfg, held)
        with _on_interrupt("training", lambda: _resumes_from(run.workdir)):  # a second signal, during the stop
            best = train(run)
        with _on_interrupt("exporting the adapters and scoring", lambda: _resumes_from(run.workdir)):
            return finish(run, best)
