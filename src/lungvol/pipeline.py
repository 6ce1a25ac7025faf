"""One scan end to end: read -> segment lungs -> segment lesions -> measure -> write outputs.

Outputs are written into a temporary sibling folder (``.<name>.tmp-<random>``) and renamed into
place only when complete, so a crash, an error or Ctrl-C never leaves a half-written result.
An existing output folder is refused unless ``overwrite=True``; it is then replaced by renaming
the old one aside, the new one in, and deleting the old one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lungvol.io as lio
import lungvol.segmentation as lseg
from lungvol import __version__
from lungvol.config import LungvolConfig
from lungvol.errors import InputError
from lungvol.quantification import measure_scan
from lungvol.quantification.phase_check import measure_phase_check
from lungvol.quantification.provenance import json_safe, package_versions
from lungvol.reporting.qc import render_qc_png
from lungvol.types import CTVolume, LesionMask, LungMask, ScanMetrics

logger = logging.getLogger(__name__)

LUNGS_FILE = "lungs.nii.gz"
LESIONS_FILE = "lesions.nii.gz"
METRICS_FILE = "metrics.json"
QC_FILE = "qc.png"
RUN_FILE = "run.json"
SEG_FILE = "seg.dcm"
DEVICES = ("cpu", "cuda")


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def metrics_json(metrics: ScanMetrics) -> str:
    """The exact text of metrics.json (also what ``lungvol segment --json`` prints)."""
    return json.dumps(json_safe(metrics.to_dict()), indent=2, allow_nan=False) + "\n"


def _check_output(out_dir: Path, *, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} exists and is not a folder; choose another -o")
    if out_dir.exists() and not overwrite:
        raise InputError(
            f"output folder {out_dir} already exists; pass --overwrite to replace it or choose "
            "another -o"
        )


def check_input_and_output(in_path: Path, out_dir: Path, *, overwrite: bool) -> None:
    """Refuse a missing input, an output folder that holds the input (``--overwrite`` would
    delete the scan itself) and an existing output folder without ``overwrite``."""
    if not in_path.exists():
        raise InputError(
            f"input path {in_path} does not exist; pass a DICOM folder or a volume file"
        )
    resolved_in, resolved_out = in_path.resolve(), out_dir.resolve()
    if resolved_out == resolved_in or resolved_out in resolved_in.parents:
        raise InputError(
            f"output folder {out_dir} holds the input {in_path}; choose an -o outside the input"
        )
    _check_output(out_dir, overwrite=overwrite)


def _make_parents(folder: Path) -> list[Path]:
    """Create missing ancestors of ``folder``; return the ones created (deepest first)."""
    created: list[Path] = []
    for parent in [folder, *folder.parents][::-1]:
        if not parent.exists():
            try:
                parent.mkdir()
            except FileExistsError:  # a parallel worker made it first
                continue
            created.append(parent)
    return created[::-1]


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (someone else wrote there) or already gone: leave it
            break


def _sibling(out_dir: Path, kind: str) -> Path:
    """A hidden, unique sibling path such as ``.<name>.tmp-1a2b3c4d5e6f``."""
    return out_dir.parent / f".{out_dir.name}.{kind}-{secrets.token_hex(6)}"


def _publish(tmp_dir: Path, out_dir: Path, *, overwrite: bool) -> None:
    """Rename the finished ``tmp_dir`` to ``out_dir`` (replacing it only with ``overwrite``)."""
    if not out_dir.exists():
        os.rename(tmp_dir, out_dir)
        return
    _check_output(out_dir, overwrite=overwrite)  # it may have appeared while we worked
    old = _sibling(out_dir, "old")
    os.rename(out_dir, old)
    try:
        os.rename(tmp_dir, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_masks(
    tmp_dir: Path, volume: CTVolume, lungs: LungMask, lesions: LesionMask
) -> dict[str, str]:
    """Write ``lungs.nii.gz`` and ``lesions.nii.gz``; their names by output kind."""
    lio.write_label_nifti(lungs.labels, volume, tmp_dir / LUNGS_FILE)
    lio.write_label_nifti(lesions.labels, volume, tmp_dir / LESIONS_FILE)
    return {"lungs": LUNGS_FILE, "lesions": LESIONS_FILE}


def _write_reports(
    tmp_dir: Path,
    volume: CTVolume,
    lungs: LungMask,
    lesions: LesionMask,
    metrics: ScanMetrics,
    *,
    config: LungvolConfig,
    dicom_seg: bool,
) -> dict[str, str]:
    """Write ``qc.png`` (unless off) and ``seg.dcm`` (with ``dicom_seg``); their names."""
    outputs: dict[str, str] = {}
    if config.output.qc_png:
        render_qc_png(volume, lungs, lesions, metrics, tmp_dir / QC_FILE, dpi=config.output.qc_dpi)
        outputs["qc"] = QC_FILE
    if dicom_seg:
        lio.write_dicom_seg(lungs, lesions, volume, tmp_dir / SEG_FILE)
        outputs["dicom_seg"] = SEG_FILE
    return outputs


def _device_info(device: str) -> dict[str, Any]:
    try:
        from lungvol.device import describe_device
    except ImportError:  # deployment module absent: record the bare name
        return {"device": device}
    return describe_device(device)


def segment_scan(
    path: str | Path,
    out_dir: str | Path,
    *,
    config: LungvolConfig,
    series_uid: str | None = None,
    dicom_seg: bool = False,
    device: str = "cpu",
    overwrite: bool = False,
) -> ScanMetrics:
    """Read, segment and measure one CT scan and write its result folder atomically.

    The folder holds ``lungs.nii.gz`` (1 right, 2 left), ``lesions.nii.gz`` (1 ground-glass,
    2 solid), ``metrics.json``, ``qc.png`` (unless ``config.output.qc_png`` is false),
    ``run.json`` (resolved config, versions, input, options, timings) and, with
    ``dicom_seg=True``, ``seg.dcm``.

    Parameters
    ----------
    path : path-like
        DICOM file or folder, or a NIfTI/NRRD/MHA volume.
    out_dir : path-like
        Result folder; it must not exist unless ``overwrite``.
    config : LungvolConfig
    series_uid : str, optional
        SeriesInstanceUID to pick when the folder holds several series.
    dicom_seg : bool
        Also write a DICOM Segmentation (DICOM input only).
    device : {"cpu", "cuda"}
        Resolved device (see ``lungvol.device.resolve_device``), recorded in the provenance.
    overwrite : bool
        Replace an existing ``out_dir`` (atomically).

    Returns
    -------
    ScanMetrics
        The metrics also written to metrics.json.

    Raises
    ------
    InputError
        Missing input, existing output without ``overwrite``, ``dicom_seg`` for a non-DICOM
        input, or any reading problem (see ``lungvol.io.read_ct``).
    SegmentationError
        No lungs found.
    """
    started_utc = _utc_now()
    t_start = time.perf_counter()
    in_path = Path(path)
    out_dir = Path(out_dir).absolute()
    if device not in DEVICES:
        raise InputError(f"device must be one of {DEVICES} (resolved), got {device!r}")
    check_input_and_output(in_path, out_dir, overwrite=overwrite)

    timings: dict[str, float] = {}
    # CPU seconds per stage (all threads): unlike wall time, not inflated by other load.
    cpu_s: dict[str, float] = {}
    t, c = time.perf_counter(), time.process_time()
    volume = lio.read_ct(in_path, series_uid=series_uid, config=config.io)
    timings["read"] = time.perf_counter() - t
    cpu_s["read"] = time.process_time() - c
    if dicom_seg and volume.source.kind != "dicom":
        raise InputError(
            f"--dicom-seg needs a DICOM input, but {in_path} is {volume.source.kind}; "
            "drop --dicom-seg or pass the DICOM series"
        )
    logger.info("read %s in %.2f s: shape %s", volume.source.kind, timings["read"], volume.shape)

    t, c = time.perf_counter(), time.process_time()
    lungs = lseg.segment_lungs(volume, config.lungs)
    timings["lungs"] = time.perf_counter() - t
    cpu_s["lungs"] = time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    lesions = lseg.segment_lesions(volume, lungs, config.lesions)
    timings["lesions"] = time.perf_counter() - t
    cpu_s["lesions"] = time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    lungs, lesions = lseg.recover_subpleural_layer(volume, lungs, lesions, config)
    timings["subpleural"] = time.perf_counter() - t
    cpu_s["subpleural"] = time.process_time() - c
    logger.info("lungs %.2f s, lesions %.2f s", timings["lungs"], timings["lesions"])
    created = _make_parents(out_dir.parent)
    tmp_dir = _sibling(out_dir, "tmp")
    try:
        tmp_dir.mkdir()  # mode from the umask, unlike tempfile.mkdtemp's 0700
        # The mask files need only the masks: they are written on a second thread while the
        # scan is measured (SimpleITK's writer releases the GIL; the 400-slice phantom:
        # about 0.4 s sooner). Leaving the block waits for it, also on an error.
        with ThreadPoolExecutor(max_workers=1) as pool:
            masks_written = pool.submit(_write_masks, tmp_dir, volume, lungs, lesions)
            phase_check = None
            if config.quantification.phase_check:
                t, c = time.perf_counter(), time.process_time()
                phase_check = measure_phase_check(volume, lungs, lesions, config)
                timings["phase_check"] = time.perf_counter() - t
                cpu_s["phase_check"] = time.process_time() - c
            c = time.process_time()
            metrics = measure_scan(
                volume, lungs, lesions, config, timings_s=timings, device=device,
                phase_check=phase_check,
            )
            timings["quantification"] = metrics.provenance["timings_s"]["quantification"]
            cpu_s["quantification"] = time.process_time() - c
            # "write": the wall time writing adds after the measurement (the masks' share
            # overlapped it; their CPU time is in "quantification").
            t, c = time.perf_counter(), time.process_time()
            outputs = masks_written.result()
            outputs.update(_write_reports(
                tmp_dir, volume, lungs, lesions, metrics, config=config, dicom_seg=dicom_seg
            ))
        timings["write"] = time.perf_counter() - t
        cpu_s["write"] = time.process_time() - c
        timings["total"] = time.perf_counter() - t_start
        provenance = dict(metrics.provenance)
        provenance["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        metrics = dataclasses.replace(metrics, provenance=provenance)
        (tmp_dir / METRICS_FILE).write_text(metrics_json(metrics))
        outputs["metrics"] = METRICS_FILE
        run = {
            "lungvol_version": __version__,
            "started_utc": started_utc,
            "finished_utc": _utc_now(),
            "command": {
                "path": str(in_path),
                "out_dir": str(out_dir),
                "series_uid": series_uid,
                "dicom_seg": dicom_seg,
                "device": device,
                "overwrite": overwrite,
            },
            "config_hash": config.hash,
            "config_source": config.source,
            "config": config.to_dict(),
            "input": volume.source.to_dict(),
            "device": _device_info(device),
            "versions": package_versions(),
            "timings_s": provenance["timings_s"],
            "cpu_s": {k: round(v, 4) for k, v in cpu_s.items()},
            "outputs": {**outputs, "run": RUN_FILE},
        }
        (tmp_dir / RUN_FILE).write_text(json.dumps(json_safe(run), indent=2) + "\n")
        _publish(tmp_dir, out_dir, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        _remove_empty(created)
        raise
    logger.info("wrote %s in %.2f s (total %.2f s)", out_dir, timings["write"], timings["total"])
    return metrics
