"""A BraTS-2023-layout phantom so every part of the project runs without the real data. Anatomy comes from nilearn's
bundled MNI152 2009a T1/GM/WM maps (read with nibabel; CSF = brain - GM - WM), padded to 240 x 240 x 155 at 1 mm;
four contrasts are tissue mixtures whose intensities follow from published 3 T relaxation times (T1, T2, proton
density) through each sequence's signal equation: T1-weighted spin echo, the same after gadolinium, T2-weighted spin
echo, FLAIR with CSF nulled (docs/phantom.md). Each case gets a tumour with labels 1 NCR, 2 ED, 3 ET nested as
necrosis inside an enhancing rim inside oedema, whose visibility differs by modality as in real scans (oedema bright
on T2w/FLAIR and dark on T1, the rim enhancing on T1Gd), and the domain's traits: GLI a hemispheric glioma in white
matter; MEN an extra-axial, well circumscribed, strongly enhancing mass at the brain's edge; PED a midline pontine
tumour with weak enhancement; SSA a glioma scanned worse (lower SNR, blur, bias field, thick slices). Cases are
deterministic given (seed, domain, index).

Usage: python -m sam_jax.data.phantom --out_dir DIR --cases_per_domain N --seed S [--domains GLI,MEN,PED,SSA]"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

from sam_jax.data.brats import LPS
from sam_jax.data.domains import DOMAINS, MODALITIES

PHANTOM_DOMAINS = tuple(code for code, d in DOMAINS.items() if d.phantom)

SHAPE = (240, 240, 155)
_MNI_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

# Intensities come from tissue relaxation parameters at 3 T through each sequence's signal equation; the parameters,
# their sources and ranges, and the sequence timings are in docs/phantom.md.


@dataclass(frozen=True)
class Tissue:
    """Relaxation parameters at 3 T: T1 and T2 in ms, proton density as water content relative to pure water, and
    `gd_space`, the fraction of the tissue volume gadolinium reaches after injection (0 behind an intact blood-brain
    barrier)."""

    t1: float
    t2: float
    pd: float
    gd_space: float = 0.0


@dataclass(frozen=True)
class Sequence:
    """A spin-echo-type acquisition: TR, TE, optional inversion time TI (ms) and whether gadolinium was given."""

    tr: float
    te: float
    ti: float | None = None
    contrast: bool = False


TISSUES = {  # normal brain at 3 T: T1, T2 Wansapura et al. 1999 (CSF: Lu et al. 2005, Piechnik et al. 2009);
    # water content Ernst et al. 1993
    "wm": Tissue(t1=832, t2=79.2, pd=0.65),
    "gm": Tissue(t1=1331, t2=110, pd=0.78),
    "csf": Tissue(t1=3817, t2=503, pd=0.97),
}
TUMOURS = {  # by BraTS label; approximate values (see docs/phantom.md: no single reference tabulates all three)
    1: Tissue(t1=2500, t2=250, pd=0.90),  # necrosis: fluid-like, no enhancement
    2: Tissue(t1=1500, t2=150, pd=0.80),  # oedema: more water than white matter, blood-brain barrier intact
    3: Tissue(t1=1650, t2=130, pd=0.80, gd_space=0.3),  # enhancing rim: cellular tumour, leaky vessels
}
# Domain-specific tumour tissues replacing TUMOURS for one label (hand-picked to give each domain its documented
# traits; approximate, not literature values).
_DOMAIN_TUMOURS = {
    "MEN": {3: Tissue(t1=1400, t2=110, pd=0.80, gd_space=0.5)},  # meningioma: near grey matter, avid enhancement
    "PED": {2: Tissue(t1=1800, t2=170, pd=0.85), 3: Tissue(t1=1650, t2=130, pd=0.80, gd_space=0.05)},  # weak
}

R1_GD = 4.0e-3  # gadolinium relaxivity r1, L/(mmol ms) (≈ 4 L/(mmol s) at 3 T in plasma, Rohrer et al. 2005)


def plasma_gadolinium(minutes: float = 5.0, dose: float = 0.1) -> float:
    """Plasma gadolinium (mmol/L) `minutes` after a bolus of `dose` mmol/kg: the biexponential of Weinmann et al.
    (1984) with the constants used by Tofts & Kermode (1991)."""
    return dose * (3.99 * np.exp(-0.144 * minutes) + 4.78 * np.exp(-0.0111 * minutes))


def null_inversion_time(t1: float, tr: float) -> float:
    """TI (ms) at which |1 - 2 exp(-TI/T1) + exp(-TR/T1)| vanishes: the FLAIR inversion time that nulls T1."""
    return float(t1 * np.log(2 / (1 + np.exp(-tr / t1))))


SEQUENCES = {  # typical clinical 2-D sequences at 3 T, in MODALITIES order
    "t1n": Sequence(tr=500, te=10),  # T1-weighted spin echo
    "t1c": Sequence(tr=500, te=10, contrast=True),  # the same, ~5 min after 0.1 mmol/kg gadolinium
    "t2w": Sequence(tr=5000, te=100),  # T2-weighted (turbo) spin echo
    "t2f": Sequence(tr=9000, te=100, ti=null_inversion_time(TISSUES["csf"].t1, 9000)),  # FLAIR nulling CSF
}


def signal(tissue: Tissue, modality: str) -> float:
    """The tissue's signal (fraction of fully relaxed pure water) on `modality`: spin echo PD (1 - e^-TR/T1) e^-TE/T2;
    inversion recovery PD |1 - 2 e^-TI/T1 + e^-TR/T1| e^-TE/T2; with contrast 1/T1 gains r1 * C, C = gd_space times
    the plasma concentration."""
    seq = SEQUENCES[modality]
    r1 = 1 / tissue.t1 + (R1_GD * tissue.gd_space * plasma_gadolinium() if seq.contrast else 0.0)
    if seq.ti is None:
        longitudinal = 1 - np.exp(-seq.tr * r1)
    else:
        longitudinal = abs(1 - 2 * np.exp(-seq.ti * r1) + np.exp(-seq.tr * r1))
    return float(tissue.pd * longitudinal * np.exp(-seq.te / tissue.t2))


_SCALE = 1000  # signal units per unit of signal(): keeps the int16 volumes in the range the old phantom used


def _contrast(tissue: Tissue) -> tuple[float, ...]:
    return tuple(_SCALE * signal(tissue, m) for m in MODALITIES)


# Mean intensity per tissue and per tumour label, in MODALITIES order (t1n, t1c, t2w, t2f).
TISSUE_CONTRAST = {name: _contrast(t) for name, t in TISSUES.items()}
TUMOUR_CONTRAST = {label: _contrast(t) for label, t in TUMOURS.items()}
_DOMAIN_CONTRAST = {d: {label: _contrast(t) for label, t in over.items()} for d, over in _DOMAIN_TUMOURS.items()}
_NOISE = {"GLI": 0.02, "MEN": 0.02, "PED": 0.025, "SSA": 0.06}  # std relative to each modality's WM intensity


def _nilearn_data_dir() -> Path:
    # find_spec locates the installed package without importing nilearn (whose import is slow and heavy).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the phantom needs nilearn's bundled MNI152 maps: pip install nilearn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def anatomy() -> dict[str, np.ndarray]:
    """MNI152 tissue fractions ('wm', 'gm', 'csf' float32 in [0, 1]) and 'brain' (bool) on the BraTS grid, plus the
    grid's 'affine' (the MNI affine shifted by the padding)."""
    folder = _nilearn_data_dir()
    maps = {name: nib.load(folder / _MNI_FILE.format(name)) for name in ("t1", "gm", "wm")}
    brain_z = np.flatnonzero(np.asarray(maps["t1"].dataobj).any(axis=(0, 1)))
    z0 = int(brain_z[0])
    pad = [(SHAPE[a] - maps["t1"].shape[a]) // 2 for a in range(2)]

    def place(name: str) -> np.ndarray:
        canvas = np.zeros(SHAPE, np.float32)
        data = np.asarray(maps[name].dataobj)[:, :, z0 : z0 + SHAPE[2]]
        canvas[pad[0] : pad[0] + data.shape[0], pad[1] : pad[1] + data.shape[1], : data.shape[2]] = data
        return canvas

    brain = place("t1") > 0
    wm = place("wm") / 255 * brain
    gm = place("gm") / 255 * brain
    total = np.maximum(wm + gm, 1)  # the two maps overlap slightly at some boundaries
    wm, gm = wm / total, gm / total
    csf = np.clip(brain - wm - gm, 0, 1).astype(np.float32)
    affine = maps["t1"].affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([pad[0], pad[1], -z0])
    return dict(wm=wm, gm=gm, csf=csf, brain=brain, affine=affine)


def _smooth_noise(shape, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-6)


def _tumour_centre(domain: str, brain: np.ndarray, wm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    midline = SHAPE[0] / 2
    xs = np.arange(SHAPE[0])[:, None, None]
    zs = np.arange(SHAPE[2])[None, None, :]
    if domain == "MEN":  # on the brain's outer surface, upper half of the head
        surface = brain & ~ndimage.binary_erosion(brain, iterations=2) & (zs > 75)
        candidates = np.argwhere(surface)
    elif domain == "PED":  # the pons: midline, posterior fossa (MNI ~ (0, -25, -35) mm)
        return np.array([midline - 1, 112, 37]) + rng.integers(-3, 4, size=3)
    else:  # a hemispheric glioma centred in deep white matter
        candidates = np.argwhere((wm > 0.9) & (np.abs(xs - midline) > 22) & (zs > 45) & (zs < 120))
    return candidates[rng.integers(len(candidates))]


def _tumour_labels(domain: str, anat: dict, rng: np.random.Generator) -> np.ndarray:
    """An int16 (X, Y, Z) label volume holding one nested tumour."""
    centre = _tumour_centre(domain, anat["brain"], anat["wm"], rng).astype(int)
    radius = {"GLI": 26, "SSA": 26, "MEN": 17, "PED": 18}[domain] * rng.uniform(0.75, 1.2)
    axes = radius * rng.uniform(0.8, 1.2, size=3)
    half = int(np.ceil(axes.max() * 1.6)) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, SHAPE)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)], indexing="ij", sparse=True)
    r = np.sqrt(sum((g / a) ** 2 for g, a in zip(grid, axes))).astype(np.float32)
    roughness = {"MEN": 0.06, "PED": 0.12}.get(domain, 0.2)
    r *= 1 + roughness * _smooth_noise(r.shape, rng, sigma=5)
    brain = anat["brain"][box]
    local = np.zeros(r.shape, np.int16)
    if domain == "MEN":
        local[(r < 1.3) & brain] = 2  # thin peritumoral oedema, inside the brain only
        local[r < 1] = 3  # the mass itself may sit outside the brain mask (extra-axial)
    else:
        core = rng.uniform(0.45, 0.6)
        local[(r < 1) & brain] = 2
        if domain == "PED":  # enhancement only on part of the rim
            direction = rng.standard_normal(3)
            facing = sum(g * d for g, d in zip(grid, direction)) > 0
            local[(r < core) & facing & brain] = 3
        else:
            local[(r < core) & brain] = 3
        local[(r < core * rng.uniform(0.5, 0.7)) & brain] = 1
    # One connected tumour, as BraTS cases nearly always are: the noisy edge and the brain mask's holes would
    # otherwise leave specks that count as extra lesions in lesion-wise metrics.
    components, count = ndimage.label(local > 0, structure=np.ones((3, 3, 3)))
    if count > 1:
        largest = 1 + np.argmax(ndimage.sum_labels(np.ones_like(components), components, range(1, count + 1)))
        local[components != largest] = 0
    labels = np.zeros(SHAPE, np.int16)
    labels[box] = local
    return labels


def _bias_field(rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field exp(quadratic polynomial), ~ +-strength across the head."""
    coords = [np.linspace(-1, 1, n, dtype=np.float32) for n in SHAPE]
    grid = np.meshgrid(*coords, indexing="ij", sparse=True)
    linear, square = rng.uniform(-1, 1, size=3), rng.uniform(-0.5, 0.5, size=3)
    log_field = sum(a * g + b * g * g for a, b, g in zip(linear, square, grid))
    return np.exp(strength * log_field / 1.5).astype(np.float32)


def _thick_slices(volume: np.ndarray, thickness: int) -> np.ndarray:
    """Average blocks of `thickness` axial slices and repeat them: a thick acquisition resampled to 1 mm."""
    z = volume.shape[2] // thickness * thickness
    blocks = volume[:, :, :z].reshape(volume.shape[0], volume.shape[1], -1, thickness).mean(axis=3)
    out = volume.copy()
    out[:, :, :z] = np.repeat(blocks, thickness, axis=2)
    return out


def make_case(domain: str, index: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({modality: int16 volume}, uint8 labels, affine) for phantom case `index` of `domain`."""
    check_domains([domain])
    rng = np.random.default_rng([seed, list(DOMAINS).index(domain), index])
    anat = anatomy()
    labels = _tumour_labels(domain, anat, rng)
    tumour = labels > 0
    body = anat["brain"] | tumour
    bbox = ndimage.find_objects(body.astype(np.int8))[0]
    labels_box, body_box = labels[bbox], body[bbox]
    # Partial-volume weights: tissue fractions fade where the tumour's smoothed label maps take over.
    tumour_weight = {
        label: ndimage.gaussian_filter((labels_box == label).astype(np.float32), 0.7) for label in TUMOUR_CONTRAST
    }
    remaining = np.clip(1 - sum(tumour_weight.values()), 0, 1)
    texture = 1 + 0.08 * _smooth_noise(labels_box.shape, rng, sigma=2)
    contrast = {**TUMOUR_CONTRAST, **_DOMAIN_CONTRAST.get(domain, {})}
    bias = _bias_field(rng, 0.3)[bbox] if domain == "SSA" else None
    images = {}
    for m, modality in enumerate(MODALITIES):
        volume = sum(anat[t][bbox] * TISSUE_CONTRAST[t][m] for t in TISSUE_CONTRAST) * remaining
        volume += sum(w * contrast[label][m] for label, w in tumour_weight.items()) * texture
        if domain == "SSA":
            volume = _thick_slices(ndimage.gaussian_filter(volume * bias, 1.2), thickness=4)
        noise_std = _NOISE[domain] * TISSUE_CONTRAST["wm"][m]
        volume[body_box] += noise_std * rng.standard_normal(int(body_box.sum()), dtype=np.float32)
        gain = rng.uniform(2.5, 5.0)  # scanners differ in scale, which is why the cache normalises
        full = np.zeros(SHAPE, np.int16)
        full[bbox] = np.where(body_box, np.clip(volume * gain, 0, 32767), 0).astype(np.int16)
        images[modality] = full
    stored = {m: stored_grid(v) for m, v in images.items()}
    return stored, stored_grid(labels.astype(np.uint8)), anat["affine"] @ orientations.inv_ornt_aff(_to_lps(), SHAPE)


def _to_lps() -> np.ndarray:
    return orientations.ornt_transform(orientations.io_orientation(anatomy()["affine"]), LPS)


def stored_grid(volume: np.ndarray) -> np.ndarray:
    """A volume on the MNI grid the phantom is drawn on (RAS) → the grid its cases are stored on: LPS, as BraTS."""
    return np.ascontiguousarray(orientations.apply_orientation(volume, _to_lps()))


def case_id(domain: str, index: int) -> str:
    return f"BraTS-{domain}-{index:05d}-000"


def write_case(out_dir: str | Path, domain: str, index: int, seed: int) -> Path:
    """Write one case as `out_dir/<case id>/<case id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`; returns its folder."""
    return save_case(out_dir, case_id(domain, index), *make_case(domain, index, seed))


def save_case(out_dir: str | Path, name: str, images: dict, labels: np.ndarray, affine: np.ndarray) -> Path:
    """Write volumes as case `name` in BraTS's layout, 1 mm voxels; returns its folder."""
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, volume in {**images, "seg": labels}.items():
        image = nib.Nifti1Image(volume, affine)
        image.header.set_zooms((1.0, 1.0, 1.0))
        image.header.set_xyzt_units("mm")
        nib.save(image, folder / f"{name}-{suffix}.nii.gz")
    return folder


def check_domains(domains) -> None:
    """A clear error for a domain the phantom has no recipe for (or that does not exist)."""
    for domain in domains:
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; expected one of {list(DOMAINS)}")
        if not DOMAINS[domain].phantom:
            raise ValueError(
                f"the phantom has no recipe for domain {domain} ({DOMAINS[domain].name}); it draws "
                f"{', '.join(PHANTOM_DOMAINS)}"
            )


def write_phantom(
    out_dir: str | Path, cases_per_domain: int, seed: int = 0, domains: tuple[str, ...] | list[str] = None
) -> list[Path]:
    """Write `cases_per_domain` phantom cases of each domain (default: every one it can draw) under `out_dir`;
    returns the case folders."""
    domains = PHANTOM_DOMAINS if domains is None else domains
    check_domains(domains)
    return [write_case(out_dir, d, i, seed) for d in domains for i in range(cases_per_domain)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--cases_per_domain", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--domains", default=",".join(PHANTOM_DOMAINS), help=f"comma-separated subset of {','.join(PHANTOM_DOMAINS)}"
    )
    args = parser.parse_args(argv)
    domains = [d.strip().upper() for d in args.domains.split(",") if d.strip()]
    start = time.perf_counter()
    folders = write_phantom(args.out_dir, args.cases_per_domain, args.seed, domains)
    elapsed = time.perf_counter() - start
    print(
        f"wrote {len(folders)} cases to {args.out_dir} in {elapsed:.1f} s ({elapsed / max(len(folders), 1):.2f} s/case)"
    )


if __name__ == "__main__":
    main()
