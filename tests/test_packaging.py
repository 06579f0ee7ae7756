"""What `pip install .` installs is enough to run: the README's first command on a new machine.

The editable install the other tests use reads every file from the checkout, so a file
missing from the package (receiver/default.rules once was: `auditstream run` then failed
with "cannot read" on a fresh machine) shows only in a real install.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def clean_source(into: Path) -> Path:
    """The checkout's files as a fresh clone has them (no build/, no egg-info: an earlier
    in-tree build must not supply a file the package itself leaves out)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.decode(errors='replace').strip()}")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


@pytest.mark.slow
def test_a_real_install_checks_its_default_rules(tmp_path: Path) -> None:
    """`pip install .` into a new venv, then `auditstream check-config` loads the packaged
    default rules (and the C modules are built), from the installed copy, not the checkout."""
    env_dir = tmp_path / "venv"
    # The dependencies come from this interpreter's site-packages: nothing is downloaded.
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(clean_source(tmp_path / "src"))],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    where = subprocess.run(
        [str(python), "-c", "import receiver.live, assembler.native_parse as p; print(receiver.live.__file__, p.__file__)"],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(str(env_dir)) for path in where), where
    config = tmp_path / "c.toml"
    config.write_text('[receiver]\nsource = "netlink"\n')
    check = subprocess.run(
        [str(env_dir / "bin" / "auditstream"), "check-config", "-c", str(config)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "source netlink, 8 rules" in check.stdout, check.stdout
