"""Every release in the registry, read from files laid out exactly as the release ships them (folders, names,
extensions, 4-D files, orientation; volumes shrunk): case ids, domains, patients, each file's modality and each
label value checked against what the release's documentation says they are, not against the registry's own tables."""

import nibabel as nib
import numpy as np
import pytest
from apps import ROOT

from sam_jax.data.brats import find_cases, load_case, save_prediction
from sam_jax.data.cache import build_cache
from sam_jax.data.clicks import volume_clicks
from sam_jax.data.domains import DOMAINS, RELEASES, whole_tumour
from sam_jax.data.errors import BadCaseError
from sam_jax.data.phantom import write_phantom
from sam_jax.data.validate import main as validate_main

SHAPE = (10, 9, 6)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS = np.diag([1.0, 1.0, 1.0, 1.0])
# Each scan's brain intensity identifies it: what the release calls FLAIR must arrive as our t2f, and so on.
INTENSITY = {"t1n": 100.0, "t1c": 200.0, "t2w": 300.0, "t2f": 400.0}


def _brain() -> np.ndarray:
    brain = np.zeros(SHAPE, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    return brain


def _scan(modality: str) -> np.ndarray:
    ramp = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) % 7  # not constant, and asymmetric
    return np.where(_brain(), INTENSITY[modality] + ramp, 0).astype(np.int16)


def _labels(values) -> np.ndarray:
    """One 1x1x2 block per label value, at x = 2, 3, 4, …"""
    seg = np.zeros(SHAPE, np.uint8)
    for i, value in enumerate(values):
        seg[2 + i, 3, 2:4] = value
    return seg


def _save(data, path, affine=LPS):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


def _per_modality_case(folder, case_id, names, seg_values, separator="_", ext=".nii.gz", affine=LPS):
    """`names`: the release's name for t1n, t1c, t2w, t2f (documented file suffixes)."""
    for ours, theirs in zip(("t1n", "t1c", "t2w", "t2f"), names):
        _save(_scan(ours), folder / f"{case_id}{separator}{theirs}{ext}", affine)
    if seg_values is not None:
        _save(_labels(seg_values), folder / f"{case_id}{separator}seg{ext}", affine)


OLD_NAMES = ("t1", "t1ce", "t2", "flair")  # BraTS 2017-2021 suffixes
NEW_NAMES = ("t1n", "t1c", "t2w", "t2f")  # BraTS 2023 onwards


def _assert_case(case_files, *, case_id, patient, domain, release, label_map):
    """`label_map`: the release's documented label value → our label (1 NCR, 2 ED, 3 ET, 4 RC)."""
    assert (case_files.case_id, case_files.patient_id, case_files.domain) == (case_id, patient, domain)
    assert case_files.release.name == release
    case = load_case(case_files)
    brain = _brain()
    for modality, value in INTENSITY.items():
        assert value <= case.images[modality][brain].min() < value + 7, modality
    expected = _labels([label_map[v] for v in label_map])
    np.testing.assert_array_equal(case.seg, expected)
    return case


def test_brats_2018_2019_2021_as_shipped(tmp_path):
    _per_modality_case(
        tmp_path / "MICCAI_BraTS_2018_Data_Training" / "HGG" / "Brats18_CBICA_ALU_1",
        "Brats18_CBICA_ALU_1",
        OLD_NAMES,
        [1, 2, 4],
    )
    _per_modality_case(
        tmp_path / "MICCAI_BraTS_2019_Data_Training" / "LGG" / "BraTS19_2013_0_1",
        "BraTS19_2013_0_1",
        OLD_NAMES,
        [1, 2, 4],
        ext=".nii",
    )
    _per_modality_case(
        tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021" / "BraTS2021_00000",
        "BraTS2021_00000",
        OLD_NAMES,
        [1, 2, 4],
    )
    found = {c.case_id: c for c in find_cases(tmp_path)}
    old_labels = {1: 1, 2: 2, 4: 3}  # 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing → ours, ET = 3
    _assert_case(
        found["Brats18_CBICA_ALU_1"],
        case_id="Brats18_CBICA_ALU_1",
        patient="Brats18_CBICA_ALU",
        domain="GLI",
        release="BraTS 2018",
        label_map=old_labels,
    )
    _assert_case(
        found["BraTS19_2013_0_1"],
        case_id="BraTS19_2013_0_1",
        patient="BraTS19_2013_0",
        domain="GLI",
        release="BraTS 2019",
        label_map=old_labels,
    )
    _assert_case(
        found["BraTS2021_00000"],
        case_id="BraTS2021_00000",
        patient="BraTS2021_00000",
        domain="GLI",
        release="BraTS 2021",
        label_map=old_labels,
    )
    assert find_cases(tmp_path, domain="SSA") == []  # their names carry no domain: adult glioma


def test_brats_2020_with_the_misnamed_segmentation_of_case_355(tmp_path):
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    _per_modality_case(root / "BraTS20_Training_001", "BraTS20_Training_001", OLD_NAMES, [1, 2, 4], ext=".nii")
    _per_modality_case(root / "BraTS20_Training_355", "BraTS20_Training_355", OLD_NAMES, None, ext=".nii")
    _save(_labels([4, 2, 1]), root / "BraTS20_Training_355" / "W39_1998.09.19_Segm.nii")
    _per_modality_case(
        tmp_path / "MICCAI_BraTS2020_ValidationData" / "BraTS20_Validation_001",
        "BraTS20_Validation_001",
        OLD_NAMES,
        None,
        ext=".nii",
    )
    found = {c.case_id: c for c in find_cases(tmp_path)}
    assert sorted(found) == ["BraTS20_Training_001", "BraTS20_Training_355", "BraTS20_Validation_001"]
    assert found["BraTS20_Training_355"].seg.name == "W39_1998.09.19_Segm.nii"
    case = load_case(found["BraTS20_Training_355"])
    np.testing.assert_array_equal(case.seg, _labels([3, 2, 1]))
    _assert_case(
        found["BraTS20_Training_001"],
        case_id="BraTS20_Training_001",
        patient="BraTS20_Training_001",
        domain="GLI",
        release="BraTS 2020",
        label_map={1: 1, 2: 2, 4: 3},
    )
    assert load_case(found["BraTS20_Validation_001"], require_seg=False).seg is None


def test_brats_2023_domains_nested_folders_and_met_in_ras(tmp_path):
    layouts = {
        "GLI": "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData",
        "MEN": "BraTS-MEN-Train/ASNR-MICCAI-BraTS2023-MEN-Challenge-TrainingData",  # one level deeper
        "PED": "ASNR-MICCAI-BraTS2023-PED-Challenge-TrainingData",
        "SSA": "ASNR-MICCAI-BraTS2023-SSA-Challenge-TrainingData_V2",
        "MET": "ASNR-MICCAI-BraTS2023-MET-Challenge-TrainingData",
    }
    for domain, folder in layouts.items():
        case_id = f"BraTS-{domain}-00001-000"
        affine = RAS if domain == "MET" else LPS
        _per_modality_case(tmp_path / folder / case_id, case_id, NEW_NAMES, [1, 2, 3], "-", affine=affine)
    found = {c.domain: c for c in find_cases(tmp_path)}
    assert sorted(found) == sorted(DOMAINS) == sorted(layouts)
    for domain in ("GLI", "MEN", "PED", "SSA"):
        _assert_case(
            found[domain],
            case_id=f"BraTS-{domain}-00001-000",
            patient=f"BraTS-{domain}-00001",
            domain=domain,
            release="BraTS 2023",
            label_map={1: 1, 2: 2, 3: 3},
        )
    # MET ships in RAS: read into LPS (x and y reversed), written back on the file's own grid.
    met = load_case(found["MET"])
    file_t1n = _scan("t1n")
    np.testing.assert_array_equal(met.images["t1n"], file_t1n[::-1, ::-1, :])
    np.testing.assert_array_equal(met.seg, _labels([1, 2, 3])[::-1, ::-1, :])
    assert met.voxel_from_file((2, 3, 2)) == (SHAPE[0] - 3, SHAPE[1] - 4, 2)
    assert met.images["t1n"][met.voxel_from_file((4, 1, 5))] == file_t1n[4, 1, 5]
    save_prediction(met, met.whole_tumour, tmp_path / "met_pred.nii.gz")
    written = nib.load(tmp_path / "met_pred.nii.gz")
    np.testing.assert_array_equal(written.affine, RAS)
    np.testing.assert_array_equal(np.asarray(written.dataobj), _labels([1, 2, 3]) > 0)


def test_brats_2024_resection_cavity_is_read_but_is_not_tumour(tmp_path):
    case_id = "BraTS-GLI-02073-100"
    _per_modality_case(
        tmp_path / "BraTS2024-BraTS-GLI-TrainingData" / "training_data1_v2" / case_id,
        case_id,
        NEW_NAMES,
        [1, 2, 3, 4],
        "-",
    )
    (case_files,) = find_cases(tmp_path)
    case = _assert_case(
        case_files,
        case_id=case_id,
        patient="BraTS-GLI-02073",
        domain="GLI",
        release="BraTS 2024 post-treatment glioma",
        label_map={1: 1, 2: 2, 3: 3, 4: 4},
    )
    cavity = _labels([0, 0, 0, 4]) > 0
    np.testing.assert_array_equal(case.whole_tumour, _labels([1, 2, 3]) > 0)
    np.testing.assert_array_equal(whole_tumour(case.seg.astype(np.uint8)), case.whole_tumour)
    for x, y, z in volume_clicks(case.whole_tumour):
        assert not cavity[x, y, z]
    cache = build_cache(tmp_path, tmp_path / "cache", workers=1)
    assert sum(cache.tumour_area(case_id)) == case.whole_tumour.sum() == 6


def test_msd_task01_four_d_images_and_relabelled_classes(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    msd_channels = ("t2f", "t1n", "t1c", "t2w")  # dataset.json: 0 FLAIR, 1 T1w, 2 t1gd, 3 T2w
    four_d = np.stack([_scan(m) for m in msd_channels], axis=-1).astype(np.float32)
    _save(four_d, root / "imagesTr" / "BRATS_001.nii.gz")
    _save(_labels([1, 2, 3]), root / "labelsTr" / "BRATS_001.nii.gz")
    _save(four_d, root / "imagesTs" / "BRATS_485.nii.gz")
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "dataset.json").write_text("{}")
    found = {c.case_id: c for c in find_cases(tmp_path)}
    assert sorted(found) == ["BRATS_001", "BRATS_485"]
    # MSD labels: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.
    _assert_case(
        found["BRATS_001"],
        case_id="BRATS_001",
        patient="BRATS_001",
        domain="GLI",
        release="MSD Task01_BrainTumour",
        label_map={1: 2, 2: 1, 3: 3},
    )
    assert load_case(found["BRATS_485"], require_seg=False).seg is None
    case = load_case(found["BRATS_001"])
    save_prediction(case, case.whole_tumour, tmp_path / "pred.nii.gz")
    assert nib.load(tmp_path / "pred.nii.gz").shape == SHAPE
    assert validate_main([str(tmp_path), "--unlabelled"]) == 0


def _faults(tmp_path):
    (case_files,) = find_cases(tmp_path)
    with pytest.raises(BadCaseError) as caught:
        load_case(case_files)
    return [f"{f.path.name}: {f.fault}" for f in caught.value.faults]


def test_a_case_folder_mixing_two_releases_is_refused_naming_both(tmp_path):
    folder = tmp_path / "BraTS2021_00000"
    _per_modality_case(folder, "BraTS2021_00000", OLD_NAMES, [1, 2, 4])
    _save(_scan("t1n"), folder / "BraTS-GLI-00000-000-t1n.nii.gz")
    cases = {c.case_id: c for c in find_cases(tmp_path)}
    with pytest.raises(BadCaseError) as caught:
        load_case(cases["BraTS2021_00000"])
    (fault,) = caught.value.faults
    assert fault.path.name == "BraTS-GLI-00000-000-t1n.nii.gz" and "BraTS 2021 files" in fault.fault


def test_a_four_d_image_with_the_wrong_channel_count(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    _save(np.stack([_scan("t1n")] * 3, axis=-1), root / "imagesTr" / "BRATS_002.nii.gz")
    _save(_labels([1]), root / "labelsTr" / "BRATS_002.nii.gz")
    (fault,) = _faults(tmp_path)
    assert fault.startswith("BRATS_002.nii.gz: expected a 4-D image of 4 channels (t2f, t1n, t1c, t2w)")
    assert "(10, 9, 6, 3)" in fault


def test_a_label_outside_the_release_names_the_release_assumed(tmp_path):
    _per_modality_case(tmp_path / "Brats18_2013_2_1", "Brats18_2013_2_1", OLD_NAMES, [1, 3])  # 3: not in 2018
    (fault,) = _faults(tmp_path)
    assert fault == (
        "Brats18_2013_2_1_seg.nii.gz: unexpected labels [3]: BraTS 2018 (the release its file names say) labels "
        "[0, 1, 2, 4]"
    )


def test_modalities_in_different_orientations(tmp_path):
    case_id = "BraTS-GLI-00003-000"
    _per_modality_case(tmp_path / case_id, case_id, NEW_NAMES, [1], "-")
    _save(_scan("t2f"), tmp_path / case_id / f"{case_id}-t2f.nii.gz", affine=RAS)
    faults = _faults(tmp_path)
    assert faults == [
        f"{case_id}-t2f.nii.gz: orientation RAS differs from t1n's LPS: a case's files must share one voxel grid"
    ]


def test_every_domain_has_a_lesion_rule_and_the_phantom_refuses_what_it_cannot_draw(tmp_path):
    from sam_jax.metrics.lesion_wise import BRATS_2023_LESION_RULES

    assert set(DOMAINS) <= set(BRATS_2023_LESION_RULES)
    assert all(r.name for r in RELEASES)
    with pytest.raises(ValueError, match=r"no recipe for domain MET \(brain metastases\); it draws GLI, MEN, PED, SSA"):
        write_phantom(tmp_path, 1, domains=["MET"])


def test_a_folder_of_links_to_case_folders_is_read_and_a_link_loop_ends(tmp_path):
    _per_modality_case(tmp_path / "store" / "BraTS2021_00001", "BraTS2021_00001", OLD_NAMES, [1])
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "BraTS2021_00001").symlink_to(tmp_path / "store" / "BraTS2021_00001")
    (subset / "loop").symlink_to(subset)
    assert [c.case_id for c in find_cases(subset)] == ["BraTS2021_00001"]


def test_a_case_stored_with_permuted_axes_is_read_into_lps_with_its_spacing(tmp_path):
    """Voxel axes (y, x, z) reversed as P, L, S with voxel sizes 1, 2, 3 mm: read as LPS with spacing (2, 1, 3);
    the prediction goes back transposed onto the file's grid."""
    affine = np.array([[0, -2.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    assert "".join(nib.aff2axcodes(affine)) == "PLS"
    case_id = "BraTS-GLI-00004-000"
    _per_modality_case(tmp_path / case_id, case_id, NEW_NAMES, [1, 2, 3], "-", affine=affine)
    case = load_case(find_cases(tmp_path)[0])
    assert case.spacing == (2.0, 1.0, 3.0)
    np.testing.assert_array_equal(case.images["t2w"], _scan("t2w").transpose(1, 0, 2))
    assert case.voxel_from_file((5, 2, 1)) == (2, 5, 1) and case.voxel_to_file((2, 5, 1)) == (5, 2, 1)
    save_prediction(case, case.whole_tumour, tmp_path / "pred.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "pred.nii.gz").dataobj), _labels([1, 2, 3]) > 0)


def test_the_readme_table_lists_every_release_and_domain():
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "`" in line.split("|")[2]]
    names = [row.split("|")[1].strip() for row in rows]
    assert [r.name for r in RELEASES if r.name not in names] == []
    for release in RELEASES:
        row = rows[names.index(release.name)]
        assert release.example.split(".nii")[0].rsplit(release.separator, 1)[0] in row, (release.name, row)
    for code, domain in DOMAINS.items():
        assert f"{code} (" in readme and domain.column in readme
