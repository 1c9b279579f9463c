"""Find and read the cases of every release in the registry (`sam_jax.data.domains`), found by recursive search
because release folders differ. A case is read with nibabel into float32 (X, Y, Z) volumes keyed by our modality names
and reoriented to LPS, BraTS's own orientation, so that the model always sees the same anatomy the same way round;
its labels are mapped to ours (whole tumour = NCR, ED and ET; a resection cavity is not tumour). The file's affine,
header and orientation are kept so that predictions are written back on the file's own grid. `check_case` collects
every fault of a case in one pass; `load_case` raises `BadCaseError` listing them."""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.orientations import io_orientation

from sam_jax.data.domains import DOMAINS, MODALITIES, Release, parse_path, whole_tumour
from sam_jax.data.errors import BadCaseError, CaseFault
from sam_jax.data.nifti_file import RefusedFile, read_nifti
from sam_jax.outputs import write_atomic

LPS = orientations.axcodes2ornt(("L", "P", "S"))
_AFFINE_TOLERANCE = 1e-3  # mm; headers written by different tools differ in float rounding only


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """Where one case's files are; `images` may lack modalities (reported as faults when the case is read). A 4-D
    release (MSD) has one file for every modality."""

    case_id: str
    domain: str
    images: dict[str, Path]
    seg: Path | None
    release: Release
    patient_id: str  # the subject: the case id without its time point, where it has one
    duplicates: tuple[Path, ...] = ()  # a second file for an already found modality
    other_releases: tuple[Path, ...] = ()  # files in the case's folder named as another release names them

    def expected_path(self, modality: str) -> Path:
        """The file a missing modality should have been, for error messages."""
        folder = next(iter(self.images.values()), self.seg).parent
        return self.release.expected_file(folder, self.case_id, modality)


@dataclasses.dataclass
class Case:
    """One case read into memory: float32 (X, Y, Z) images by modality and int16 labels (ours, or None), all in LPS;
    the file's affine and header, and `orientation`, the nibabel transform from the file's voxel axes to LPS."""

    files: CaseFiles
    images: dict[str, np.ndarray]
    seg: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header
    orientation: np.ndarray

    @property
    def case_id(self) -> str:
        return self.files.case_id

    @property
    def whole_tumour(self) -> np.ndarray:
        if self.seg is None:
            raise ValueError(f"case {self.case_id} has no segmentation")
        return whole_tumour(self.seg)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the LPS axes of `images`."""
        spacing = [0.0] * 3
        for file_axis, (axis, _) in enumerate(self.orientation):
            spacing[int(axis)] = float(self.header.get_zooms()[file_axis])
        return tuple(spacing)

    def to_file_grid(self, volume: np.ndarray) -> np.ndarray:
        """An (X, Y, Z) volume on `images`' LPS grid → the same on the file's voxel grid."""
        return orientations.apply_orientation(volume, orientations.ornt_transform(LPS, io_orientation(self.affine)))

    def from_file_grid(self, volume: np.ndarray) -> np.ndarray:
        """An (X, Y, Z) volume on the file's voxel grid (a saved prediction) → the LPS grid of `images`."""
        return orientations.apply_orientation(volume, self.orientation)

    def voxel_from_file(self, xyz) -> tuple[int, int, int]:
        """A voxel index of the file (what ITK-SNAP or 3D Slicer show) → the same voxel's index in `images`."""
        return _apply(np.linalg.inv(self._lps_to_file()), xyz)

    def voxel_to_file(self, xyz) -> tuple[int, int, int]:
        """A voxel index in `images` → the same voxel's index in the file."""
        return _apply(self._lps_to_file(), xyz)

    def _lps_to_file(self) -> np.ndarray:
        """The affine from voxel indices in `images` to voxel indices in the file."""
        shape = self.images[MODALITIES[0]].shape
        file_shape = [0] * 3
        for file_axis, (axis, _) in enumerate(self.orientation):
            file_shape[file_axis] = shape[int(axis)]
        return orientations.inv_ornt_aff(self.orientation, file_shape)


def _apply(affine: np.ndarray, xyz) -> tuple[int, int, int]:
    return tuple(int(round(v)) for v in (affine @ [*xyz, 1])[:3])


def _nifti_files(root: Path) -> list[Path]:
    """Every NIfTI file under `root`, sorted, following linked folders (a subset of a dataset is often a folder of
    links to case folders), each real folder once."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        found += [Path(folder, f) for f in files if f.endswith((".nii", ".nii.gz")) and Path(folder, f).is_file()]
    return sorted(found)


def find_cases(data_dir: str | Path, domain: str | None = None) -> list[CaseFiles]:
    """All cases under `data_dir` of every release in the registry, sorted by id; `domain` keeps only its cases."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CaseFault(data_dir, "data directory does not exist")
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {list(DOMAINS)}")
    found: dict[str, dict] = {}
    releases_in_folder: dict[Path, dict[str, list[Path]]] = {}
    for path in _nifti_files(data_dir):
        named = parse_path(path)
        if named is None:
            continue
        releases_in_folder.setdefault(path.parent, {}).setdefault(named.release.name, []).append(path)
        if domain is not None and named.domain != domain:
            continue
        entry = found.setdefault(named.case_id, dict(named=named, files={}, duplicates=[], folders=set()))
        entry["folders"].add(path.parent)
        if named.modality in entry["files"]:
            entry["duplicates"].append(path)
        else:
            entry["files"][named.modality] = path
    cases = []
    for case_id in sorted(found):
        entry = found[case_id]
        named, files = entry["named"], entry["files"]
        images = {m: files["image"] for m in MODALITIES} if "image" in files else {}
        images.update({m: files[m] for m in MODALITIES if m in files})
        others = [
            p
            for folder in entry["folders"]
            for release, paths in releases_in_folder[folder].items()
            if release != named.release.name
            for p in paths
        ]
        cases.append(
            CaseFiles(
                case_id=case_id,
                domain=named.domain,
                images=images,
                seg=files.get("seg"),
                release=named.release,
                patient_id=named.patient_id,
                duplicates=tuple(entry["duplicates"]),
                other_releases=tuple(sorted(others)),
            )
        )
    return cases


def _read_volume(path: Path, release: Release, is_seg: bool):
    """(image, data, None) or (None, None, fault); a 4-D release's image must hold its channels."""
    try:
        image = read_nifti(path)
        data = np.asarray(image.dataobj)
    except RefusedFile as error:
        return None, None, CaseFault(path, str(error))
    except Exception as error:  # nibabel, gzip and zlib raise many types for damaged files; all mean "unreadable"
        return None, None, CaseFault(path, f"unreadable: {type(error).__name__}: {error}")
    if release.channels and not is_seg:
        if data.ndim != 4 or data.shape[3] != len(release.channels):
            channels = ", ".join(release.channels)
            return (
                None,
                None,
                CaseFault(
                    path,
                    f"expected a 4-D image of {len(release.channels)} channels ({channels}) as {release.name} "
                    f"ships them, got shape {data.shape}",
                ),
            )
    elif data.ndim != 3:
        return None, None, CaseFault(path, f"expected a 3-D volume, got shape {data.shape}")
    return image, data, None


def _check_labels(case_files: CaseFiles, data: np.ndarray) -> tuple[np.ndarray | None, list[CaseFault]]:
    """Our labels (int16) from the release's, or the fault."""
    release = case_files.release
    if data.dtype == np.uint8:  # the usual label file: a histogram finds the labels 10x faster than np.unique
        rounded, found = data, set(np.flatnonzero(np.bincount(data.ravel(), minlength=1)).tolist())
    else:
        if not np.all(np.isfinite(data)):
            return None, [CaseFault(case_files.seg, "segmentation has non-finite values")]
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            return None, [CaseFault(case_files.seg, "segmentation has non-integer values")]
        found = set(np.unique(rounded).astype(int).tolist())
    if unknown := sorted(found - set(release.labels)):
        return None, [
            CaseFault(
                case_files.seg,
                f"unexpected labels {unknown}: {release.name} (the release its file names say) labels "
                f"{sorted(release.labels)}",
            )
        ]
    ours = np.zeros(max(release.labels) + 1, np.int16)
    for theirs, label in release.labels.items():
        ours[theirs] = label
    return ours[rounded.astype(np.intp, copy=False)], []


def _file_faults(case_files: CaseFiles, require_seg: bool) -> list[CaseFault]:
    """Faults of the file set itself: duplicates, another release's files beside it, missing files."""
    faults = [CaseFault(p, "duplicate file for a modality already found elsewhere") for p in case_files.duplicates]
    faults += [
        CaseFault(
            p,
            f"named as another release names files, beside {case_files.release.name} files of case "
            f"{case_files.case_id}: keep one release's files per case folder",
        )
        for p in case_files.other_releases
    ]
    faults += [
        CaseFault(case_files.expected_path(m), f"missing modality {m}")
        for m in MODALITIES
        if m not in case_files.images
    ]
    if require_seg and case_files.seg is None:
        faults.append(
            CaseFault(case_files.expected_path("seg"), "missing segmentation (training and scoring need the labels)")
        )
    return faults


def _read_volumes(
    case_files: CaseFiles, faults: list[CaseFault]
) -> dict[str, tuple[Path, nib.Nifti1Image, np.ndarray]]:
    """Each modality's (and the segmentation's) (path, image, data); a 4-D file is read once and split."""
    named_paths = list(case_files.images.items()) + ([("seg", case_files.seg)] if case_files.seg else [])
    read = {}
    for path in dict.fromkeys(p for _, p in named_paths):
        image, data, fault = _read_volume(path, case_files.release, is_seg=path == case_files.seg)
        if fault:
            faults.append(fault)
        else:
            read[path] = (image, data)
    volumes = {}
    for name, path in named_paths:
        if path in read:
            image, data = read[path]
            if data.ndim == 4:
                data = data[..., case_files.release.channels.index(name)]
            volumes[name] = (path, image, data)
    return volumes


def _geometry_faults(volumes: dict) -> list[CaseFault]:
    """Every file against the first: shape, orientation, affine; intensities finite and not constant."""
    faults = []
    ref_name = next(iter(volumes))
    _, ref_image, ref_data = volumes[ref_name]
    ref_codes = "".join(nib.aff2axcodes(ref_image.affine))
    for name, (path, image, data) in volumes.items():
        codes = "".join(nib.aff2axcodes(image.affine))
        if data.shape != ref_data.shape:
            faults.append(CaseFault(path, f"shape {data.shape} differs from {ref_name}'s {ref_data.shape}"))
        elif codes != ref_codes:
            faults.append(
                CaseFault(
                    path,
                    f"orientation {codes} differs from {ref_name}'s {ref_codes}: a case's files must "
                    "share one voxel grid",
                )
            )
        elif not np.allclose(image.affine, ref_image.affine, atol=_AFFINE_TOLERANCE):
            faults.append(CaseFault(path, f"affine differs from {ref_name}'s:\n{image.affine}\nvs\n{ref_image.affine}"))
        if name != "seg" and not np.all(np.isfinite(data)):
            bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            faults.append(CaseFault(path, f"{bad} non-finite intensity values (NaN or inf)"))
        elif name != "seg" and data.size and data.min() == data.max():
            faults.append(CaseFault(path, f"constant image (every voxel is {data.flat[0]}): no scan in it"))
    return faults


def check_case(case_files: CaseFiles, require_seg: bool = True) -> tuple[Case | None, list[CaseFault]]:
    """Read a case and collect all its faults: missing or duplicate files (the segmentation too, unless
    `require_seg` is off: predicting from clicks needs none), files of two releases mixed, unreadable or corrupt
    files, a 4-D file without its channels, shape, orientation or affine mismatches, non-finite or constant
    intensities, labels outside the release's set. Returns (case or None, faults). An empty segmentation is not a
    fault (see `empty_segmentation`)."""
    faults = _file_faults(case_files, require_seg)
    volumes = _read_volumes(case_files, faults)
    if not volumes:
        return None, faults
    faults += _geometry_faults(volumes)
    seg = None
    if "seg" in volumes:
        seg, label_faults = _check_labels(case_files, volumes["seg"][2])
        faults += label_faults
    if faults:
        return None, faults
    _, ref_image, _ = next(iter(volumes.values()))
    to_lps = orientations.ornt_transform(io_orientation(ref_image.affine), LPS)

    def lps(data: np.ndarray, dtype) -> np.ndarray:
        return np.ascontiguousarray(orientations.apply_orientation(data, to_lps), dtype=dtype)

    header = ref_image.header.copy()
    if len(header.get_data_shape()) > 3:  # a 4-D release: the geometry of one of its volumes
        header.set_data_shape(header.get_data_shape()[:3])
    return Case(
        files=case_files,
        images={m: lps(volumes[m][2], np.float32) for m in MODALITIES},
        seg=None if seg is None else lps(seg, np.int16),
        affine=ref_image.affine.copy(),
        header=header,
        orientation=to_lps,
    ), []


def empty_segmentation(case: Case) -> bool:
    """A segmentation without a tumour voxel. Every BraTS case has a tumour, so this is usually an export fault:
    validation lists it, training warns and keeps the case's slices as tumour-free ones, and evaluation records the
    case as `empty_ground_truth` and leaves it out of the means (a click prompt comes from the tumour, so a prompted
    model is never asked anything there; BraTS would score its empty prediction 1.0)."""
    return case.seg is not None and not case.whole_tumour.any()


def load_case(case_files: CaseFiles, require_seg: bool = True) -> Case:
    """Read and validate a case; raises `BadCaseError` naming each faulty file and its fault."""
    case, faults = check_case(case_files, require_seg)
    if faults:
        raise BadCaseError(case_files.case_id, faults)
    return case


def save_prediction(case: Case, volume: np.ndarray, path: str | Path) -> None:
    """Write a (X, Y, Z) label or mask volume on `images`' grid in the case's file geometry (its voxel grid, affine
    and header), whole or not at all."""
    volume = np.asarray(volume)
    expected = case.images[MODALITIES[0]].shape
    if volume.shape != expected:
        raise ValueError(f"prediction shape {volume.shape} differs from case {case.case_id}'s {expected}")
    header = case.header.copy()
    header.set_data_dtype(np.uint8)
    on_file_grid = np.ascontiguousarray(case.to_file_grid(volume.astype(np.uint8)))
    raw = nib.Nifti1Image(on_file_grid, case.affine, header).to_bytes()
    write_atomic(path, gzip.compress(raw, compresslevel=6) if str(path).endswith(".gz") else raw)
