"""The phantom: BraTS layout read by the real reader, contrasts from the signal equations (computed here apart from
the phantom's code), modality-dependent tumour visibility, domain traits, determinism."""

import math

import numpy as np
import pytest
from scipy import ndimage

from sam_jax.data.brats import find_cases, load_case
from sam_jax.data.domains import MODALITIES
from sam_jax.data.phantom import (
    _DOMAIN_CONTRAST,
    SEQUENCES,
    SHAPE,
    TISSUE_CONTRAST,
    TUMOUR_CONTRAST,
    anatomy,
    main,
    make_case,
    stored_grid,
)

# The parameters docs/phantom.md cites (3 T): T1 ms, T2 ms, proton density, fraction of the volume gadolinium reaches.
PARAMETERS = {
    "wm": (832, 79.2, 0.65, 0),
    "gm": (1331, 110, 0.78, 0),
    "csf": (3817, 503, 0.97, 0),
    1: (2500, 250, 0.90, 0),
    2: (1500, 150, 0.80, 0),
    3: (1650, 130, 0.80, 0.3),
    "MEN3": (1400, 110, 0.80, 0.5),
    "PED2": (1800, 170, 0.85, 0),
    "PED3": (1650, 130, 0.80, 0.05),
}
TIMINGS = {"t1n": (500, 10), "t1c": (500, 10), "t2w": (5000, 100), "t2f": (9000, 100)}  # TR, TE in ms
R1_PER_MM_S = 4.0  # gadolinium relaxivity, L/(mmol s)


def _expected(parameters, modality):
    """The signal equations written out: spin echo, FLAIR at the TI nulling CSF, T1 shortened by gadolinium on t1c."""
    t1, t2, pd, gd_space = parameters
    tr, te = TIMINGS[modality]
    rate = 1 / t1  # per ms
    if modality == "t1c":
        plasma = 0.1 * (3.99 * math.exp(-0.144 * 5) + 4.78 * math.exp(-0.0111 * 5))  # mmol/L, 5 min after 0.1 mmol/kg
        rate += R1_PER_MM_S * gd_space * plasma / 1000
    if modality == "t2f":
        csf_t1 = PARAMETERS["csf"][0]
        ti = csf_t1 * math.log(2 / (1 + math.exp(-tr / csf_t1)))
        longitudinal = abs(1 - 2 * math.exp(-ti * rate) + math.exp(-tr * rate))
    else:
        longitudinal = 1 - math.exp(-tr * rate)
    return pd * longitudinal * math.exp(-te / t2)


def _table(key):
    return np.array([_expected(PARAMETERS[key], m) for m in MODALITIES])


@pytest.fixture(scope="module")
def cases(phantom_dir):
    return {c.domain: load_case(c) for c in find_cases(phantom_dir)}


def _pure_white_matter(case):
    far_from_tumour = ~ndimage.binary_dilation(case.seg > 0, iterations=3)
    return (stored_grid(anatomy()["wm"]) > 0.95) & far_from_tumour


def _relative_to_white_matter(case, region, modality):
    image = case.images[modality]
    return image[region].mean() / image[_pure_white_matter(case)].mean()


@pytest.mark.slow
def test_written_in_brats_layout(cases, phantom_dir):
    assert sorted(cases) == ["GLI", "MEN", "PED", "SSA"]
    for domain, case in cases.items():
        assert case.case_id == f"BraTS-{domain}-00000-000"
        assert case.images["t1n"].shape == SHAPE == (240, 240, 155)
        assert case.header.get_zooms() == (1.0, 1.0, 1.0)
        assert set(np.unique(case.seg)) <= {0, 1, 2, 3} and (case.seg > 0).sum() > 1000


def test_contrasts_follow_the_signal_equations():
    scale = TISSUE_CONTRAST["wm"][0] / _table("wm")[0]  # one scale for every tissue and modality
    for key, table in [
        *TISSUE_CONTRAST.items(),
        *TUMOUR_CONTRAST.items(),
        ("MEN3", _DOMAIN_CONTRAST["MEN"][3]),
        ("PED2", _DOMAIN_CONTRAST["PED"][2]),
        ("PED3", _DOMAIN_CONTRAST["PED"][3]),
    ]:
        np.testing.assert_allclose(table, scale * _table(key), rtol=1e-9, err_msg=str(key))
    assert list(SEQUENCES) == list(MODALITIES)
    assert 2200 < SEQUENCES["t2f"].ti < 2600  # a clinical 3 T FLAIR inversion time


def test_contrasts_are_the_textbook_ones():
    names, tables = [*TISSUE_CONTRAST, *TUMOUR_CONTRAST], [*TISSUE_CONTRAST.values(), *TUMOUR_CONTRAST.values()]
    t1n, t1c, t2w, t2f = ({name: table[m] for name, table in zip(names, tables)} for m in range(4))
    wm, gm, csf, necrosis, oedema, rim = "wm", "gm", "csf", 1, 2, 3
    assert t2f[csf] < 1e-9 * t2f[wm]  # FLAIR nulls CSF
    assert t1n[wm] > t1n[gm] > t1n[csf] and min(t1n.values()) == t1n[csf]  # T1: WM over GM, CSF darkest
    assert max(t2w.values()) == t2w[csf] and t2w[gm] > t2w[wm]  # T2: CSF brightest, GM over WM
    assert t2f[gm] > t2f[wm]
    assert t2w[oedema] > t2w[gm] and t2f[oedema] > t2f[gm] and t1n[oedema] < t1n[wm]  # oedema bright on T2 and FLAIR
    assert t1c[rim] > 1.3 * t1n[rim] and t1c[rim] > t1c[wm]  # the rim enhances
    assert t1c[oedema] == t1n[oedema] and t1c[necrosis] == t1n[necrosis] and t1c[wm] == t1n[wm]  # nothing else does
    enhancement = {d: _DOMAIN_CONTRAST[d][3][1] / _DOMAIN_CONTRAST[d][3][0] for d in ("MEN", "PED")}
    assert enhancement["MEN"] > t1c[rim] / t1n[rim] > enhancement["PED"] > 1


def test_tumour_visibility_follows_the_contrasts(cases):
    """Inside each tumour label (one voxel in from its edge), relative to pure white matter, each case shows its
    domain's contrasts from the signal equations: only partial volume, texture and noise differ (the small necrotic
    core, next to the bright rim, the most)."""
    domain_keys = {"GLI": {}, "MEN": {3: "MEN3"}, "PED": {2: "PED2", 3: "PED3"}}
    for domain, keys in domain_keys.items():
        case = cases[domain]
        white_matter = _pure_white_matter(case)
        reference = np.array([case.images[m][white_matter].mean() for m in MODALITIES])
        for label in (1, 2, 3):
            inside = ndimage.binary_erosion(case.seg == label)
            if label == 1 and domain == "MEN":
                assert not inside.any()  # a meningioma has no necrotic core here
                continue
            measured = np.array([case.images[m][inside].mean() for m in MODALITIES]) / reference
            expected = _table(keys.get(label, label)) / _table("wm")
            np.testing.assert_allclose(
                measured, expected, rtol=0.15 if label == 1 else 0.06, err_msg=f"{domain} label {label}"
            )


def test_labels_are_nested(cases):
    seg = cases["GLI"].seg
    around_necrosis = ndimage.binary_dilation(seg == 1) & (seg != 1)
    assert (seg[around_necrosis] == 3).mean() > 0.9  # necrosis sits inside the enhancing rim
    core = np.isin(seg, (1, 3))
    around_core = ndimage.binary_dilation(core) & ~core & stored_grid(anatomy()["brain"])
    assert (seg[around_core] == 2).mean() > 0.9  # the core sits inside oedema


def test_domain_traits(cases):
    midline = SHAPE[0] / 2
    brain = stored_grid(anatomy()["brain"])

    def centroid(domain):
        return np.argwhere(cases[domain].seg > 0).mean(axis=0)

    assert abs(centroid("GLI")[0] - midline) > 15  # hemispheric
    x, _, z = centroid("PED")
    assert abs(x - midline) < 8 and z < 60  # midline, posterior fossa
    men = cases["MEN"].seg > 0
    assert (men & ~brain).sum() / men.sum() > 0.15  # extra-axial

    def rim_on_t1c(domain):
        return _relative_to_white_matter(cases[domain], cases[domain].seg == 3, "t1c")

    assert rim_on_t1c("MEN") > 1.5 and rim_on_t1c("MEN") > rim_on_t1c("GLI") > rim_on_t1c("PED")  # enhancement

    def noise(domain):  # neighbour differences inside pure white matter, relative to its mean
        image, wm = cases[domain].images["t1n"], _pure_white_matter(cases[domain])
        pairs = wm[1:] & wm[:-1]
        return np.diff(image, axis=0)[pairs].std() / image[wm].mean()

    assert noise("SSA") > 2 * noise("GLI")


def test_deterministic_by_seed():
    first, labels, _ = make_case("PED", 0, seed=0)
    again, labels_again, _ = make_case("PED", 0, seed=0)
    other, _, _ = make_case("PED", 0, seed=1)
    assert all(np.array_equal(first[m], again[m]) for m in first) and np.array_equal(labels, labels_again)
    assert not np.array_equal(first["t1c"], other["t1c"])


def test_command_line(tmp_path, capsys):
    main(["--out_dir", str(tmp_path), "--cases_per_domain", "1", "--seed", "2", "--domains", "MEN"])
    names = sorted(p.name for p in (tmp_path / "BraTS-MEN-00000-000").iterdir())
    assert names == [f"BraTS-MEN-00000-000-{m}.nii.gz" for m in ("seg", "t1c", "t1n", "t2f", "t2w")]
    assert "wrote 1 cases" in capsys.readouterr().out
