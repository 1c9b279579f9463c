"""Reading BraTS cases: discovery by name, both namings, and every kind of bad case reported with file and fault."""

import gzip
import time
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pytest

from sam_jax.data.brats import find_cases, load_case, save_prediction
from sam_jax.data.errors import BadCaseError
from sam_jax.data.validate import main as validate_main
from sam_jax.data.validate import validate


def test_find_cases_recursively_with_domains_and_patients(tmp_path, write_tiny_case):
    write_tiny_case(tmp_path / "MEN" / "nested", "BraTS-MEN-00002-000")
    write_tiny_case(tmp_path / "GLI_V2", "BraTS-GLI-00001-001")
    (tmp_path / "notes.txt").write_text("not a case")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["BraTS-GLI-00001-001", "BraTS-MEN-00002-000"]
    assert [c.domain for c in cases] == ["GLI", "MEN"]
    assert cases[0].patient_id == "BraTS-GLI-00001"
    assert sorted(cases[1].images) == ["t1c", "t1n", "t2f", "t2w"] and cases[1].seg is not None
    assert [c.case_id for c in find_cases(tmp_path, domain="MEN")] == ["BraTS-MEN-00002-000"]


def test_load_case_keeps_geometry_and_labels(tmp_path, write_tiny_case):
    affine = np.array([[-1.0, 0, 0, 5], [0, -1, 0, 7], [0, 0, 1, -3], [0, 0, 0, 1]])
    write_tiny_case(tmp_path, affine=affine)
    case = load_case(find_cases(tmp_path)[0])
    assert case.images["t2f"].dtype == np.float32 and case.images["t2f"].shape == (12, 10, 6)
    np.testing.assert_allclose(case.affine, affine)
    assert set(np.unique(case.seg)) == {0, 2, 3}
    assert case.whole_tumour.sum() == 8  # the 2x2x2 block


def _single_fault(tmp_path, case_id="BraTS-GLI-00001-000"):
    with pytest.raises(BadCaseError) as caught:
        load_case(find_cases(tmp_path)[0])
    assert caught.value.case_id == case_id
    return caught.value.faults


def test_missing_modality(tmp_path, write_tiny_case):
    write_tiny_case(tmp_path, modalities=("t1n", "t1c", "t2w", "seg"))
    (fault,) = _single_fault(tmp_path)
    assert "missing modality t2f" in fault.fault and fault.path.name == "BraTS-GLI-00001-000-t2f.nii.gz"


def test_shape_and_affine_mismatch(tmp_path, write_tiny_case):
    folder = write_tiny_case(tmp_path)
    ramp = np.arange(720, dtype=np.float32).reshape(12, 10, 6)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # the tiny case's orientation: only the origin differs
    nib.save(nib.Nifti1Image(ramp[..., :5], lps), folder / "BraTS-GLI-00001-000-t1c.nii.gz")
    shifted = lps.copy()
    shifted[0, 3] = 2.0
    nib.save(nib.Nifti1Image(ramp, shifted), folder / "BraTS-GLI-00001-000-t2w.nii.gz")
    faults = _single_fault(tmp_path)
    by_file = {f.path.name: f.fault for f in faults}
    assert "shape (12, 10, 5)" in by_file["BraTS-GLI-00001-000-t1c.nii.gz"]
    assert "affine differs" in by_file["BraTS-GLI-00001-000-t2w.nii.gz"]


def test_nan_and_unknown_labels(tmp_path, write_tiny_case):
    images = {m: np.ones((12, 10, 6), np.float32) for m in ("t1n", "t1c", "t2w", "t2f")}
    images["t1n"][3, 3, 3] = np.nan
    seg = np.zeros((12, 10, 6), np.uint8)
    seg[1, 1, 1] = 5
    write_tiny_case(tmp_path, images=images, seg=seg)
    by_file = {f.path.name: f.fault for f in _single_fault(tmp_path)}
    assert "1 non-finite" in by_file["BraTS-GLI-00001-000-t1n.nii.gz"]
    assert "unexpected labels [5]" in by_file["BraTS-GLI-00001-000-seg.nii.gz"]


def test_truncated_and_non_nifti_files(tmp_path, write_tiny_case):
    folder = write_tiny_case(tmp_path)
    t1c = folder / "BraTS-GLI-00001-000-t1c.nii.gz"
    t1c.write_bytes(t1c.read_bytes()[:200])
    (folder / "BraTS-GLI-00001-000-t2w.nii.gz").write_bytes(gzip.compress(b"this is not an image" * 30))
    by_file = {f.path.name: f.fault for f in _single_fault(tmp_path)}
    assert by_file["BraTS-GLI-00001-000-t1c.nii.gz"].startswith("unreadable")
    assert by_file["BraTS-GLI-00001-000-t2w.nii.gz"].startswith("unreadable")


def test_error_message_names_file_and_fault(tmp_path, write_tiny_case):
    write_tiny_case(tmp_path, modalities=("t1n", "t1c", "t2w", "seg"))
    with pytest.raises(BadCaseError, match=r"BraTS-GLI-00001-000-t2f\.nii\.gz: missing modality t2f"):
        load_case(find_cases(tmp_path)[0])


def test_validate_reports_every_fault_in_one_pass(tmp_path, write_tiny_case, capsys):
    write_tiny_case(tmp_path, "BraTS-PED-00001-000")
    write_tiny_case(tmp_path, "BraTS-PED-00002-000", modalities=("t1n", "t2w", "t2f", "seg"))
    bad_seg = np.full((12, 10, 6), 9, np.uint8)
    write_tiny_case(tmp_path, "BraTS-PED-00003-000", seg=bad_seg, modalities=("t1n", "t1c", "t2w", "seg"))
    write_tiny_case(tmp_path, "BraTS-PED-00004-000", seg=np.zeros((12, 10, 6), np.uint8))
    cases, bad, empty = validate(tmp_path)
    count = len(cases)
    assert count == 4 and sorted(bad) == ["BraTS-PED-00002-000", "BraTS-PED-00003-000"]
    assert len(bad["BraTS-PED-00003-000"]) == 2  # missing t2f and label 9, both found
    assert empty == ["BraTS-PED-00004-000"]
    assert validate_main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "missing modality t1c" in out and "unexpected labels [9]" in out and "4 cases, 2 valid, 2 with faults" in out
    assert "BraTS-PED-00004-000: warning: the segmentation is empty" in out


def test_missing_segmentation_is_a_fault_unless_unlabelled(tmp_path, write_tiny_case, capsys):
    write_tiny_case(tmp_path, modalities=("t1n", "t1c", "t2w", "t2f"))
    (fault,) = _single_fault(tmp_path)
    assert fault.path.name == "BraTS-GLI-00001-000-seg.nii.gz" and fault.fault.startswith("missing segmentation")
    assert load_case(find_cases(tmp_path)[0], require_seg=False).seg is None
    assert validate_main([str(tmp_path)]) == 1 and validate_main([str(tmp_path), "--unlabelled"]) == 0


def test_corrupt_gzip_stream_is_caught_by_its_checksum(tmp_path, write_tiny_case):
    """A flipped bit inside the deflate stream that the decoder accepts: only the gzip CRC tells, and nibabel,
    which stops reading at the last voxel, returns wrong voxels without an error."""
    folder = write_tiny_case(
        tmp_path,
        images={
            m: np.random.default_rng(i).normal(size=(12, 10, 6)).astype(np.float32)
            for i, m in enumerate(("t1n", "t1c", "t2w", "t2f"))
        },
    )
    path = folder / "BraTS-GLI-00001-000-t2w.nii.gz"
    original, raw = nib.load(path).get_fdata(), path.read_bytes()

    def crc_only_fault(position):
        changed = bytearray(raw)
        changed[position] ^= 0x10
        try:
            gzip.decompress(bytes(changed))
        except gzip.BadGzipFile as e:
            return bytes(changed) if "CRC check failed" in str(e) else None
        except (OSError, EOFError, ValueError):
            return None

    path.write_bytes(next(c for p in range(len(raw) // 2, len(raw) - 8) if (c := crc_only_fault(p))))
    assert not np.array_equal(nib.load(path).get_fdata(), original)  # nibabel alone: a volume, silently wrong
    (fault,) = _single_fault(tmp_path)
    assert fault.path == path and "CRC check failed" in fault.fault


def test_constant_images_are_faults(tmp_path, write_tiny_case):
    images = {m: np.full((12, 10, 6), 7.0 if m == "t1c" else 0.0, np.float32) for m in ("t1n", "t1c", "t2w", "t2f")}
    images["t2w"][3, 3, 3] = 1.0
    write_tiny_case(tmp_path, images=images)
    by_file = {f.path.name: f.fault for f in _single_fault(tmp_path)}
    assert sorted(by_file) == [f"BraTS-GLI-00001-000-{m}.nii.gz" for m in ("t1c", "t1n", "t2f")]
    assert by_file["BraTS-GLI-00001-000-t1c.nii.gz"] == "constant image (every voxel is 7.0): no scan in it"


def test_prediction_written_in_case_geometry(tmp_path, write_tiny_case):
    """An LAS case (y reversed against BraTS's LPS) is read into LPS and its prediction written back on its own
    grid: the whole tumour written equals the segmentation file's, voxel for voxel."""
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    folder = write_tiny_case(tmp_path / "in", affine=affine)
    case = load_case(find_cases(tmp_path / "in")[0])
    save_prediction(case, case.whole_tumour, tmp_path / "pred.nii.gz")
    written = nib.load(tmp_path / "pred.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    in_file = np.asarray(nib.load(folder / "BraTS-GLI-00001-000-seg.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(np.asarray(written.dataobj), in_file)
    np.testing.assert_array_equal(case.whole_tumour, in_file[:, ::-1, :])
    assert case.spacing == (1.0, 1.0, 2.0)


def _bomb(path, header_bytes: bytes, inflated: int) -> None:
    """A .nii.gz whose header declares a tiny volume but whose stream inflates to `inflated` bytes of zeros."""
    packer, zeros = zlib.compressobj(9, zlib.DEFLATED, 31), bytes(1 << 20)
    parts = [packer.compress(header_bytes)]
    parts += [packer.compress(zeros) for _ in range(inflated >> 20)]
    path.write_bytes(b"".join(parts) + packer.flush())


def test_a_decompression_bomb_is_refused_in_milliseconds_naming_it(tmp_path, write_tiny_case, capsys):
    """256 MiB of zeros behind a header declaring 12 x 10 x 6 float32: refused before a megabyte more is inflated,
    in the file's name (the four good files of the case go unmentioned)."""
    folder = write_tiny_case(tmp_path)
    bomb = folder / "BraTS-GLI-00001-000-t1c.nii.gz"
    header = nib.Nifti1Image(np.zeros((12, 10, 6), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])).to_bytes()
    _bomb(bomb, header, 256 << 20)
    assert bomb.stat().st_size < 400_000
    tracemalloc.start()
    start = time.perf_counter()
    (fault,) = _single_fault(tmp_path)
    seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert fault.path == bomb and "decompresses past the 3,232 bytes its header declares" in fault.fault
    assert peak < 16 << 20 and seconds < 2  # whole: 256 MiB and seconds
    assert validate_main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{bomb}: decompresses past" in out and "t1n.nii.gz" not in out


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_an_absurd_header_shape_is_refused_with_the_shape_before_allocation(tmp_path, write_tiny_case, suffix):
    folder = write_tiny_case(tmp_path, modalities=("t1n", "t1c", "t2w", "seg"))
    header = nib.Nifti1Header()
    header.set_data_shape((10000, 10000, 10000))
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + bytes(4 + 1000)  # no extension, then far fewer voxels than declared
    path = folder / f"BraTS-GLI-00001-000-t2f{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    tracemalloc.start()
    (fault,) = _single_fault(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert fault.path == path and "declares shape (10000, 10000, 10000) (1,000,000,000,000 voxels)" in fault.fault
    assert peak < 16 << 20


def test_a_multi_member_gzip_file_reads_as_one(tmp_path, write_tiny_case):
    """pigz and `cat a.gz b.gz` write several gzip members; each is inflated in turn."""
    folder = write_tiny_case(tmp_path)
    path = folder / "BraTS-GLI-00001-000-t2w.nii.gz"
    single = load_case(find_cases(tmp_path)[0]).images["t2w"]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert np.array_equal(load_case(find_cases(tmp_path)[0]).images["t2w"], single)
