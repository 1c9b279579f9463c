"""LoRA discrepancy between adapters (Eq. 6–8, Figure 8):
`python -m eval.lora_discrepancy ADAPTER1 ADAPTER2 [ADAPTER3 ...] --output_dir O`.

Per encoder block and LoRA target: the Weyl bound max_i |σ_i(ΔW₁) − σ_i(ΔW₂)| and the exact ‖ΔW₁ − ΔW₂‖₂, for each
pair of adapters: O/<a>__<b>.csv and heatmap PNGs (blocks × targets); with more than two adapters O/pairwise.csv
and a pairwise heatmap of the mean bound over layers."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from absl import flags

from eval.common import EXPECTED_ERRORS, fail
from sam_jax.evaluation.figures import heatmap
from sam_jax.evaluation.lora_discrepancy import as_heatmap, check_files, discrepancy, lora_factors, pairwise
from sam_jax.flags_util import run_app
from sam_jax.outputs import check_output_dir

flags.DEFINE_string("output_dir", "lora_discrepancy", "Where the CSVs and PNGs go.")
FLAGS = flags.FLAGS


def _label(path: Path) -> str:
    return path.parent.name if path.name == "adapter.safetensors" else path.stem


def main(argv):
    try:
        out = check_output_dir(FLAGS.output_dir, "--output_dir")
        paths = check_files(argv[1:])
        factors = [lora_factors(p) for p in paths]
        labels = [_label(p) for p in paths]
        for (i, a), (j, b) in itertools.combinations(enumerate(factors), 2):
            rows = discrepancy(a, b)
            stem = f"{labels[i]}__{labels[j]}"
            with open(out / f"{stem}.csv", "w", newline="") as f:
                writer = csv.DictWriter(
                    f, ["block", "target", "weyl_bound", "spectral_distance"], extrasaction="ignore"
                )
                writer.writeheader()
                writer.writerows(rows)
            for value in ("weyl_bound", "spectral_distance"):
                grid, blocks, targets = as_heatmap(rows, value)
                heatmap(grid, blocks, targets, out / f"{stem}_{value}.png", f"{value}: {labels[i]} vs {labels[j]}")
            print(
                f"{stem}: mean bound {sum(r['weyl_bound'] for r in rows) / len(rows):.4g}, mean exact distance "
                f"{sum(r['spectral_distance'] for r in rows) / len(rows):.4g} over {len(rows)} layers"
            )
        if len(factors) > 2:
            matrix = pairwise(factors)
            with open(out / "pairwise.csv", "w", newline="") as f:
                csv.writer(f).writerows([["", *labels]] + [[labels[i], *matrix[i]] for i in range(len(labels))])
            heatmap(matrix, labels, labels, out / "pairwise.png", "mean Weyl bound over layers", row_label="")
    except EXPECTED_ERRORS as e:
        return fail(e)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
