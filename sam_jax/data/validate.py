"""Check a whole BraTS dataset in one pass and report every fault of every case (missing or duplicate modalities,
unreadable files, shape or affine mismatches, non-finite values, unexpected labels). Exit status 1 if any.

Usage: python -m sam_jax.data.validate DATA_DIR [--domain GLI]"""

from __future__ import annotations

import argparse
import sys

from sam_jax.data.brats import DOMAINS, check_case, find_cases
from sam_jax.data.errors import CaseFault


def validate(data_dir, domain: str | None = None) -> tuple[int, dict[str, list[CaseFault]]]:
    """(number of cases, {case id: faults} for the bad ones)."""
    cases = find_cases(data_dir, domain)
    bad = {}
    for case_files in cases:
        _, faults = check_case(case_files)
        if faults:
            bad[case_files.case_id] = faults
    return len(cases), bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--domain", choices=DOMAINS)
    args = parser.parse_args(argv)
    try:
        count, bad = validate(args.data_dir, args.domain)
    except CaseFault as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for case_id, faults in bad.items():
        print(f"{case_id}:")
        for fault in faults:
            print(f"  {fault.path}: {fault.fault}")
    print(
        f"{count} cases, {count - len(bad)} valid, {len(bad)} with faults"
        + ("" if count else f" (no BraTS files found under {args.data_dir})")
    )
    return 1 if bad or not count else 0


if __name__ == "__main__":
    sys.exit(main())
