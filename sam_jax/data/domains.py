"""The one registry of tumour domains and of the releases whose files we read. Everything that lists domains (case
discovery, validation, the cache, training's `--domain`, evaluation's choices and table columns, the phantom, help
texts) reads it: adding a domain or a release is one entry here.

Inside sam-jax a case always has the BraTS 2023 modalities `t1n, t1c, t2w, t2f` and our labels 1 NCR (necrotic /
non-enhancing core), 2 ED (oedema, SNFH), 3 ET (enhancing tumour) and 4 RC (resection cavity, BraTS 2024
post-treatment glioma). RC is not tumour: it is in no region, so never in the whole tumour nor a click target.
A release maps its own modality names and label values to these."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
LABELS = {1: "NCR", 2: "ED", 3: "ET", 4: "RC"}
RESECTION_CAVITY = 4
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}  # BraTS sub-regions as label sets; RC belongs to none
_WHOLE_TUMOUR = np.isin(np.arange(256), REGIONS["WT"])  # label → in the whole tumour, for uint8 lookups


def whole_tumour(labels: np.ndarray) -> np.ndarray:
    """The whole-tumour mask of a label volume in our labels (RC and background out)."""
    labels = np.asarray(labels)
    if labels.dtype == np.uint8:
        return _WHOLE_TUMOUR[labels]
    return np.isin(labels, REGIONS["WT"])


@dataclasses.dataclass(frozen=True)
class Domain:
    code: str  # as BraTS 2023 file names spell it
    name: str
    column: str  # its column in evaluation tables (the paper's VD1, VD2, D3, D4; MET is ours)
    phantom: bool  # whether `sam_jax.data.phantom` can draw it


DOMAINS: dict[str, Domain] = {
    d.code: d
    for d in (
        Domain("GLI", "adult glioma", "VD1", phantom=True),
        Domain("MEN", "meningioma", "VD2", phantom=True),
        Domain("PED", "paediatric tumours", "D3", phantom=True),
        Domain("SSA", "glioma, sub-Saharan Africa", "D4", phantom=True),
        Domain("MET", "brain metastases", "MET", phantom=False),
    )
}
PAPER_DOMAINS = ("GLI", "MEN", "PED", "SSA")  # the four the paper trains and scores on, in its column order
COLUMNS = {code: d.column for code, d in DOMAINS.items()}
PAPER_COLUMNS = tuple(COLUMNS[d] for d in PAPER_DOMAINS)


def domain_help() -> str:
    return ", ".join(f"{d.code} ({d.name})" for d in DOMAINS.values())


_NII = r"\.nii(?:\.gz)?"
_BRATS_2018_TO_2021 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
_BRATS_2023 = {m: m for m in (*MODALITIES, "seg")}
_ET_IS_4 = {0: 0, 1: 1, 2: 2, 4: 3}
_ET_IS_3 = {0: 0, 1: 1, 2: 2, 3: 3}


@dataclasses.dataclass(frozen=True, eq=False)  # an entry is itself: compared and hashed by identity
class Release:
    """How one release names and labels its files. `pattern` is matched against a file's `folder/name` and has the
    groups `case` (the case id), `modality` (the release's name for it; absent for a 4-D file) and, optionally,
    `patient` (the subject, when a case id also carries a time point) and `domain`."""

    name: str
    pattern: re.Pattern
    modalities: dict[str, str]  # the release's modality names → ours, 'seg' for the segmentation
    labels: dict[int, int]  # the release's label values → ours
    domain: str | None = None  # the domain of every case, when the names do not say it
    example: str = ""  # one file as it ships: for the README table and for "expected a file like" messages
    separator: str = "_"  # between the case id and the modality
    channels: tuple[str, ...] = ()  # a 4-D image's channels in order (our names): one file holds every modality
    misnamed: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # 'folder/name' → (case, ours)
    note: str = ""

    def expected_file(self, folder, case_id: str, modality: str):
        """The path a missing file of a case in `folder` should have had, for error messages."""
        if self.channels:  # imagesTr/<case>.nii.gz and labelsTr/<case>.nii.gz side by side
            return folder.parent / ("labelsTr" if modality == "seg" else "imagesTr") / f"{case_id}.nii.gz"
        theirs = next(t for t, ours in self.modalities.items() if ours == modality)
        return folder / f"{case_id}{self.separator}{theirs}.nii.gz"


def _per_modality_files(name: str, case: str, modalities: dict[str, str], labels: dict[int, int], **kwargs):
    """A release with one file per modality named `<case><separator><modality>.nii[.gz]`."""
    separator = kwargs.get("separator", "_")
    names = "|".join(sorted(modalities, key=len, reverse=True))
    pattern = re.compile(rf"[^/]*/(?P<case>{case}){separator}(?P<modality>{names}){_NII}")
    return Release(name, pattern, modalities, labels, **kwargs)


# First match wins: the 2024 post-treatment names are a special case of the 2023 ones.
RELEASES: tuple[Release, ...] = (
    _per_modality_files(
        "BraTS 2024 post-treatment glioma",
        r"(?P<patient>BraTS-(?P<domain>GLI)-\d{5})-1\d\d",
        _BRATS_2023,
        {0: 0, 1: 1, 2: 2, 3: 3, 4: RESECTION_CAVITY},
        separator="-",
        example="BraTS-GLI-02073-100-t1c.nii.gz",
        note="post-treatment time points are numbered from 100; label 4, the resection cavity, is read but is not "
        "tumour (in no region, never clicked)",
    ),
    _per_modality_files(
        "BraTS 2023",
        rf"(?P<patient>BraTS-(?P<domain>{'|'.join(DOMAINS)})-\d{{5}})-\d{{3}}",
        _BRATS_2023,
        _ET_IS_3,
        separator="-",
        example="BraTS-GLI-00000-000-t1c.nii.gz",
    ),
    _per_modality_files(
        "BraTS 2021",
        r"BraTS2021_\d{5}",
        _BRATS_2018_TO_2021,
        _ET_IS_4,
        domain="GLI",
        example="BraTS2021_00000_t1ce.nii.gz",
    ),
    _per_modality_files(
        "BraTS 2020",
        r"BraTS20_(?:Training|Validation)_\d{3}",
        _BRATS_2018_TO_2021,
        _ET_IS_4,
        domain="GLI",
        example="BraTS20_Training_001_t1ce.nii",
        misnamed={"BraTS20_Training_355/W39_1998.09.19_Segm.nii": ("BraTS20_Training_355", "seg")},
        note="case 355's segmentation ships misnamed W39_1998.09.19_Segm.nii and is read as its segmentation",
    ),
    _per_modality_files(
        "BraTS 2019",
        r"(?P<patient>BraTS19_\w+?)_\d+",
        _BRATS_2018_TO_2021,
        _ET_IS_4,
        domain="GLI",
        example="BraTS19_CBICA_AAB_1_t1ce.nii.gz",
    ),
    _per_modality_files(
        "BraTS 2018",
        r"(?P<patient>Brats18_\w+?)_\d+",
        _BRATS_2018_TO_2021,
        _ET_IS_4,
        domain="GLI",
        example="Brats18_2013_11_1_t1ce.nii.gz",
    ),
    Release(
        "MSD Task01_BrainTumour",
        re.compile(rf"(?P<folder>imagesTr|imagesTs|labelsTr)/(?P<case>BRATS_\d{{3}}){_NII}"),
        {"seg": "seg"},
        {0: 0, 1: 2, 2: 1, 3: 3},  # 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour
        domain="GLI",
        example="imagesTr/BRATS_001.nii.gz",
        channels=("t2f", "t1n", "t1c", "t2w"),  # FLAIR, T1w, T1gd, T2w
        note="one 4-D image per case, labels in labelsTr/; the archive's macOS `._` files are not cases",
    ),
)


@dataclasses.dataclass(frozen=True)
class NamedFile:
    """What a file's name says: its case, our modality name ('seg', or 'image' for a 4-D file), its release."""

    case_id: str
    patient_id: str
    domain: str
    modality: str
    release: Release


def parse_path(path) -> NamedFile | None:
    """What the registry makes of a file (by its folder and name), None for a file no release names."""
    located = f"{path.parent.name}/{path.name}"
    for release in RELEASES:
        if located in release.misnamed:
            case_id, modality = release.misnamed[located]
            return NamedFile(case_id, case_id, release.domain, modality, release)
        if m := release.pattern.fullmatch(located):
            groups = m.groupdict()
            if release.channels:
                modality = "seg" if groups["folder"].startswith("labels") else "image"
            else:
                modality = release.modalities[groups["modality"]]
            domain = groups.get("domain") or release.domain
            return NamedFile(groups["case"], groups.get("patient") or groups["case"], domain, modality, release)
    return None


def files_like() -> str:
    """What case files look like, for "no cases found" messages."""
    return "files named as a release names them, e.g. " + ", ".join(r.example for r in RELEASES)
