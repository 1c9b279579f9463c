"""Find and read BraTS cases: 2023 names `BraTS-{GLI,MEN,PED,SSA}-NNNNN-NNN-{t1n,t1c,t2w,t2f,seg}.nii.gz` and 2021
names `BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz`, found by recursive search because release folders differ. Every
case is read with nibabel into float32 (X, Y, Z) volumes keyed by the 2023 modality names, keeping the affine and
header of the first modality so predictions can be written back; 2021 label 4 (ET) becomes 3 so that labels are
always 1 NCR, 2 ED, 3 ET and whole tumour = label > 0. `check_case` collects every fault of a case in one pass;
`load_case` raises `BadCaseError` listing them."""

from __future__ import annotations

import dataclasses
import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from sam_jax.data.errors import BadCaseError, CaseFault
from sam_jax.outputs import write_atomic

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
DOMAINS = ("GLI", "MEN", "PED", "SSA")
LABELS = {1: "NCR", 2: "ED", 3: "ET"}
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}  # BraTS sub-regions as label sets, for reports

_NAME_2023 = re.compile(r"^(BraTS-(GLI|MEN|PED|SSA)-\d{5}-\d{3})-(t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$")
_NAME_2021 = re.compile(r"^(BraTS2021_\d{5})_(t1|t1ce|t2|flair|seg)\.nii(\.gz)?$")
_MODALITY_2021 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
_SUFFIX_2021 = {ours: theirs for theirs, ours in _MODALITY_2021.items()}
_AFFINE_TOLERANCE = 1e-3  # mm; headers written by different tools differ in float rounding only


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """Where one case's files are; `images` may lack modalities (reported as faults when the case is read)."""

    case_id: str
    domain: str
    images: dict[str, Path]
    seg: Path | None
    naming: str = "2023"  # or "2021": decides the label set
    duplicates: tuple[Path, ...] = ()  # a second file for an already found modality

    @property
    def patient_id(self) -> str:
        """The subject: 2023 ids end in a 3-digit time point (BraTS-GLI-00000-001 is patient BraTS-GLI-00000)."""
        return self.case_id[:-4] if self.naming == "2023" else self.case_id

    def expected_path(self, modality: str) -> Path:
        """The file a missing modality should have been, for error messages."""
        folder = next(iter(self.images.values()), self.seg).parent
        if self.naming == "2023":
            return folder / f"{self.case_id}-{modality}.nii.gz"
        return folder / f"{self.case_id}_{_SUFFIX_2021[modality]}.nii.gz"


@dataclasses.dataclass
class Case:
    """One case read into memory: float32 (X, Y, Z) images by modality, int16 labels (or None), geometry."""

    files: CaseFiles
    images: dict[str, np.ndarray]
    seg: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header

    @property
    def case_id(self) -> str:
        return self.files.case_id

    @property
    def whole_tumour(self) -> np.ndarray:
        if self.seg is None:
            raise ValueError(f"case {self.case_id} has no segmentation")
        return self.seg > 0


def parse_name(filename: str) -> tuple[str, str | None, str, str] | None:
    """(case_id, domain or None, modality-or-'seg', naming) for a BraTS file name, None for any other file."""
    if m := _NAME_2023.match(filename):
        return m.group(1), m.group(2), m.group(3), "2023"
    if m := _NAME_2021.match(filename):
        return m.group(1), None, _MODALITY_2021[m.group(2)], "2021"
    return None


def find_cases(data_dir: str | Path, domain: str | None = None) -> list[CaseFiles]:
    """All cases under `data_dir`, sorted by id. `domain` keeps only that domain's 2023 cases and labels 2021 cases
    (whose names carry no domain), which otherwise count as GLI."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CaseFault(data_dir, "data directory does not exist")
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    found: dict[str, dict] = {}
    for path in sorted(data_dir.rglob("BraTS*.nii*")):
        parsed = parse_name(path.name)
        if parsed is None or not path.is_file():
            continue
        case_id, name_domain, modality, naming = parsed
        case_domain = name_domain or domain or "GLI"
        if domain is not None and case_domain != domain:
            continue
        entry = found.setdefault(case_id, dict(domain=case_domain, naming=naming, files={}, duplicates=[]))
        if modality in entry["files"]:
            entry["duplicates"].append(path)
        else:
            entry["files"][modality] = path
    cases = []
    for case_id in sorted(found):
        entry = found[case_id]
        files = entry["files"]
        cases.append(
            CaseFiles(
                case_id=case_id,
                domain=entry["domain"],
                naming=entry["naming"],
                images={m: files[m] for m in MODALITIES if m in files},
                seg=files.get("seg"),
                duplicates=tuple(entry["duplicates"]),
            )
        )
    return cases


def _nifti_from_bytes(raw: bytes) -> nib.Nifti1Image:
    """A NIfTI-1 or NIfTI-2 image from a whole file's bytes (told apart by the header size in its first 4 bytes)."""
    for order in ("little", "big"):
        header_size = int.from_bytes(raw[:4], order)
        if header_size in (348, 540):
            return (nib.Nifti1Image if header_size == 348 else nib.Nifti2Image).from_bytes(raw)
    raise ValueError("no NIfTI header (its first 4 bytes are not the header size 348 or 540)")


def _read_volume(path: Path) -> tuple[nib.Nifti1Image | None, np.ndarray | None, CaseFault | None]:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            # Decompressing the whole stream checks its CRC and length; nibabel reads only the bytes it needs and
            # would return flipped bytes inside the stream as wrong voxels.
            raw = gzip.decompress(raw)
        image = _nifti_from_bytes(raw)
        data = np.asarray(image.dataobj)
    except Exception as error:  # nibabel, gzip and zlib raise many types for damaged files; all mean "unreadable"
        return None, None, CaseFault(path, f"unreadable: {type(error).__name__}: {error}")
    if data.ndim != 3:
        return None, None, CaseFault(path, f"expected a 3-D volume, got shape {data.shape}")
    return image, data, None


def _check_labels(case_files: CaseFiles, data: np.ndarray) -> tuple[np.ndarray | None, list[CaseFault]]:
    expected = {0, 1, 2, 3} if case_files.naming == "2023" else {0, 1, 2, 4}
    if data.dtype == np.uint8:  # the usual label file: a histogram finds the labels 10x faster than np.unique
        rounded, found = data, set(np.flatnonzero(np.bincount(data.ravel(), minlength=1)).tolist())
    else:
        if not np.all(np.isfinite(data)):
            return None, [CaseFault(case_files.seg, "segmentation has non-finite values")]
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            return None, [CaseFault(case_files.seg, "segmentation has non-integer values")]
        found = set(np.unique(rounded).astype(int).tolist())
    if unknown := sorted(found - expected):
        return None, [
            CaseFault(case_files.seg, f"unexpected labels {unknown}; expected a subset of {sorted(expected)}")
        ]
    seg = rounded.astype(np.int16)
    if case_files.naming == "2021":
        seg[seg == 4] = 3
    return seg, []


def check_case(case_files: CaseFiles, require_seg: bool = True) -> tuple[Case | None, list[CaseFault]]:
    """Read a case and collect all its faults: missing or duplicate files (the segmentation too, unless
    `require_seg` is off: predicting from clicks needs none), unreadable or corrupt files, shape or affine
    mismatches, non-finite or constant intensities, labels outside the expected set. Returns (case or None, faults).
    An empty segmentation is not a fault (see `empty_segmentation`)."""
    faults = [CaseFault(p, "duplicate file for a modality already found elsewhere") for p in case_files.duplicates]
    faults += [
        CaseFault(case_files.expected_path(m), f"missing modality {m}")
        for m in MODALITIES
        if m not in case_files.images
    ]
    if require_seg and case_files.seg is None:
        faults.append(
            CaseFault(case_files.expected_path("seg"), "missing segmentation (training and scoring need the labels)")
        )
    volumes: dict[str, tuple[Path, nib.Nifti1Image, np.ndarray]] = {}
    named_paths = list(case_files.images.items()) + ([("seg", case_files.seg)] if case_files.seg else [])
    for name, path in named_paths:
        image, data, fault = _read_volume(path)
        if fault:
            faults.append(fault)
        else:
            volumes[name] = (path, image, data)
    if not volumes:
        return None, faults
    ref_name = next(iter(volumes))
    _, ref_image, ref_data = volumes[ref_name]
    for name, (path, image, data) in volumes.items():
        if data.shape != ref_data.shape:
            faults.append(CaseFault(path, f"shape {data.shape} differs from {ref_name}'s {ref_data.shape}"))
        elif not np.allclose(image.affine, ref_image.affine, atol=_AFFINE_TOLERANCE):
            faults.append(CaseFault(path, f"affine differs from {ref_name}'s:\n{image.affine}\nvs\n{ref_image.affine}"))
        if name != "seg" and not np.all(np.isfinite(data)):
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            faults.append(CaseFault(path, f"{bad} non-finite intensity values (NaN or inf)"))
        elif name != "seg" and data.size and data.min() == data.max():
            faults.append(CaseFault(path, f"constant image (every voxel is {data.flat[0]}): no scan in it"))
    seg = None
    if "seg" in volumes:
        seg, label_faults = _check_labels(case_files, volumes["seg"][2])
        faults += label_faults
    if faults:
        return None, faults
    images = {m: volumes[m][2].astype(np.float32, copy=False) for m in MODALITIES}
    return Case(
        files=case_files, images=images, seg=seg, affine=ref_image.affine.copy(), header=ref_image.header.copy()
    ), []


def empty_segmentation(case: Case) -> bool:
    """A segmentation without a tumour voxel. Every BraTS case has a tumour, so this is usually an export fault:
    validation lists it, training warns and keeps the case's slices as tumour-free ones, and evaluation records the
    case as `empty_ground_truth` and leaves it out of the means (a click prompt comes from the tumour, so a prompted
    model is never asked anything there; BraTS would score its empty prediction 1.0)."""
    return case.seg is not None and not case.seg.any()


def load_case(case_files: CaseFiles, require_seg: bool = True) -> Case:
    """Read and validate a case; raises `BadCaseError` naming each faulty file and its fault."""
    case, faults = check_case(case_files, require_seg)
    if faults:
        raise BadCaseError(case_files.case_id, faults)
    return case


def save_prediction(case: Case, volume: np.ndarray, path: str | Path) -> None:
    """Write a (X, Y, Z) label or mask volume in the case's geometry (its affine and header), whole or not at all."""
    volume = np.asarray(volume)
    expected = case.images[MODALITIES[0]].shape
    if volume.shape != expected:
        raise ValueError(f"prediction shape {volume.shape} differs from case {case.case_id}'s {expected}")
    header = case.header.copy()
    header.set_data_dtype(np.uint8)
    raw = nib.Nifti1Image(volume.astype(np.uint8), case.affine, header).to_bytes()
    write_atomic(path, gzip.compress(raw, compresslevel=6) if str(path).endswith(".gz") else raw)
