"""The project's PEP 517 build backend: setuptools, plus our Unicorn engine built (or found in its cache) first.

pyproject.toml names this module with `backend-path = ["engine"]`, so the README's set-up command
(`pip install -e '.[test]'`) builds the patched engine with no extra step. Every hook is setuptools' own; only
the two that make a wheel (editable or not) build the engine first. If the engine cannot be built the install
fails with one line saying what is missing: there is no silent fall-back to the stock engine.

An editable install also compiles the package's modules to bytecode in place (`__pycache__`, ignored by git),
as pip does for a regular install: every `python -m harness` then starts from bytecode, also where nothing may
write it at run time (PYTHONDONTWRITEBYTECODE, a read-only checkout), instead of compiling the harness's
modules again at each start (a large part of a command's start-up).
"""

from __future__ import annotations

import compileall
import sys
from pathlib import Path

import weensy_engine
from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every hook we do not wrap is setuptools' own


def _engine() -> None:
    try:
        weensy_engine.build(progress=lambda line: print(line, file=sys.stderr))
    except weensy_engine.EngineBuildError as error:
        weensy_engine.report(error, sys.stderr)
        raise SystemExit(f"error: {error}") from None


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):  # noqa: ANN001, ANN201
    _engine()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):  # noqa: ANN001, ANN201
    _engine()
    wheel = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    here = Path(__file__).resolve().parent
    compileall.compile_dir(here.parent / "harness", quiet=2)
    compileall.compile_file(here / "weensy_engine.py", quiet=2)  # loaded at every start to find the library
    return wheel
