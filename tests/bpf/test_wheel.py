"""The wheel as a user installs it: one import name, the BPF source inside, and a plain install
in a fresh virtual environment runs the tracer with no configuration."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from harness.tracer_process import TracerProcess

REPO = Path(__file__).resolve().parents[2]
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("ociresolve-*.whl")
    return built


def test_one_import_name_and_the_bpf_source(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("ociresolve-")}
    assert tops == {"ociresolve"}, tops
    assert "ociresolve/tracer/probe.py" in names
    assert "ociresolve/bpf/connect.bpf.c" in names
    assert "ociresolve/api/api.proto" in names
    assert "ociresolve/py.typed" in names


@pytest.mark.root
@pytest.mark.bpf
def test_a_plain_install_runs_the_tracer(
    wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
    )
    # BCC is the distribution's (python3-bpfcc), made visible the way the tracer's error
    # message tells a user to: a .pth naming a directory that holds only a `bcc` link.
    link_dir = venv / "system-bcc"
    link_dir.mkdir()
    (link_dir / "bcc").symlink_to(DEBIAN_BCC)
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert purelib != sysconfig.get_paths()["purelib"]
    (Path(purelib) / "system-bcc.pth").write_text(f"{link_dir}\n")

    monkeypatch.delenv("OCIRESOLVE_BPF_DIR", raising=False)
    where = subprocess.run(
        [python, "-c", "import ociresolve.tracer.probe as p; print(p.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(purelib), where  # not the checkout
    tracer = TracerProcess(
        ["--no-cri", "--socket", str(tmp_path / "nothing.sock")], python=python, cwd=tmp_path
    )
    with tracer:
        pass
    assert tracer.lines, tracer.stderr
