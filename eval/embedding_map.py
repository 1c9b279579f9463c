"""Embedding map by domain (Figure 9): `python -m eval.embedding_map --checkpoint WORKDIR [--data_dir D]
[--cases_per_domain 4 --slices_per_case 16] --output_dir O`.

Encoder embeddings of sampled tumour slices, pooled per slice, → t-SNE scatter (O/embedding_map.png), and the
separation in numbers (O/separation.json and one printed line: silhouette, and the k-NN domain accuracy with each
slice's neighbours drawn from other cases only, with its 95% case-bootstrap interval, vs chance)."""

from __future__ import annotations

import json

import numpy as np
from absl import flags

from eval.common import EXPECTED_ERRORS, define_model_flags, fail, load_model
from sam_jax.data import find_cases, load_case
from sam_jax.data.domains import DOMAINS
from sam_jax.evaluation.embeddings import pooled_embeddings, sample_tumour_slices, separation, tsne
from sam_jax.evaluation.figures import scatter_by_domain
from sam_jax.evaluation.segmenter import SliceSegmenter
from sam_jax.evaluation.volume import prepare_volume
from sam_jax.flags_util import run_app
from sam_jax.outputs import check_output_dir
from sam_jax.progress import progress_bar

define_model_flags()
flags.DEFINE_string("data_dir", "", "BraTS cases of several domains; default: the run's training data_dir.")
flags.DEFINE_integer("cases_per_domain", 4, "Cases sampled per domain (the first ones by id).", lower_bound=1)
flags.DEFINE_integer("slices_per_case", 16, "Tumour slices sampled per case.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the slice sample and t-SNE.", lower_bound=0)
flags.DEFINE_string("output_dir", "embedding_map", "Where the PNG and JSON go.")
FLAGS = flags.FLAGS


def main(argv):
    try:
        out = check_output_dir(FLAGS.output_dir, "--output_dir")
        trained = load_model()
        segmenter = SliceSegmenter(trained, FLAGS.batch_size)
        rng = np.random.default_rng(FLAGS.seed)
        features, domains, case_ids = [], [], []
        data_dir = FLAGS.data_dir or trained.training.get("data_dir", "")
        cases = [c for d in DOMAINS for c in find_cases(data_dir, d)[: FLAGS.cases_per_domain]]
        for case_files in progress_bar(cases, desc="embeddings", unit="case"):
            volume = prepare_volume(load_case(case_files), trained.spec)
            if volume.tumour is None:
                continue
            chosen = sample_tumour_slices(volume.tumour, FLAGS.slices_per_case, rng)
            if chosen.size:
                features.append(pooled_embeddings(segmenter, volume.slices, chosen))
                domains += [case_files.domain] * chosen.size
                case_ids += [case_files.case_id] * chosen.size
        features = np.concatenate(features) if features else np.zeros((0, 1))
        scores = separation(features, np.asarray(domains), np.asarray(case_ids), seed=FLAGS.seed)
        scatter_by_domain(
            tsne(features, FLAGS.seed),
            domains,
            out / "embedding_map.png",
            f"t-SNE of encoder embeddings ({trained.name})",
        )
        (out / "separation.json").write_text(json.dumps(scores, indent=2))
    except EXPECTED_ERRORS as e:
        return fail(e)
    print(json.dumps(scores, indent=2))
    low, high = scores["knn_ci95"]
    print(
        f"k-NN domain accuracy, neighbours from other cases only (k={scores['knn_k']}): {scores['knn_accuracy']:.3f} "
        f"[95% CI {low:.3f}-{high:.3f}, bootstrap over {scores['cases']} cases] vs chance {scores['chance']:.3f}; "
        f"silhouette {scores['silhouette']:.3f} over {scores['slices']} slices"
    )
    return 0


if __name__ == "__main__":
    run_app(main, __file__)
