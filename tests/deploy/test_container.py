"""The image builds and runs: scripts/build_image.sh, then `lungvol segment` inside the image.

There is no Docker engine here and `podman run` cannot set rlimits in this sandbox, so the image
is built with podman (vfs, chroot isolation) on a debootstrap base and run from its exported root
filesystem with chroot (scripts/run_in_image.sh), as the image's USER, ENV, WORKDIR, ENTRYPOINT.
Needs root, podman and debootstrap (apt-get install podman debootstrap); skips otherwise.
A first build takes a few minutes; later ones reuse the cached base and layers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "build_image.sh"
RUN = REPO / "scripts" / "run_in_image.sh"
IMAGE = "localhost/lungvol:test"
BUILD_TIMEOUT_S = 660
_MAIN_FROM = (
    "import lungvol; assert lungvol.__file__.startswith({src!r}), lungvol.__file__; "
    "from lungvol.cli import main; main()"
)


def _require_container_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("container build/run needs root (debootstrap, podman vfs storage, chroot)")
    missing = [t for t in ("podman", "debootstrap", "chroot", "mount") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install podman debootstrap)")


@pytest.fixture(scope="module")
def image() -> str:
    _require_container_tools()
    proc = subprocess.run(
        ["bash", str(BUILD), "--tag", IMAGE],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        cwd=REPO,
    )
    if proc.returncode != 0:
        pytest.fail(f"image build failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    assert proc.stdout.strip().splitlines()[-1] == IMAGE
    return IMAGE


def _run_in_image(
    image: str, *args: str, mounts: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    command = ["bash", str(RUN), "--image", image]
    for mount in mounts:
        command += ["--mount", mount]
    return subprocess.run(
        [*command, "--", *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )


@pytest.fixture(scope="module")
def sample_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample DICOM series; a freshly written small phantom if it is not bundled."""
    bundled = REPO / "sample_data" / "phantom_small" / "dicom"
    if bundled.is_dir():
        return bundled
    phantom = pytest.importorskip("lungvol.phantom")
    out = tmp_path_factory.mktemp("phantom")
    paths = phantom.write_phantom(phantom.make_phantom(seed=0), out, fmt="dicom")
    return Path(paths.get("ct", out / "dicom"))


def test_image_entrypoint_is_lungvol_as_non_root(image: str) -> None:
    version = _run_in_image(image, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("lungvol ")
    # the image's only torch-free path: --device cuda is refused with one clear line
    refused = _run_in_image(image, "segment", "/nonexistent", "--device", "cuda")
    assert refused.returncode == 1, refused.stderr
    assert "torch" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_segment_inside_image_matches_the_host(
    image: str, sample_scan: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image's user (uid 10001) writes here, as with a docker -v mount
    proc = _run_in_image(
        image,
        "segment",
        "/data/in",
        "-o",
        "/data/out/scan",
        "--device",
        "cpu",
        mounts=(f"{sample_scan}:/data/in", f"{out}:/data/out"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = out / "scan"
    for name in ("metrics.json", "lungs.nii.gz", "lesions.nii.gz", "run.json"):
        assert (result / name).is_file(), f"{name} missing in the image's output"
    assert (result / "metrics.json").stat().st_uid != 0, "the image must not write as root"
    in_image = json.loads((result / "metrics.json").read_text())
    run_info = json.loads((result / "run.json").read_text())
    assert "cpu" in json.dumps(run_info)  # the resolved device is in the provenance

    # The same sources on the host's .venv: the image's own copy of src/ (the working tree may
    # have moved on since the build), so only the environment differs.
    rootfs = subprocess.run(
        ["bash", str(RUN), "--image", image, "--print-rootfs"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    image_src = Path(rootfs) / "opt" / "lungvol" / "src"
    assert (image_src / "lungvol" / "pipeline.py").is_file()
    host_out = tmp_path / "host"
    host = subprocess.run(
        [sys.executable, "-c", _MAIN_FROM.format(src=str(image_src))]
        + ["segment", str(sample_scan), "-o", str(host_out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(image_src)},
    )
    assert host.returncode == 0, host.stderr[-4000:]
    on_host = json.loads((host_out / "metrics.json").read_text())

    compared = [k for k, v in on_host.items() if k.endswith(("_ml", "_pct")) and v is not None]
    assert "lung_volume_ml" in compared
    assert in_image["lung_volume_ml"] > 0
    for key in compared:
        assert math.isclose(in_image[key], on_host[key], rel_tol=1e-9, abs_tol=1e-9), (
            key,
            in_image[key],
            on_host[key],
        )


def test_cohort_run_inside_image_with_worker_processes(image: str, tmp_path: Path) -> None:
    simulate = pytest.importorskip("lungvol.cohort.simulate")
    from lungvol.cohort.trial import load_trial

    trial = load_trial(None)
    cohort = tmp_path / "cohort"
    simulate.simulate_trial(
        cohort, trial, subjects_per_arm=(1, 1), size="tiny", missing_fraction=0.5, seed=5
    )
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o777)
    proc = _run_in_image(
        image,
        "cohort",
        "run",
        "/data/cohort",
        "-o",
        "/data/results",
        "--workers",
        "2",
        "--trial",
        "/opt/lungvol/configs/shi2022.yaml",
        "--no-progress",
        mounts=(f"{cohort}:/data/cohort", f"{results}:/data/results"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with (results / "scans.csv").open() as fh:
        rows = fh.read().splitlines()[1:]
    n_scans = len([p for p in cohort.rglob("ct.nii.gz")])
    assert len(rows) == n_scans > 0
    assert f"{n_scans} done" in proc.stdout
    assert not (results / "failures.csv").read_text().splitlines()[1:]
