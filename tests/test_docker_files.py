"""The Docker path (docker/): checked without Docker, so that the files stay coherent wherever the suite runs."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="1.5">
<testcase classname="tests.test_a" name="test_ok" time="0.25"/>
<testcase classname="tests.test_a" name="test_bad" time="0.5"><failure message="assert 1 == 2">details
</failure></testcase>
<testcase classname="tests.test_b" name="test_skip" time="0"><skipped message="no gdb" type="pytest.skip"/></testcase>
<testcase classname="tests.test_b" name="test_err" time="0.1"><error message="fixture broke">trace</error></testcase>
</testsuite></testsuites>
"""


def instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    return joined


def test_dockerfile_builds_from_debian_and_runs_the_readme_steps(repo_root: Path) -> None:
    steps = instructions(repo_root / "docker" / "Dockerfile")
    assert steps[0] == "FROM debian:bookworm"
    runs = " ".join(step for step in steps if step.startswith("RUN "))
    for package in ("build-essential", "pkg-config", "python3", "python3-venv", "gdb", "tmux"):
        assert f" {package} " in runs, package
    assert "python3 -m venv .venv" in runs
    assert "-e '.[test]'" in runs
    assert "make -C weensyos-src" in runs
    assert any(step.startswith("COPY ") and step.endswith(" . .") for step in steps)
    entrypoint = [step for step in steps if step.startswith("ENTRYPOINT ")]
    assert entrypoint == ['ENTRYPOINT ["/work/weensy-harness/docker/entrypoint.sh"]']
    entry = (repo_root / "docker" / "entrypoint.sh").read_text()
    assert 'args=(-n auto "${extra[@]}" "$@")' in entry
    assert '.venv/bin/python -m pytest "${args[@]}"' in entry


def test_dockerignore_keeps_local_state_out_but_not_what_the_tests_read(repo_root: Path) -> None:
    patterns = {line.strip() for line in (repo_root / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "build", "test-results"} <= patterns
    for needed in ("README.md", ".ci", "docker", "tests", "weensyos-src", "harness", "pyproject.toml"):
        assert needed not in patterns


@pytest.mark.parametrize("script", ["test.sh", "entrypoint.sh", "pip-env.sh"])
def test_shell_scripts_parse(repo_root: Path, script: str) -> None:
    result = subprocess.run(["bash", "-n", str(repo_root / "docker" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_test_sh_help_documents_the_user_kernel_option(repo_root: Path) -> None:
    result = subprocess.run(["bash", str(repo_root / "docker" / "test.sh"), "--help"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "--build-dir DIR" in result.stdout
    assert "WEENSY_BUILD_DIR=/work/build-user WEENSY_NO_BUILD=1" in result.stdout


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_pip_bridge_serves_only_the_paths_it_is_given(tmp_path: Path, repo_root: Path) -> None:
    index = tmp_path / "mirror" / "simple" / "demo"
    index.mkdir(parents=True)
    (index / "index.html").write_text('<a href="../../files/demo-1.0-py3-none-any.whl">demo</a>')
    (tmp_path / "mirror" / "files").mkdir()
    (tmp_path / "mirror" / "files" / "demo-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (tmp_path / "ca.pem").write_text("certificate")
    (tmp_path / "secret").write_text("not for the build")
    port_file = tmp_path / "port"
    server = subprocess.Popen([sys.executable, str(repo_root / "docker" / "pip_bridge.py"), "--port-file",
                               str(port_file), str(tmp_path / "mirror" / "simple"), str(tmp_path / "mirror"),
                               str(tmp_path / "ca.pem")])
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert time.monotonic() < deadline and server.poll() is None, "the bridge did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text().strip()}"
        root = tmp_path.resolve()
        assert fetch(f"{base}{root}/mirror/simple/demo/")[0] == 200
        assert fetch(f"{base}{root}/mirror/files/demo-1.0-py3-none-any.whl") == (200, b"wheel")
        assert fetch(f"{base}{root}/ca.pem") == (200, b"certificate")
        assert fetch(f"{base}{root}/secret")[0] == 404
        assert fetch(f"{base}{root}/mirror/../secret")[0] == 404
        assert fetch(f"{base}/etc/passwd")[0] == 404
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_pip_env_drops_empty_pip_variables(repo_root: Path) -> None:
    script = f'. "{repo_root}/docker/pip-env.sh"; env | grep -E "^(PIP_|WEENSY_PIP)" | sort'
    env = {"PATH": "/usr/bin:/bin", "PIP_INDEX_URL": "", "PIP_EXTRA_INDEX_URL": "https://mirror.example/simple",
           "PIP_FIND_LINKS": "", "PIP_TRUSTED_HOST": "", "WEENSY_PIP_CERT_URL": ""}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["PIP_EXTRA_INDEX_URL=https://mirror.example/simple"]


def test_the_build_never_shares_the_host_network(repo_root: Path) -> None:
    script = (repo_root / "docker" / "test.sh").read_text()
    assert "--network host" not in script and "--network=host" not in script
    assert "--network host" not in (repo_root / "docker" / "Dockerfile").read_text()
    refused = subprocess.run(["bash", str(repo_root / "docker" / "test.sh")], capture_output=True, text=True,
                             timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": str(repo_root),
                                  "WEENSY_DOCKER_BUILD_NETWORK": "host"})
    assert refused.returncode == 2
    assert "WEENSY_DOCKER_BUILD_NETWORK=host is refused" in refused.stderr


def test_temporary_files_are_made_private_not_just_named(repo_root: Path) -> None:
    for path in (repo_root / "docker").iterdir():
        assert "mktemp -u" not in path.read_text(), path.name  # a name only: another process can take it first


def test_the_test_container_runs_confined(repo_root: Path) -> None:
    script = (repo_root / "docker" / "test.sh").read_text()
    run_args = script[script.index("run_args=("):]
    run_args = run_args[:run_args.index(")\n")]
    for option in ("--network none", "--cap-drop ALL", "--security-opt no-new-privileges", '--memory "$memory"',
                   '--memory-swap "$memory"', '--pids-limit "$pids"'):
        assert option in run_args, option
    assert "-v " not in run_args  # nothing of the host is mounted writable: results are copied out
    assert 'docker cp "$container:/work/test-results/."' in script


def test_the_tests_run_as_an_unprivileged_user(repo_root: Path) -> None:
    steps = instructions(repo_root / "docker" / "Dockerfile")
    users = [step.split()[1] for step in steps if step.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    created = next(step for step in steps if "useradd" in step)
    assert f" {users[-1]}" in created and "--uid 0 " not in created
    copies = [step for step in steps if step.startswith("COPY ")]
    assert all(f"--chown={users[-1]}:" in step for step in copies)  # the user owns its tree, root owns the rest


def test_pip_bridge_refuses_to_listen_on_every_interface(tmp_path: Path, repo_root: Path) -> None:
    for address in ("0.0.0.0", "::", "not-an-address"):
        result = subprocess.run([sys.executable, str(repo_root / "docker" / "pip_bridge.py"), "--port-file",
                                 str(tmp_path / "port"), "--host", address, str(tmp_path)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1, address
        assert not (tmp_path / "port").exists()
