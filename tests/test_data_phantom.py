"""The phantom: BraTS layout read by the real reader, modality-dependent tumour visibility, domain traits,
determinism."""

import numpy as np
import pytest
from scipy import ndimage

from sam_jax.data.brats import find_cases, load_case
from sam_jax.data.phantom import SHAPE, anatomy, main, make_case


@pytest.fixture(scope="module")
def cases(phantom_dir):
    return {c.domain: load_case(c) for c in find_cases(phantom_dir)}


def _pure_white_matter(case):
    far_from_tumour = ~ndimage.binary_dilation(case.seg > 0, iterations=3)
    return (anatomy()["wm"] > 0.95) & far_from_tumour


def _relative_to_white_matter(case, region, modality):
    image = case.images[modality]
    return image[region].mean() / image[_pure_white_matter(case)].mean()


def test_written_in_brats_layout(cases, phantom_dir):
    assert sorted(cases) == ["GLI", "MEN", "PED", "SSA"]
    for domain, case in cases.items():
        assert case.case_id == f"BraTS-{domain}-00000-000"
        assert case.images["t1n"].shape == SHAPE == (240, 240, 155)
        assert case.header.get_zooms() == (1.0, 1.0, 1.0)
        assert set(np.unique(case.seg)) <= {0, 1, 2, 3} and (case.seg > 0).sum() > 1000


def test_tumour_visibility_differs_by_modality(cases):
    gli = cases["GLI"]
    oedema, rim = gli.seg == 2, gli.seg == 3
    assert _relative_to_white_matter(gli, oedema, "t2w") > 2 and _relative_to_white_matter(gli, oedema, "t2f") > 2
    assert _relative_to_white_matter(gli, oedema, "t1c") < 0.8  # faint (hypointense) on T1Gd
    assert _relative_to_white_matter(gli, rim, "t1c") > 1.3  # enhancing
    assert _relative_to_white_matter(gli, rim, "t1n") < 0.9  # the rim is bright only with contrast


def test_labels_are_nested(cases):
    seg = cases["GLI"].seg
    around_necrosis = ndimage.binary_dilation(seg == 1) & (seg != 1)
    assert (seg[around_necrosis] == 3).mean() > 0.9  # necrosis sits inside the enhancing rim
    around_core = ndimage.binary_dilation(np.isin(seg, (1, 3))) & ~np.isin(seg, (1, 3)) & anatomy()["brain"]
    assert (seg[around_core] == 2).mean() > 0.9  # the core sits inside oedema


def test_domain_traits(cases):
    midline = SHAPE[0] / 2
    brain = anatomy()["brain"]

    def centroid(domain):
        return np.argwhere(cases[domain].seg > 0).mean(axis=0)

    assert abs(centroid("GLI")[0] - midline) > 15  # hemispheric
    x, _, z = centroid("PED")
    assert abs(x - midline) < 8 and z < 60  # midline, posterior fossa
    men = cases["MEN"].seg > 0
    assert (men & ~brain).sum() / men.sum() > 0.15  # extra-axial
    assert _relative_to_white_matter(cases["MEN"], cases["MEN"].seg == 3, "t1c") > 1.5
    ped_rim = _relative_to_white_matter(cases["PED"], cases["PED"].seg == 3, "t1c")
    assert ped_rim < _relative_to_white_matter(cases["GLI"], cases["GLI"].seg == 3, "t1c")  # weak enhancement

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
