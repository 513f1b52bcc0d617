"""docker/build.py hands the build this machine's pip sources: settings parsed from
`pip config list` (environment over files), local paths mounted read-only under their own
prefix and the settings rewritten to match."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("docker_build", REPO / "docker" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def test_env_settings_win_and_unrelated_keys_are_ignored():
    listing = "\n".join([
        ":env:.cert=''",
        ":env:.find-links='/from/env'",
        "global.cert='/etc/ssl/certs/ca.crt'",
        "global.find-links='/from/file'",
        "global.timeout='60'",
        "install.constraint='/c.txt'",
    ])
    assert build.pip_settings(listing) == {
        "cert": "/etc/ssl/certs/ca.crt",  # an empty env value does not hide the file's
        "find-links": "/from/env", "constraint": "/c.txt"}


def test_local_paths_are_mounted_under_a_prefix_and_the_values_rewritten(tmp_path):
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    (tmp_path / "pypi-more" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    settings = {
        "extra-index-url": f"file://{tmp_path}/pypi/simple file://{tmp_path}/pypi-more/simple "
                           "https://mirror.example/simple",
        "find-links": str(tmp_path / "wheels"),
        "index-url": "https://pypi.org/simple",
    }
    options = build.build_options(settings)
    prefix = build.MOUNT_PREFIX
    volumes = [options[i + 1] for i, o in enumerate(options) if o == "--volume"]
    args = dict(options[i + 1].split("=", 1) for i, o in enumerate(options)
                if o == "--build-arg")
    # An index is mounted with its parent: its pages link to ../../files/*.whl.
    assert volumes == [f"{tmp_path}/pypi:{prefix}{tmp_path}/pypi:ro",
                       f"{tmp_path}/pypi-more:{prefix}{tmp_path}/pypi-more:ro",
                       f"{tmp_path}/wheels:{prefix}{tmp_path}/wheels:ro"]
    assert args["PIP_EXTRA_INDEX_URL"] == (
        f"file://{prefix}{tmp_path}/pypi/simple file://{prefix}{tmp_path}/pypi-more/simple "
        "https://mirror.example/simple")
    assert args["PIP_FIND_LINKS"] == f"{prefix}{tmp_path}/wheels"
    assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"
