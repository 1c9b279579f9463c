"""The runs behind each of the paper's Tables 1–5 and the commands that make them: train every row's model with its
flagfile, evaluate it on VD1, VD2, D3 and D4 with the evaluation flagfiles, then rebuild the tables (`eval.table`).

Two variants: `paper` (what the paper describes, our corrected code: `train/*.flags`) and `paper_code` (what the
authors ran: the same flagfiles plus the original code's choices listed in `train/paper_code/adult.flags`; zero-shot
SAM gets those that act at inference, `--zero_shot_input=original_code`). Runs go to `<root>/<variant>/<run>`;
zero-shot SAM, one per 3-channel layout of Table 1, into `<root>/<variant>/sam_zero_shot_<layout>`. The layouts'
LoRA runs are trained on adult glioma, as §4.3 says of Tables 1 and 2 alike (docs/paper_notes.md). A step whose result
exists is skipped (a training run with its `summary.json`, an evaluation with its `summary.json`), so the same command
resumes an interrupted reproduction; train.main itself resumes an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sam_jax.flags_util import app_package_dir, find_flagfile

DOMAIN_FLAGFILES = {
    "GLI": "eval/adult.flags",
    "MEN": "eval/meningioma.flags",
    "PED": "eval/pediatric.flags",
    "SSA": "eval/africa.flags",
}
VARIANTS = ("paper", "paper_code")
LAYOUTS = ("t1n_x3", "t1c_x3", "t2w_x3", "t2f_x3", "t1n_t2w_t2f")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    flags: tuple  # training flags (a flagfile and overrides); empty for zero-shot SAM
    parent: str = ""  # a run this one starts from (--init_adapter)
    layout: str = ""  # zero-shot SAM's 3-channel input

    @property
    def zero_shot(self) -> bool:
        return not self.flags


def _runs() -> dict[str, Run]:
    runs = [Run(f"sam_zero_shot_{layout}", (), layout=layout) for layout in LAYOUTS]
    runs += [
        Run("adult", ("--flagfile=train/adult.flags",)),
        Run("meningioma", ("--flagfile=train/meningioma.flags",)),
        Run("two_step_1", ("--flagfile=train/ablations/two_step_1.flags",)),
        Run("two_step_2", ("--flagfile=train/ablations/two_step_2.flags",), parent="two_step_1"),
        Run("full_finetune", ("--flagfile=train/ablations/full_finetune.flags",)),
    ]
    for layout in LAYOUTS:
        runs.append(Run(f"gli_{layout}", (f"--flagfile=train/ablations/{layout}.flags",)))
    return {r.name: r for r in runs}


RUNS = _runs()
TABLES = {
    1: (*(f"sam_zero_shot_{layout}" for layout in LAYOUTS), *(f"gli_{layout}" for layout in LAYOUTS)),
    2: (*(f"gli_{layout}" for layout in LAYOUTS), "adult", "meningioma"),
    3: ("two_step_1", "two_step_2", "adult"),
    4: ("full_finetune", "adult"),
    5: ("adult", "meningioma"),
}


def runs_for(tables) -> list[Run]:
    """The runs the tables need, parents first, each once."""
    names = []
    for table in tables:
        for name in TABLES[table]:
            for needed in (RUNS[name].parent, name):
                if needed and needed not in names:
                    names.append(needed)
    return [RUNS[n] for n in names]


def paper_code_options() -> list[str]:
    """The original code's options, as `train/paper_code/adult.flags` sets them (that file is the one place), found
    where train.main finds it (from a checkout or an installed wheel)."""
    lines = find_flagfile("train/paper_code/adult.flags", app_package_dir("train")).read_text().splitlines()
    own = ("--flagfile", "--workdir")
    return [line.strip() for line in lines if line.startswith("--") and not line.startswith(own)]


@dataclasses.dataclass(frozen=True)
class Step:
    run: str
    kind: str  # "train" or "eval <domain>"
    args: tuple  # for `python -m`
    done: Path  # exists when the step's result does

    def command(self) -> str:
        return " ".join(("python -m",) + self.args)


def plan(tables, variant: str, root, data_dir, sam_weights, train_flags=(), eval_flags=()) -> list[Step]:
    """Every step, in order: a run's training, then its four evaluations."""
    base = Path(root) / variant
    steps = []
    for run in runs_for(tables):
        workdir = base / run.name
        if run.zero_shot:
            zero_shot_input = "original_code" if variant == "paper_code" else "sam_rgb"
            zero = ["--zero_shot", f"--modalities={run.layout}", f"--zero_shot_input={zero_shot_input}"]
            zero.append(f"--sam_weights={sam_weights}")
            for domain, flagfile in DOMAIN_FLAGFILES.items():
                out = workdir / "eval" / domain
                steps.append(
                    Step(
                        run.name,
                        f"eval {domain}",
                        (
                            "eval.main",
                            f"--flagfile={flagfile}",
                            *zero,
                            f"--data_dir={data_dir}",
                            f"--output_dir={out}",
                            *eval_flags,
                        ),
                        out / "summary.json",
                    )
                )
            continue
        train = list(run.flags) + (paper_code_options() if variant == "paper_code" else [])
        if run.parent:
            train.append(f"--init_adapter={base / run.parent / 'adapter.safetensors'}")
        steps.append(
            Step(
                run.name,
                "train",
                (
                    "train.main",
                    *train,
                    f"--data_dir={data_dir}",
                    f"--sam_weights={sam_weights}",
                    f"--workdir={workdir}",
                    *train_flags,
                ),
                workdir / "summary.json",
            )
        )
        for domain, flagfile in DOMAIN_FLAGFILES.items():
            steps.append(
                Step(
                    run.name,
                    f"eval {domain}",
                    (
                        "eval.main",
                        f"--flagfile={flagfile}",
                        f"--checkpoint={workdir}",
                        f"--data_dir={data_dir}",
                        *eval_flags,
                    ),
                    workdir / "eval" / f"{domain}_best" / "summary.json",
                )
            )
    return steps
