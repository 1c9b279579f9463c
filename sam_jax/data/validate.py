"""Check a whole dataset (of any release in `sam_jax.data.domains`) in one pass and report every fault of every case,
by the rule training and evaluation apply (`sam_jax.data.brats.check_case`): missing or duplicate modalities, a
missing segmentation (unless `--unlabelled`), files of two releases in one case folder, unreadable or corrupt files
(the gzip checksum included), a 4-D image without its channels, shape, orientation or affine mismatches, non-finite
or constant images, labels outside the release's set. Empty segmentations are listed as warnings; each release found
is counted. Exit status 1 if any fault.

Usage: python -m sam_jax.data.validate DATA_DIR [--domain GLI] [--unlabelled]"""

from __future__ import annotations

import argparse
import collections
import sys

from sam_jax.data.brats import check_case, empty_segmentation, find_cases
from sam_jax.data.domains import DOMAINS, domain_help, files_like
from sam_jax.data.errors import CaseFault
from sam_jax.progress import progress_bar


def validate(data_dir, domain: str | None = None, require_seg: bool = True):
    """(the cases found, {case id: faults} for the bad ones, ids of the cases with an empty segmentation)."""
    cases = find_cases(data_dir, domain)
    bad, empty = {}, []
    for case_files in progress_bar(cases, desc="validate", unit="case", disable=len(cases) < 20):
        case, faults = check_case(case_files, require_seg)
        if faults:
            bad[case_files.case_id] = faults
        elif empty_segmentation(case):
            empty.append(case_files.case_id)
    return cases, bad, empty


def _release_lines(cases) -> list[str]:
    """One line per release found: how many cases were read under its names, and what the registry notes of it."""
    counts = collections.Counter(c.release for c in cases)
    return [
        f"{n} {release.name} case{'s' * (n != 1)}" + (f" ({release.note})" if release.note else "")
        for release, n in counts.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--domain", choices=list(DOMAINS), help=f"only this domain's cases: {domain_help()}")
    parser.add_argument(
        "--unlabelled",
        action="store_true",
        help="cases without segmentations are not faulty (data for prediction only)",
    )
    args = parser.parse_args(argv)
    try:
        cases, bad, empty = validate(args.data_dir, args.domain, require_seg=not args.unlabelled)
    except CaseFault as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for case_id, faults in bad.items():
        print(f"{case_id}:")
        for fault in faults:
            print(f"  {fault.path}: {fault.fault}")
    for case_id in empty:
        print(
            f"{case_id}: warning: the segmentation is empty (no tumour voxel); training keeps its slices as "
            "tumour-free, evaluation leaves it out of the means"
        )
    for line in _release_lines(cases):
        print(line)
    count = len(cases)
    print(
        f"{count} cases, {count - len(bad)} valid, {len(bad)} with faults"
        + ("" if count else f" under {args.data_dir}: no {files_like()}")
    )
    return 1 if bad or not count else 0


if __name__ == "__main__":
    sys.exit(main())
