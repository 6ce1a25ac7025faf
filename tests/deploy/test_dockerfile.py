"""Static checks of the Dockerfile, .dockerignore and the image scripts (no container engine)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SCRIPTS = REPO / "scripts"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also covers what is below it."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        body = body.strip("/")
        regex = ""
        i = 0
        while i < len(body):
            if body.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif body.startswith("**", i):
                regex += ".*"
                i += 2
            elif body[i] == "*":
                regex += "[^/]*"
                i += 1
            elif body[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(body[i])
                i += 1
        parts = path.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_base_image_is_a_build_argument_declared_before_from(instructions) -> None:
    keywords = [k for k, _ in instructions]
    first_from = keywords.index("FROM")
    args_before = [a for k, a in instructions[:first_from] if k == "ARG"]
    assert any(a.startswith("BASE=") for a in args_before), args_before
    default = next(a for a in args_before if a.startswith("BASE=")).split("=", 1)[1]
    assert default.startswith("python:3.11"), "CPU image defaults to the official Python image"
    assert instructions[first_from][1].split()[0] in ("${BASE}", "$BASE")
    assert keywords.count("FROM") == 1


def test_image_runs_as_non_root_in_data_with_lungvol_entrypoint(instructions) -> None:
    users = [a for k, a in instructions if k == "USER"]
    assert users, "the image must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    last_user_at = max(i for i, (k, _) in enumerate(instructions) if k == "USER")
    assert not any(k == "RUN" for k, _ in instructions[last_user_at:]), "RUN after USER"
    workdirs = [a for k, a in instructions if k == "WORKDIR"]
    assert workdirs[-1] == "/data"
    entrypoints = [a for k, a in instructions if k == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["lungvol"], "exec form, so signals reach lungvol"


def test_cuda_variant_is_selected_by_build_arguments_only(instructions) -> None:
    args = {a.split("=", 1)[0] for k, a in instructions if k == "ARG"}
    assert {"BASE", "TORCH", "TORCH_INDEX_URL"} <= args
    run_text = " ".join(a for k, a in instructions if k == "RUN")
    assert '[ -n "$TORCH" ]' in run_text  # no torch in the default CPU image
    assert "apt-get install" in run_text  # bare bases (no python3) work
    assert "python3-venv" in run_text


def test_dockerfile_has_no_machine_specific_settings() -> None:
    # Local indexes and certificate bundles are passed in by scripts/build_image.sh only.
    text = DOCKERFILE.read_text()
    for marker in ("/opt/pypi", "/opt/wheels", "ca-certificates.crt", "PIP_CERT", "localhost/"):
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert marker not in body, marker


def test_copied_sources_exist_and_are_not_ignored(instructions, ignore_patterns) -> None:
    sources = []
    for keyword, args in instructions:
        if keyword == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert sources, "the Dockerfile copies the project in"
    if "." in sources:  # the whole (allow-listed) context: what the install needs must be in it
        sources.remove(".")
        sources += ["pyproject.toml", "README.md", "src", "configs", "sample_data"]
    for source in sources:
        rel = source.rstrip("/")
        assert (REPO / rel).exists() or rel == "sample_data", f"COPY source {rel} missing"
        assert not _dockerignore_excludes(rel, ignore_patterns), f"{rel} is .dockerignored"
    for needed in (
        "src/lungvol/cli/segment.py",
        "src/lungvol/default.yaml",
        "configs/default.yaml",
        "sample_data/phantom_small/dicom/000.dcm",
        "sample_data/phantom_small/truth_lungs.nii.gz",
    ):
        assert not _dockerignore_excludes(needed, ignore_patterns), needed


@pytest.mark.parametrize(
    "path",
    [
        ".git",
        ".venv",
        "tests/data",
        "tests/deploy/test_container.py",
        "outputs",
        "output/scan1/metrics.json",
        "demo_output/phantom_small",
        "benchmarks/results/run.json",
        "src/lungvol/__pycache__/types.cpython-311.pyc",
        "scratch/patient.nii.gz",
        "patient_dicom/IM0001",
        "src/lungvol.egg-info/PKG-INFO",
        "Makefile",
    ],
)
def test_dockerignore_keeps_tests_data_outputs_and_envs_out(path: str, ignore_patterns) -> None:
    assert _dockerignore_excludes(path, ignore_patterns)


def test_dockerignore_matcher_is_not_vacuous() -> None:
    assert not _dockerignore_excludes("src/x.py", ["tests", "*.log"])
    assert _dockerignore_excludes("a/b.nii.gz", ["**/*.nii.gz"])
    assert not _dockerignore_excludes("sample_data/a.nii.gz", ["**/*.nii.gz", "!sample_data/**"])
    assert not _dockerignore_excludes("src/a/b.py", ["*", "!src/"])
    assert _dockerignore_excludes("src/a/__pycache__/b.pyc", ["*", "!src/", "**/__pycache__"])


def test_image_constraints_pin_every_runtime_dependency() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(pyproject["dependencies"])
    for extra in ("dask", "parquet"):
        wanted += pyproject["optional-dependencies"].get(extra, [])

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pinned = {}
    for line in (SCRIPTS / "image-constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraint {line!r} is not an exact pin"
            pinned[norm(name)] = version
    for requirement in wanted:
        name = norm(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        assert name in pinned, (
            f"{name} is a dependency but not pinned for the image; run "
            "scripts/build_image.sh --update-constraints"
        )


@pytest.mark.parametrize("script", ["build_image.sh", "run_in_image.sh"])
def test_scripts_are_valid_bash_and_executable(script: str) -> None:
    path = SCRIPTS / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    subprocess.run([bash, "-n", str(path)], check=True)
    help_text = subprocess.run(
        [bash, str(path), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "Usage:" in help_text
