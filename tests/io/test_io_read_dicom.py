"""read_ct / list_series on synthetic DICOM: selection, geometry, HU, validation errors."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813 (the library's conventional alias)
from hypothesis import given, settings
from hypothesis import strategies as st
from io_factory import chest_like, write_non_image, write_secondary_capture

from lungvol.config import IOConfig
from lungvol.errors import ConfigError, InputError, NotCTError, NotHUError
from lungvol.io import list_series, read_ct, reader, write_dicom_series
from lungvol.io.writers import TRANSFER_SYNTAXES

SPACING = (2.0, 0.8, 0.7)


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
def test_every_transfer_syntax_loads_exact_hu(tmp_path, chest, syntax):
    write_dicom_series(chest, tmp_path, spacing_mm=SPACING, transfer_syntax=syntax)
    vol = read_ct(tmp_path)
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu, chest)
    assert vol.spacing_mm == pytest.approx(SPACING)
    assert vol.source.transfer_syntax_uid == TRANSFER_SYNTAXES[syntax]


def test_pydicom_fallback_gives_the_same_volume(tmp_path, chest, monkeypatch):
    write_dicom_series(chest, tmp_path, spacing_mm=SPACING, transfer_syntax="jpeg_lossless")

    def gdcm_fails(files, pixel_type):
        raise RuntimeError("GDCM cannot decode this transfer syntax")

    monkeypatch.setattr(reader, "_sitk_image", gdcm_fails)
    vol = read_ct(tmp_path)
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu, chest)


def test_geometry_origin_and_lps_direction(tmp_path, chest):
    write_dicom_series(chest, tmp_path, spacing_mm=SPACING, origin_lps_mm=(-12.0, 5.0, -300.0))
    vol = read_ct(tmp_path)
    assert vol.origin_lps_mm == pytest.approx((-12.0, 5.0, -300.0))
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.source.kind == "dicom"
    assert len(vol.source.files) == chest.shape[0]


def test_files_are_ordered_by_position_not_by_name(tmp_path, chest):
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    # Reverse the names so that alphabetical order is the wrong order.
    for f in files:
        f.rename(f.with_name("x" + f.name))
    renamed = sorted(tmp_path.iterdir())
    for i, f in enumerate(renamed):
        f.rename(f.with_name(f"{len(renamed) - i:04d}.dcm"))
    vol = read_ct(tmp_path)
    np.testing.assert_array_equal(vol.hu, chest)
    z = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in vol.source.files]
    assert z == sorted(z)


def test_flipped_row_direction_is_reoriented_to_lps(tmp_path, chest):
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    nx = chest.shape[2]
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]  # rows run towards patient right
        ds.ImagePositionPatient = [(nx - 1) * SPACING[2], 0.0, float(ds.ImagePositionPatient[2])]
        ds.save_as(f)
    vol = read_ct(tmp_path)
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-9)
    np.testing.assert_array_equal(vol.hu, chest[:, :, ::-1])
    assert vol.origin_lps_mm == pytest.approx((0.0, 0.0, 0.0))


def test_single_file_path_reads_its_whole_series(tmp_path, chest):
    files = write_dicom_series(chest, tmp_path / "s", spacing_mm=SPACING)
    for f in write_dicom_series(chest_like(seed=1), tmp_path / "o", spacing_mm=SPACING):
        f.rename(tmp_path / "s" / f"other_{f.name}")  # a second series in the same folder
    vol = read_ct(files[5])
    assert len(vol.source.files) == chest.shape[0]
    np.testing.assert_array_equal(vol.hu, chest)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path, chest):
    write_dicom_series(chest, tmp_path, spacing_mm=SPACING, slice_thickness_mm=5.0)
    vol = read_ct(tmp_path)
    assert vol.spacing_mm[0] == pytest.approx(2.0)
    assert vol.source.slice_thickness_mm == pytest.approx(5.0)
    assert any("SliceThickness" in w for w in vol.source.warnings)


def test_hu_from_nonzero_intercept_and_fractional_slope(tmp_path, chest):
    write_dicom_series(
        chest, tmp_path, spacing_mm=SPACING, rescale_slope=0.5, rescale_intercept=-1000.0
    )
    vol = read_ct(tmp_path)
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu, chest.astype(np.float32))


def test_hu_from_integer_slope_2_stays_int16(tmp_path):
    hu = chest_like() // 2 * 2
    write_dicom_series(
        hu, tmp_path, spacing_mm=SPACING, rescale_slope=2.0, rescale_intercept=-2000.0
    )
    vol = read_ct(tmp_path)
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu, hu)


def test_per_slice_rescale_is_applied_per_slice(tmp_path, chest):
    uid = "1.2.826.0.1.3680043.8.498.1"
    write_dicom_series(chest[:10], tmp_path, spacing_mm=SPACING, series_uid=uid)
    write_dicom_series(
        chest[10:],
        tmp_path / "b",
        spacing_mm=SPACING,
        series_uid=uid,
        origin_lps_mm=(0, 0, 20.0),
        rescale_intercept=-2000.0,
        rescale_slope=1.0,
    )
    np.testing.assert_array_equal(read_ct(tmp_path).hu, chest)


def test_uint16_stored_values_above_int16_range_are_kept(tmp_path, chest):
    hu = chest.astype(np.int32)
    hu[3, 5, 5] = 40000  # metal on an extended scale: does not fit int16
    write_dicom_series(hu, tmp_path, spacing_mm=SPACING, rescale_intercept=-2048.0)
    vol = read_ct(tmp_path)
    assert vol.hu.dtype == np.float32
    assert vol.hu[3, 5, 5] == 40000
    np.testing.assert_array_equal(vol.hu, hu)


@pytest.mark.parametrize("slices", [1, 2, 19, 20])
@pytest.mark.parametrize("kind", ["int16", "float32", "int32_chunks", "overflow_upper"])
def test_decode_in_two_halves_equals_one_serial_decode(tmp_path, kind, slices):
    hu = chest_like((slices, 32, 32)).astype(np.int32)
    slope, pixel, dtype, chunk = 1.0, sitk.sitkInt16, np.int16, None
    if kind == "float32":
        slope, pixel, dtype = 0.5, sitk.sitkFloat32, np.float32
    elif kind != "int16":
        pixel, chunk = sitk.sitkInt32, 3
        if kind == "overflow_upper":
            hu[-1, 5, 5] = 40000  # the last slice: always in the pool's half
    files = write_dicom_series(
        hu, tmp_path, spacing_mm=SPACING, rescale_slope=slope, rescale_intercept=-2048.0
    )
    names = [str(f) for f in sorted(files)]
    decoded_on = set()
    real_image = reader._sitk_image

    def recording(part, pixel_type):
        decoded_on.add(threading.current_thread().name)
        return real_image(part, pixel_type)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "_sitk_image", recording)
        serial = reader._sitk_decode(names, hu.shape, pixel, dtype, None, chunk=chunk)
        assert len(decoded_on) == 1
        with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
            split = reader._sitk_decode(names, hu.shape, pixel, dtype, pool, chunk=chunk)
    if kind == "overflow_upper":
        assert serial is None
        assert split is None
        return
    assert split.dtype == dtype
    np.testing.assert_array_equal(split, serial)
    np.testing.assert_array_equal(split, hu.astype(dtype))
    # The halves split on chunk boundaries: one chunk is decoded on this thread alone.
    assert any(t.startswith("decode") for t in decoded_on) == (slices > (chunk or 1))


def test_overflow_in_the_upper_chunks_reads_the_series_as_float32(tmp_path, chest, monkeypatch):
    hu = chest.astype(np.int32)
    hu[-2, 5, 5] = 40000
    write_dicom_series(hu, tmp_path, spacing_mm=SPACING, rescale_intercept=-2048.0)
    monkeypatch.setattr(reader, "_CHUNK_SLICES", 4)  # five chunks, split over two threads
    vol = read_ct(tmp_path)
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu, hu)


def test_a_failure_in_either_half_falls_back_to_pydicom(tmp_path, chest, monkeypatch):
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    upper_file = str(sorted(files)[-1])

    real_image = reader._sitk_image

    def upper_fails(part, pixel_type):
        if upper_file in part:
            raise RuntimeError("GDCM cannot decode the last file")
        return real_image(part, pixel_type)

    monkeypatch.setattr(reader, "_sitk_image", upper_fails)
    vol = read_ct(tmp_path)
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu, chest)


def test_a_failing_lower_half_waits_for_the_upper_one(tmp_path, chest, monkeypatch):
    names = [str(f) for f in sorted(write_dicom_series(chest, tmp_path, spacing_mm=SPACING))]
    real_image = reader._sitk_image
    upper_done = []

    def slow_upper_failing_lower(part, pixel_type):
        if names[0] in part:
            raise RuntimeError("lower half fails at once")
        time.sleep(0.2)
        image = real_image(part, pixel_type)
        upper_done.append(True)
        return image

    monkeypatch.setattr(reader, "_sitk_image", slow_upper_failing_lower)
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(RuntimeError, match="lower half"):
            reader._sitk_decode(names, chest.shape, sitk.sitkInt16, np.int16, pool)
        assert upper_done == [True]  # not still writing into the discarded array


def test_decode_refuses_images_of_another_size(tmp_path, chest):
    names = [str(f) for f in sorted(write_dicom_series(chest, tmp_path, spacing_mm=SPACING))]
    with pytest.raises(RuntimeError, match="image shape"):
        reader._sitk_decode(names, (len(names), 16, 32), sitk.sitkInt16, np.int16, None)


def test_sha256_covers_all_files_in_slice_order(tmp_path, chest):
    write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    vol = read_ct(tmp_path)
    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in vol.source.files))
    assert vol.source.sha256 == digest.hexdigest()


def test_source_info_has_no_patient_identifiers(tmp_path, chest):
    write_dicom_series(chest, tmp_path, spacing_mm=SPACING, patient_id="SECRET-ID-123")
    d = read_ct(tmp_path).source.to_dict()
    assert "SECRET-ID-123" not in repr(d)
    assert d["study_date"] == "20200101"
    assert d["modality"] == "CT"


# ----------------------------------------------------------------- series selection


def _write_multi_series_folder(root, chest):
    thin = write_dicom_series(
        chest_like((48, 32, 32)),
        root / "thin",
        spacing_mm=(1.0, 0.8, 0.8),
        series_description="thin",
    )
    thick = write_dicom_series(
        chest_like((16, 32, 32)),
        root / "thick",
        spacing_mm=(3.0, 0.8, 0.8),
        series_description="thick",
    )
    scout = write_dicom_series(
        chest[:1],
        root / "scout",
        spacing_mm=(1, 1, 1),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    write_secondary_capture(root / "sc" / "dose_screen.dcm")
    write_non_image(
        root / "sr" / "dose.dcm", sop_class=pydicom.uid.XRayRadiationDoseSRStorage, modality="SR"
    )
    (root / "README.txt").write_text("not dicom")
    return tuple(pydicom.dcmread(f).SeriesInstanceUID for f in (thin[0], thick[0], scout[0]))


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """(folder, (thin, thick, scout) UIDs): thin + thick CT, a scout, a secondary capture, an SR."""
    root = tmp_path_factory.mktemp("multi")
    return root, _write_multi_series_folder(root, chest_like())


def test_multi_series_folder_picks_thinnest_covering_ct(multi):
    tmp_path, (thin, thick, scout) = multi
    vol = read_ct(tmp_path)
    assert vol.source.series_uid == thin
    reason = vol.source.selection_reason
    assert reason.startswith("5 series found; chose " + thin)
    assert "localizer" in reason
    assert "secondary capture" in reason
    assert "modality SR" in reason
    assert "thicker" in reason


def test_list_series_reports_usability_and_reasons(multi):
    tmp_path, (thin, thick, scout) = multi
    series = list_series(tmp_path)
    assert [s.uid for s in series[:2]] == [thin, thick]
    assert [s.is_usable for s in series] == [True, True, False, False, False]
    by_uid = {s.uid: s for s in series}
    assert by_uid[thin].n_slices == 48
    assert by_uid[thin].slice_spacing_mm == pytest.approx(1.0)
    assert by_uid[thick].slice_spacing_mm == pytest.approx(3.0)
    assert "localizer" in by_uid[scout].reason


def test_series_uid_overrides_the_choice(multi):
    tmp_path, (thin, thick, scout) = multi
    vol = read_ct(tmp_path, series_uid=thick)
    assert vol.source.series_uid == thick
    assert vol.shape[0] == 16
    assert "requested" in vol.source.selection_reason


def test_unknown_series_uid_lists_the_available_ones(multi):
    tmp_path, (thin, thick, scout) = multi
    with pytest.raises(InputError, match="series 9.9.9 not found; available series") as err:
        read_ct(tmp_path, series_uid="9.9.9")
    assert thin in str(err.value)
    assert thick in str(err.value)


def test_choosing_a_localizer_explicitly_is_not_ct(multi):
    tmp_path, (_, _, scout) = multi
    with pytest.raises(NotCTError, match="localizer"):
        read_ct(tmp_path, series_uid=scout)


def test_covering_series_beats_thinner_partial_one(tmp_path):
    full = write_dicom_series(chest_like((20, 32, 32)), tmp_path / "full", spacing_mm=(3, 1, 1))
    write_dicom_series(chest_like((20, 32, 32)), tmp_path / "part", spacing_mm=(1, 1, 1))
    vol = read_ct(tmp_path)
    assert vol.source.series_uid == pydicom.dcmread(full[0]).SeriesInstanceUID
    assert "covers less" in vol.source.selection_reason


def _two_kernels(root: Path, smooth_uid: str, sharp_uid: str) -> None:
    """One acquisition reconstructed twice: the same geometry, kernels B30f and B70f."""
    for name, uid, kernel in (("soft", smooth_uid, "B30f"), ("lung", sharp_uid, "B70f")):
        for f in write_dicom_series(
            chest_like((20, 32, 32)), root / name, spacing_mm=SPACING, series_uid=uid
        ):
            ds = pydicom.dcmread(f)
            ds.ConvolutionKernel = kernel
            ds.save_as(f)


@pytest.mark.parametrize(("smooth_uid", "sharp_uid"), [("1.2.9", "1.2.1"), ("1.2.1", "1.2.9")])
def test_between_equal_series_the_preferred_kernel_wins_whatever_the_uids(
    tmp_path, smooth_uid, sharp_uid
):
    """Session 15: the tie-break was the slice count, then the UID, so two visits exported
    alike could be read with different kernels (the lesion bands read kernel noise)."""
    _two_kernels(tmp_path, smooth_uid, sharp_uid)
    vol = read_ct(tmp_path)
    assert vol.source.series_uid == sharp_uid
    assert vol.source.convolution_kernel == "B70f"
    assert "B30f, sharp kernel B70f preferred by io.prefer_kernel" in vol.source.selection_reason
    soft = read_ct(tmp_path, config=IOConfig(prefer_kernel="smooth"))
    assert soft.source.convolution_kernel == "B30f"


def test_kernel_names_of_the_major_vendors_are_classified():
    from lungvol.io.series import kernel_sharpness

    sharp = ("B70f", "Br64d", "Bl57d", "I70f", "FC51", "FC86", "LUNG", "BONEPLUS", "L")
    smooth = ("B30f", "Br40d", "I31f", "Qr40", "FC13", "STANDARD", "SOFT")
    assert [kernel_sharpness(k) for k in sharp] == ["sharp"] * len(sharp)
    assert [kernel_sharpness(k) for k in smooth] == ["smooth"] * len(smooth)
    assert [kernel_sharpness(k) for k in (None, "B", "YC", "FC35")] == [None] * 4
    assert kernel_sharpness(None, "Thorax 1.0 Lung") == "sharp"
    assert kernel_sharpness("", "Mediastinum 5 mm") == "smooth"
    with pytest.raises(ConfigError, match="io.prefer_kernel"):
        IOConfig(prefer_kernel="lung")


# ----------------------------------------------------------------- validation errors


def test_missing_slices_are_refused(tmp_path, chest):
    write_dicom_series(chest, tmp_path, spacing_mm=SPACING, drop_slices=[7, 8])
    with pytest.raises(InputError, match=r"6\.00 mm gap .* about 2 slice\(s\) missing"):
        read_ct(tmp_path)


def test_a_second_copy_of_an_image_is_read_once_with_a_warning(tmp_path, chest):
    """Exports sometimes write a file twice (same SOPInstanceUID and position): the series is
    read once, the same volume, with a warning that gives a count, not the file names (they
    may carry patient identifiers). Session 15: such a series was refused as two
    acquisitions."""
    import shutil

    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    plain = read_ct(tmp_path)
    shutil.copy(files[5], tmp_path / "zz-copy-of-slice-5.dcm")
    vol = read_ct(tmp_path)
    np.testing.assert_array_equal(vol.hu, plain.hu)
    assert vol.source.sha256 == plain.source.sha256
    notes = [w for w in vol.source.warnings if w.startswith("duplicate_images_ignored: 1 file")]
    assert len(notes) == 1
    assert "zz-copy" not in notes[0]


def test_two_images_at_one_position_are_still_refused(tmp_path, chest):
    """Not copies (another SOPInstanceUID at the same position: a second acquisition)."""
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    ds = pydicom.dcmread(files[5])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "zz-other.dcm")
    with pytest.raises(InputError, match="1 slice position"):
        read_ct(tmp_path)


def test_uneven_spacing_is_resampled_with_a_warning(tmp_path):
    hu = np.repeat(np.linspace(-1000, 200, 20)[:, None, None], 16, axis=1).repeat(16, axis=2)
    files = write_dicom_series(hu, tmp_path, spacing_mm=(2, 1, 1))
    z_src = np.array([2.0 * k + (0.2 if k % 3 == 1 else 0.0) for k in range(20)])
    for z, f in zip(z_src, files, strict=True):  # gaps 2.2, 1.8, 2.0, ... (median 2.0 mm)
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient[2] = float(z)
        ds.save_as(f)
    vol = read_ct(tmp_path)
    assert any("uneven slice spacing" in w for w in vol.source.warnings)
    assert vol.spacing_mm[0] == pytest.approx(2.0)
    # Linear interpolation between the two neighbouring source slices at each output z.
    expected = np.interp(np.arange(vol.shape[0]) * 2.0, z_src, np.linspace(-1000, 200, 20))
    np.testing.assert_allclose(vol.hu[:, 8, 8], expected, atol=0.51)


def test_too_few_slices_are_refused(tmp_path):
    write_dicom_series(chest_like((5, 32, 32)), tmp_path, spacing_mm=SPACING)
    with pytest.raises(InputError, match=r"only 5 slice\(s\); volumetry needs >= 16"):
        read_ct(tmp_path)


def _tilted_sphere(tilt_deg: float, shape=(24, 40, 40), spacing=(2.0, 1.0, 1.0)):
    """HU sampled on a tilted grid: a 10 mm-radius dense sphere centred at world (20, 18, 22)."""
    t = np.radians(tilt_deg)
    k, j, i = np.indices(shape, dtype=float)
    x = i * spacing[2]
    y = j * spacing[1] * np.cos(t)
    z = k * spacing[0] + j * spacing[1] * np.sin(t)
    inside = (x - 20) ** 2 + (y - 18) ** 2 + (z - 22) ** 2 <= 10**2
    return np.where(inside, 100, -1000).astype(np.int16)


def test_gantry_tilt_is_resampled_onto_an_axial_grid(tmp_path):
    write_dicom_series(
        _tilted_sphere(20.0), tmp_path, spacing_mm=(2.0, 1.0, 1.0), gantry_tilt_deg=20.0
    )
    vol = read_ct(tmp_path)
    assert any("gantry tilt of 20.0 degrees" in w for w in vol.source.warnings)
    np.testing.assert_allclose(vol.direction, np.eye(3))
    dense = vol.hu > -450
    idx = np.argwhere(dense).mean(axis=0)  # (z, y, x) index centroid
    centre = np.asarray(vol.origin_lps_mm) + idx[::-1] * np.asarray(vol.spacing_mm[::-1])
    np.testing.assert_allclose(centre, (20, 18, 22), atol=0.6)
    volume_mm3 = dense.sum() * np.prod(vol.spacing_mm)
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 10**3, rel=0.08)


def test_gantry_tilt_refused_by_policy_or_when_too_large(tmp_path):
    write_dicom_series(
        _tilted_sphere(20.0), tmp_path, spacing_mm=(2.0, 1.0, 1.0), gantry_tilt_deg=20.0
    )
    with pytest.raises(InputError, match="gantry_tilt_policy is 'refuse'"):
        read_ct(tmp_path, config=IOConfig(gantry_tilt_policy="refuse"))
    with pytest.raises(InputError, match="above io.max_gantry_tilt_deg"):
        read_ct(tmp_path, config=IOConfig(max_gantry_tilt_deg=10.0))


def test_stored_values_without_rescale_are_not_hu(tmp_path):
    rng = np.random.default_rng(0)
    write_dicom_series(
        rng.integers(0, 4096, (20, 16, 16)), tmp_path, spacing_mm=SPACING, rescale_intercept=0.0
    )
    with pytest.raises(NotHUError, match="lowest value is 0"):
        read_ct(tmp_path)


def test_display_export_with_padding_is_not_hu(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 16, 16))
    arr[:, :2] = -2000  # padding outside the field of view
    write_dicom_series(arr, tmp_path, spacing_mm=SPACING, rescale_intercept=-2048.0)
    with pytest.raises(NotHUError, match="no air anywhere"):
        read_ct(tmp_path)


def test_mr_series_is_not_ct(tmp_path, chest):
    write_dicom_series(chest, tmp_path, spacing_mm=SPACING, modality="MR")
    with pytest.raises(NotCTError, match="modality MR, not CT"):
        read_ct(tmp_path)


def test_folder_of_localizers_and_secondary_captures_is_not_ct(tmp_path, chest):
    write_dicom_series(
        chest[:2],
        tmp_path / "a",
        spacing_mm=SPACING,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    write_secondary_capture(tmp_path / "b" / "sc.dcm")
    with pytest.raises(NotCTError, match="no CT image series found"):
        read_ct(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_ct(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="is empty"):
        read_ct(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"no DICOM files found .*2 file\(s\) checked"):
        read_ct(tmp_path)


def test_unsupported_file_type(tmp_path):
    f = tmp_path / "scan.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(InputError, match="neither DICOM nor a supported volume file"):
        read_ct(f)


def test_corrupt_dicom_header_names_the_file(tmp_path, chest):
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    data = files[3].read_bytes()
    files[3].write_bytes(data[:300])  # preamble + part of the header
    with pytest.raises(InputError, match=files[3].name):
        read_ct(tmp_path)


def test_truncated_pixel_data_names_the_file(tmp_path, chest):
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    data = files[4].read_bytes()
    files[4].write_bytes(data[:-100])
    with pytest.raises(InputError, match=f"{files[4].name} is truncated"):
        read_ct(tmp_path)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_compressed_pixel_data_names_the_file(tmp_path, chest):
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING, transfer_syntax="rle_lossless")
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=files[4].name):
        read_ct(tmp_path)


def test_unmarked_coronal_scout_is_treated_as_a_localizer(tmp_path, chest):
    files = write_dicom_series(chest[:1], tmp_path, spacing_mm=SPACING)
    ds = pydicom.dcmread(files[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal, ImageType says nothing
    ds.save_as(files[0])
    with pytest.raises(NotCTError, match="localizer/scout image"):
        read_ct(tmp_path)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rescale=st.sampled_from([(1.0, -1024.0), (1.0, -2048.0), (2.0, -2000.0), (0.5, -1000.0)]),
    syntax=st.sampled_from(["explicit_vr_little_endian", "jpeg_lossless", "rle_lossless"]),
)
def test_write_then_read_round_trips_hu(tmp_path_factory, seed, rescale, syntax):
    slope, intercept = rescale
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 2000, (16, 8, 12)) // 2 * 2  # even: exact for slope 2 and 0.5
    hu[0, 0, 0] = -1000  # air, so the volume is recognisably HU
    folder = tmp_path_factory.mktemp("rt")
    write_dicom_series(
        hu,
        folder,
        spacing_mm=(1.5, 0.5, 0.5),
        rescale_slope=slope,
        rescale_intercept=intercept,
        transfer_syntax=syntax,
    )
    vol = read_ct(folder)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.hu.dtype == (np.int16 if float(slope).is_integer() else np.float32)


def test_bare_dicom_without_preamble_or_file_meta_is_read(tmp_path, chest):
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(f, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert files[0].read_bytes()[:2] == b"\x08\x00"  # starts with a group 0x0008 tag
    vol = read_ct(tmp_path)
    np.testing.assert_array_equal(vol.hu, chest)


def test_original_series_is_preferred_over_a_thinner_derived_one(tmp_path):
    original = write_dicom_series(chest_like((20, 32, 32)), tmp_path / "orig", spacing_mm=(2, 1, 1))
    write_dicom_series(
        chest_like((40, 32, 32)),
        tmp_path / "mpr",
        spacing_mm=(1, 1, 1),
        image_type=("DERIVED", "SECONDARY", "AXIAL"),
    )
    vol = read_ct(tmp_path)
    assert vol.source.series_uid == pydicom.dcmread(original[0]).SeriesInstanceUID
    assert "derived images" in vol.source.selection_reason


def test_in_plane_rotated_axial_series_keeps_its_direction(tmp_path, chest):
    files = write_dicom_series(chest, tmp_path, spacing_mm=SPACING)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [c, s, 0.0, -s, c, 0.0]
        ds.save_as(f)
    vol = read_ct(tmp_path)
    np.testing.assert_array_equal(vol.hu, chest)
    np.testing.assert_allclose(vol.direction[:, 0], [c, s, 0.0], atol=1e-6)
    np.testing.assert_allclose(vol.direction[:, 2], [0.0, 0.0, 1.0], atol=1e-6)
    assert vol.source.warnings == ()
