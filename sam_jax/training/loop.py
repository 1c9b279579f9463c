"""The training run: check inputs, cache the data, build and partition the model, train with resumable checkpoints,
validate, export the adapter, score every domain. `train/main.py` is flags around `train_and_evaluate`.

With --distributed the run spans processes (`sam_jax.distributed`): --batch_size is the global batch, split evenly
over every device of every process, each process loading its own block of every batch; the learning rate applies
to that global batch's mean loss, so it does not change with the number of processes. The frozen base is
replicated once; orbax writes one checkpoint together with every process's data-iterator state; process 0 alone
writes config.json, the logs, the adapters and summary.json."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from sam_jax import distributed
from sam_jax.adaptation import build_model, partition, save_adapter
from sam_jax.adaptation.adapter_io import init_from_adapter
from sam_jax.data.brats import find_cases
from sam_jax.data.cache import build_cache, default_cache_dir
from sam_jax.data.phantom import write_phantom
from sam_jax.data.pipeline import make_dataset, make_iterator, select_slices
from sam_jax.errors import SamJaxError
from sam_jax.hashing import file_sha256
from sam_jax.outputs import OutputError, reporting_full_disk, write_atomic
from sam_jax.training import checkpoint
from sam_jax.training.config import TrainConfig
from sam_jax.training.run_log import RunLog
from sam_jax.training.step import cast_floats, make_eval_forward, make_train_step
from sam_jax.training.validate import low_res_predictions, paper_dice
from sam_jax.training.workdir import claim as claim_workdir
from sam_jax.weights.io import read_metadata


class TrainingError(SamJaxError, RuntimeError):
    """A run that cannot start or cannot go on; the message says why and what was kept."""


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
        problems.append(f"--data_dir {cfg.data_dir}: no BraTS cases found (files like "
                        f"BraTS-GLI-00000-000-t1n.nii.gz, searched recursively)")
    elif jax.process_count() > 1:
        try:
            distributed.check_even_split(cfg.volume_batch or cfg.batch_size,
                                         "volume_batch" if cfg.volume_batch else "batch_size")
        except distributed.DistributedError as e:
            problems.append(str(e))
    if problems:
        raise TrainingError("cannot start training:\n  - " + "\n  - ".join(problems))
    if not cfg.sam_weights:
        logging.warning("NO SAM WEIGHTS (--sam_weights empty): the model starts from RANDOM initialisation. "
                        "Convert sam_vit_b_01ec64.pth with convert/sam_weights.py for real results.")
    if cfg.cross_slice and cfg.slices == 1:
        logging.warning("--cross_slice with --slices=1: the depth branch sees one slice and adds nothing useful")


def prepare_data(cfg: TrainConfig):
    """The cache (built or reused), the training cases, the held-out cases of the training domain (validation) and
    the evaluation cases of each domain."""
    if cfg.phantom_cases_per_domain > 0 and not (Path(cfg.data_dir).is_dir() and find_cases(cfg.data_dir)):
        logging.info("writing %d phantom cases per domain to %s", cfg.phantom_cases_per_domain, cfg.data_dir)
        write_phantom(cfg.data_dir, cfg.phantom_cases_per_domain, seed=cfg.seed)
    cache = build_cache(cfg.data_dir, cfg.cache_dir or default_cache_dir(cfg.data_dir),
                        normalisation=cfg.normalisation, crop_to_brain=cfg.crop_to_brain,
                        skip_bad_cases=cfg.skip_bad_cases, workers=cfg.cache_workers)
    split = cache.split()

    def of(domain, ids):
        return [c for c in ids if domain == "ALL" or cache.domain(c) == domain]

    train_ids = of(cfg.domain, split["train"])
    if not train_ids:
        raise TrainingError(f"no training cases of domain {cfg.domain} in {cfg.data_dir}")
    val_ids = of(cfg.domain, split["val"])
    warnings = [f"case {c} skipped (--skip_bad_cases): {'; '.join(faults)}" for c, faults in cache.skipped.items()]
    warnings += [f"case {c} has an empty segmentation: its slices train as tumour-free" for c in train_ids + val_ids
                 if cache.entries[c]["has_seg"] and not any(cache.tumour_area(c))]
    if not val_ids:
        warnings.append(f"no held-out case of domain {cfg.domain} in the split: no validation, no best checkpoint, "
                        f"no final score for {cfg.domain}")
    eval_sets = {}
    for domain in cfg.eval_domains:
        trained_on = cfg.domain in (domain, "ALL")
        ids = of(domain, split["val"] if trained_on else cache.case_ids)
        if ids:
            eval_sets[domain] = ids
        elif val_ids or not trained_on:
            warnings.append(f"no {domain} case to score ({'held-out' if trained_on else 'any'}): {domain} is "
                            "missing from the final scores")
    for warning in warnings:
        logging.warning("WARNING: %s", warning)
    return cache, train_ids, val_ids, eval_sets, warnings


def build(cfg: TrainConfig):
    """The adapted model split into (graphdef, trainable, frozen), and the frozen parameters it inherited from
    `--init_adapter` (path → array), which its adapter file must carry too."""
    model = build_model(cfg.sam_config(), cfg, sam_weights=cfg.sam_weights or None, rngs=nnx.Rngs(cfg.seed))
    from_parent = init_from_adapter(model, cfg.init_adapter, cfg.base_sha256) if cfg.init_adapter else {}
    graphdef, trainable, frozen = partition(model, cfg.trainable)
    trained = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
    return graphdef, trainable, frozen, {p: a for p, a in from_parent.items() if p not in trained}


def optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    lr = cfg.learning_rate if cfg.schedule == "constant" else optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1))
    return optax.adamw(lr, weight_decay=cfg.weight_decay) if cfg.weight_decay else optax.adam(lr)


def _resumes_from(workdir: Path) -> str:
    step = checkpoint.last_complete_step(workdir)
    if step is None:
        return "No checkpoint was saved yet."
    return (f"The last complete checkpoint is step {step} in {workdir / 'checkpoints'}: the same command resumes "
            "there once the disk has room.")


def train_and_evaluate(cfg: TrainConfig) -> dict:
    """Train (or resume) in `cfg.workdir`; returns the final per-domain scores (also in workdir/summary.json)."""
    distributed.initialize(cfg)
    check_inputs(cfg)
    cfg = cfg.with_absolute_paths()
    writer = distributed.is_writer()
    if writer:
        workdir = claim_workdir(cfg)
        cache, train_ids, val_ids, eval_sets, warnings = prepare_data(cfg)  # writes the phantom and the cache, once
    distributed.barrier("data ready")
    if not writer:
        workdir = Path(cfg.workdir)
        cache, train_ids, val_ids, eval_sets, warnings = prepare_data(cfg)  # reads what process 0 wrote
    selection = dict(slice_policy=cfg.slice_policy, empty_fraction=cfg.empty_fraction, click_policy=cfg.click_policy,
                     seed=cfg.seed)
    # One epoch visits every selected slice (every case, with --volume_batch) once; the stream repeats forever and
    # batches run across epoch ends.
    slices_per_epoch = len(train_ids) if cfg.volume_batch else len(select_slices(cache, train_ids, **selection))
    total_steps = cfg.steps if cfg.steps > 0 else math.ceil(cfg.epochs * slices_per_epoch / cfg.batch_size)
    if cfg.schedule == "cosine" and cfg.warmup_steps >= total_steps:
        raise TrainingError(f"--warmup_steps {cfg.warmup_steps} ≥ the run's {total_steps} steps ({cfg.epochs} epochs "
                            f"of {slices_per_epoch} slices): it would end warming up")
    shard = grain.sharding.ShardByJaxProcess()  # this process's block of every batch
    train_data = make_dataset(cache, train_ids, z=cfg.slices, modalities=cfg.modalities, batch_size=cfg.batch_size,
                              volume_batch=cfg.volume_batch, drop_remainder=True, shard=shard, **selection)
    iterator = make_iterator(train_data, num_workers=cfg.num_workers)
    logging.info("%d training slices per epoch, %d steps of %d", slices_per_epoch, total_steps, cfg.batch_size)

    def epoch(step):
        return step * cfg.batch_size // slices_per_epoch

    def validates_at(step):
        if not val_ids:
            return False
        if step == total_steps:
            return True
        return step % cfg.eval_every == 0 if cfg.eval_every else epoch(step) > epoch(step - 1)

    graphdef, trainable, frozen, inherited = build(cfg)
    mesh = distributed.data_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    dtype = jnp.dtype(cfg.precision)
    # Replicated once; stays on the devices for the whole run.
    frozen = distributed.replicate(cast_floats(frozen, dtype), replicated)
    tx = optimizer(cfg, total_steps)
    state = distributed.replicate({"trainable": trainable, "opt_state": tx.init(trainable), "step": 0,
                                   "rng": jax.random.key_data(jax.random.key(cfg.seed))}, replicated)
    mngr = checkpoint.manager(workdir, cfg.keep_checkpoints)
    restored = checkpoint.restore_latest(mngr, state, iterator)  # every process: the same step, its own iterator
    if restored is not None:
        state = restored
        logging.info("resumed from step %d in %s", int(distributed.to_host(state["step"])), workdir)
    train_step = make_train_step(graphdef, tx, cfg)
    eval_forward = make_eval_forward(graphdef, cfg)

    def put(batch):  # this process's block of rows → the global batch
        local = {k: v for k, v in batch.items() if k not in ("case_index", "slice_index")}
        return distributed.global_batch(local, batch_sharding, len(batch["image"]) * jax.process_count())

    def predictions(trainable_now, ids, max_slices=0):
        return low_res_predictions(lambda b, r: eval_forward(trainable_now, frozen, b, r), cache, ids,
                                   modalities=cfg.modalities, slices=cfg.slices, batch_size=cfg.batch_size,
                                   seed=cfg.seed, max_slices=max_slices, put=put, shard=shard,
                                   to_host=distributed.to_host, gather_rows=distributed.gather_rows)

    def validate(trainable_now):
        return paper_dice(predictions(trainable_now, val_ids, cfg.val_slices))["mean"]

    trainable, opt_state = state["trainable"], state["opt_state"]
    step, key = int(distributed.to_host(state["step"])), jax.random.wrap_key_data(state["rng"])
    run_log = RunLog(workdir, resumed_at=step) if writer else None
    last_good = mngr.latest_step()
    progress = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
                    disable=not writer)
    tick, samples = time.perf_counter(), 0
    try:
        while step < total_steps:
            batch = next(iterator)
            trainable, opt_state, metrics = train_step(trainable, opt_state, frozen, put(batch),
                                                       jax.random.fold_in(key, step))
            step += 1
            metrics = {k: float(distributed.to_host(v)) for k, v in metrics.items()}
            loss = metrics["loss"]
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} at step {step}; training stopped. The last good "
                                    f"checkpoint is step {last_good} in {workdir / 'checkpoints'}"
                                    if last_good is not None else
                                    f"the loss became {loss} at step {step}, before any checkpoint was saved")
            samples += (cfg.volume_batch or cfg.batch_size) * cfg.slices
            elapsed = time.perf_counter() - tick
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", slices_per_s=f"{samples / max(elapsed, 1e-9):.1f}")
            record = {"step": step, "epoch": step * cfg.batch_size / slices_per_epoch,
                      **metrics}
            if validates_at(step):
                record["val_dice"] = validate(trainable)
            if writer and (step % cfg.log_every == 0 or "val_dice" in record):
                record["slices_per_s"] = samples / max(elapsed, 1e-9)
                run_log.write(step, record)
            if step % cfg.checkpoint_every == 0 or step == total_steps or "val_dice" in record:
                val = record.get("val_dice")
                checkpoint.save(mngr, step, {"trainable": trainable, "opt_state": opt_state, "step": step,
                                             "rng": jax.random.key_data(key)}, iterator,
                                metrics=None if val is None else {checkpoint.BEST_METRIC: val})
                last_good = step
        with reporting_full_disk(workdir / "checkpoints"):
            mngr.wait_until_finished()
        best = checkpoint.best_step(mngr)
        if best is not None:
            best_val_dice = float(mngr.metrics(best)[checkpoint.BEST_METRIC])
            best_state = checkpoint.restore_state(mngr, best, {"trainable": trainable, "opt_state": opt_state,
                                                               "step": step, "rng": jax.random.key_data(key)})
    except OutputError as e:
        raise TrainingError(f"{e}\n{_resumes_from(workdir)}") from None
    finally:
        progress.close()
        if run_log is not None:
            run_log.close()
        try:
            checkpoint.finish(mngr)
        except OutputError as e:
            raise TrainingError(f"{e}\n{_resumes_from(workdir)}") from None

    lineage = dict(inherited=inherited, parent_sha256=file_sha256(cfg.init_adapter) if inherited else "")
    spec = cfg.spec()
    if writer:
        try:
            save_adapter(workdir / "adapter.safetensors", jax.tree.map(distributed.to_host, trainable), spec,
                         cfg.base_sha256, **lineage)
            if best is not None:  # the model the paper reports: best validation Dice
                save_adapter(workdir / "adapter_best.safetensors",
                             jax.tree.map(distributed.to_host, best_state["trainable"]), spec, cfg.base_sha256,
                             **lineage)
        except OutputError as e:
            raise TrainingError(f"{e}\n{_resumes_from(workdir)}") from None
    scores = {domain: paper_dice(predictions(trainable, ids)) for domain, ids in eval_sets.items()}
    summary = {"steps": step, "epochs": step * cfg.batch_size / slices_per_epoch, "best_step": best,
               "best_val_dice": None if best is None else best_val_dice,
               "paper_dice": {d: s["mean"] for d, s in scores.items()},
               "tumour_slice_dice": {d: s["tumour_slice_dice"] for d, s in scores.items()},
               "per_case": {d: s["per_case"] for d, s in scores.items()},
               "skipped_cases": cache.skipped, "warnings": warnings}
    if writer:
        write_atomic(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary
