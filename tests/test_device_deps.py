"""The GPU machine's dependencies: ``device_check.py deps`` and ``wheels``, and the carried wheels
in ``scripts/device_check.sh``.

``deps`` runs in a subprocess whose ``sitecustomize`` (first on PYTHONPATH) hides, breaks or
mislabels packages, as a machine lacking them would; ``wheels`` is given small wheels made here;
the script takes its GPU path with stand-in commands (``DEVICE_CHECK_ASSUME_GPU=1``).
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile

from test_device_check import GPU_STEPS, run_script

from dcac_plugin.benchmarks import device_check

HELPER = device_check.__file__
# Meta-path finder put first by sitecustomize: the named modules' imports raise as given, although
# the real packages are installed here (a spec is returned, so probes such as find_spec still
# see them; only importing raises, as with a package that is absent or broken).
SITECUSTOMIZE = '''
import importlib.abc, importlib.machinery, sys

RAISES = {raises!r}


class Raising(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        kind, message = RAISES[module.__name__]
        if kind == "missing":
            raise ModuleNotFoundError(message, name=module.__name__)
        raise {{"broken": RuntimeError, "exit": SystemExit}}[kind](message)


class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in RAISES:
            return importlib.machinery.ModuleSpec(name, Raising())
        return None


sys.meta_path.insert(0, Finder())
'''


def hiding_folder(tmp_path, raises, fake_versions=()):
    """A folder for PYTHONPATH: the sitecustomize above, and ``NAME-VERSION.dist-info`` folders that
    give installed packages another version as importlib.metadata reads it."""
    folder = tmp_path / "hide"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(raises=raises))
    for name, version in fake_versions:
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return str(folder)


def run_deps(tmp_path, pythonpath):
    out = tmp_path / "deps.json"
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", HOME=str(tmp_path),
               MPLCONFIGDIR=str(tmp_path / "mpl"), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, HELPER, "deps", "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    return done, json.loads(out.read_text())


def make_wheel(folder, name, version, requires=(), requires_python=None, tag="py3-none-any", module=None):
    """A minimal valid wheel in ``folder`` (METADATA, WHEEL, RECORD with hashes, optional module)."""
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {line}\n" for line in requires)
    if requires_python:
        meta += f"Requires-Python: {requires_python}\n"
    files = {f"{info}/METADATA": meta,
             f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    if module:
        files[f"{module}/__init__.py"] = "WHERE = __file__\n"
    record = ""
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(text.encode())}\n"
    files[f"{info}/RECORD"] = record + f"{info}/RECORD,,\n"
    path = os.path.join(folder, f"{name}-{version}-{tag}.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


# ----------------------------------------------------------------------------- deps


def test_deps_names_every_missing_broken_or_mispinned_package_in_one_line(tmp_path):
    hide = hiding_folder(tmp_path, {"yacs": ("missing", "No module named 'yacs'"),
                                    "onnxruntime": ("broken", "onnxruntime is broken here")},
                         fake_versions=[("h5py", "2.10.0"), ("timm", "1.0.0")])
    done, report = run_deps(tmp_path, os.pathsep.join([hide, device_check.REPO_ROOT]))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0] == ("device_check deps: missing or unusable: yacs (missing); "
                        "h5py (wrong version: 2.10.0 is outside >=3.0); "
                        "onnxruntime (broken: RuntimeError: onnxruntime is broken here); " + device_check.WHEELS_HINT)
    assert "scripts/device_wheels.sh" in lines[0] and ".whl" in lines[0]
    status = {entry["package"]: entry["status"] for entry in report["packages"]}
    assert status["yacs"] == "missing" and status["onnxruntime"] == "broken" and status["h5py"] == "wrong version"
    assert status["dcac_plugin"] == "not tried"  # it imports them: its failure would only repeat theirs
    assert status["torch"] == status["diffusers"] == "ok" and report["ok"] is False
    assert any(line.startswith("missing       yacs ") for line in done.stdout.splitlines()), done.stdout
    # What our dependencies need is followed too: open_clip's timm, found at 1.0.0, is a warning only.
    assert "timm 1.0.0 does not satisfy timm>=1.0.17 (needed by open-clip-torch 3.3.0)" in report["warnings"]
    assert "warning: timm 1.0.0 does not satisfy timm>=1.0.17" in done.stdout


def test_an_import_that_exits_is_reported_not_the_end_of_the_check(tmp_path):
    hide = hiding_folder(tmp_path, {"h5py": ("exit", "h5py exits")})
    code = (f"import json, runpy; check = runpy.run_path({HELPER!r})['check_dependency']; "
            "print(json.dumps(check('h5py>=3.0')))")  # by path, as the script runs it: no dcac_plugin import
    entry = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                           env=dict(os.environ, PYTHONPATH=hide, PYTHONDONTWRITEBYTECODE="1"))
    assert entry.returncode == 0, entry.stderr
    result = json.loads(entry.stdout.strip().splitlines()[-1])
    assert result["status"] == "broken" and result["error"] == "SystemExit: h5py exits"


def test_every_requirement_has_an_import_name_that_is_its_own_here():
    import importlib.metadata as metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    providers = metadata.packages_distributions()
    for line in device_check.install_requires() + list(device_check.RUNTIME_REQUIRES):
        name = Requirement(line).name
        module = device_check.import_name(name)
        assert canonicalize_name(name) in {canonicalize_name(d) for d in providers.get(module, [])}, (name, module)


# ----------------------------------------------------------------------------- the script: wheels, then deps


def stand_in_dcac(tmp_path):
    """A stand-in dcac command that reports where the carried probe module was imported from."""
    fake = tmp_path / "fake-dcac"
    fake.write_text('#!/usr/bin/env bash\nexec "$PYTHON" -c \'import json, dcacprobe; '
                    'print(json.dumps({"probe": dcacprobe.WHERE}))\'\n')
    fake.chmod(0o755)
    return dict(DEVICE_CHECK_ASSUME_GPU="1", DEVICE_CHECK_DCAC=str(fake), DEVICE_CHECK_TORCHRUN=str(fake))


def test_the_script_installs_the_carried_wheels_checks_every_dependency_then_runs_the_steps(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(str(wheels), "dcacprobe", "1.0", module="dcacprobe")
    done, head, summary = run_script(tmp_path, "--only", "bench_train", DEVICE_CHECK_WHEELS=str(wheels),
                                     **stand_in_dcac(tmp_path))
    assert head[0].endswith(f"1 carried wheels installed into {summary['work_dir']}/site-packages: running the GPU "
                            "steps (only bench_train) within 480 s")
    site = os.path.join(summary["work_dir"], "site-packages")
    step = summary["steps"]["bench_train"]
    # The step imported the carried module from the temporary folder the script installed it in ...
    assert step["figures"] == {"probe": os.path.join(site, "dcacprobe", "__init__.py")}
    # ... and, as a stand-in that measured nothing on a GPU, is not taken for a GPU result.
    assert step["status"] == "failed" and step["reason"] == "not a GPU result: the benchmark wrote no figures"
    dependencies = summary["steps"]["dependencies"]
    assert dependencies["status"] == "ok", dependencies
    deps = dependencies["figures"]
    assert deps["ok"] is True and deps["pythonpath"].split(os.pathsep)[0] == site
    versions = {entry["package"]: entry["version"] for entry in deps["packages"]}
    assert versions["torch"] == torch_version() and versions["dcac_plugin"] == "0.2.0"
    assert all(versions.values()), versions


def torch_version():
    import importlib.metadata

    return importlib.metadata.version("torch")


def test_the_script_runs_no_gpu_step_when_a_dependency_is_missing(tmp_path):
    # torch hidden: every import that needs it fails fast, and the one line names them.
    hide = hiding_folder(tmp_path, {"torch": ("missing", "No module named 'torch'")})
    done, _, summary = run_script(tmp_path, PYTHONPATH=hide, **stand_in_dcac(tmp_path))
    assert done.returncode == 1
    dependencies = summary["steps"]["dependencies"]
    assert dependencies["status"] == "failed" and dependencies["figures"]["ok"] is False
    line = dependencies["error"]
    assert line.startswith("device_check deps: missing or unusable: torch (missing); ")
    assert line.endswith(device_check.WHEELS_HINT)
    assert {summary["steps"][name]["status"] for name in GPU_STEPS} == {"skipped"}
    assert all(summary["steps"][name]["reason"] == "dependencies: " + line for name in GPU_STEPS)
    assert summary["exit_status"] == 1
    assert "figures" not in summary["steps"]["bench_train"]  # nothing ran


def test_the_script_stops_in_one_line_when_the_carried_wheels_do_not_install(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    done, head, summary = run_script(tmp_path, DEVICE_CHECK_WHEELS=str(wheels), **stand_in_dcac(tmp_path))
    assert done.returncode == 1
    assert "; installing the 1 carried wheels failed: " in head[0]
    dependencies = summary["steps"]["dependencies"]
    assert dependencies["status"] == "failed" and "rc" not in dependencies  # the check did not run
    assert dependencies["reason"].startswith("installing the 1 carried wheels failed: ")
    assert {summary["steps"][name]["status"] for name in GPU_STEPS} == {"skipped"}
    assert all(summary["steps"][name]["reason"] == "dependencies: " + dependencies["reason"] for name in GPU_STEPS)


# ----------------------------------------------------------------------------- wheels: the carried set


def write_project(tmp_path, requires, python_requires=">=3.9"):
    """A setup.cfg with these install_requires, and the machine's package file."""
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text("[options]\npython_requires = " + python_requires + "\ninstall_requires =\n"
                         + "".join(f"    {line}\n" for line in requires))
    return str(setup_cfg)


MACHINE = {"python": "3.12.3", "gamma": "2.5", "delta": None, "pyyaml": None, "requests": None}


def test_a_complete_set_of_wheels_has_no_problems(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(str(folder), "alpha", "1.2", requires=["beta>=1", "gamma>=2", "delta", 'zeta; python_version < "3.12"',
                                                        'eta; extra == "docs"'])
    make_wheel(str(folder), "beta", "1.0", requires_python=">=3.11")
    problems, notes = device_check.wheel_problems(str(folder), MACHINE, write_project(tmp_path, ["alpha>=1"]))
    assert problems == [] and notes == []


def test_each_kind_of_problem_in_a_set_of_wheels_is_named(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(str(folder), "alpha", "1.2", requires=["beta>=2", "gamma>=3", "missing-one"])
    make_wheel(str(folder), "beta", "1.0", requires_python=">=3.13")
    make_wheel(str(folder), "compiled", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    make_wheel(str(folder), "gamma", "3.0")
    make_wheel(str(folder), "alpha", "1.3")
    problems, notes = device_check.wheel_problems(str(folder), MACHINE, write_project(tmp_path, ["alpha", "omega"]))
    assert "two versions of alpha: 1.2 and 1.3 (keep one)" in problems
    assert "beta-1.0-py3-none-any.whl: needs Python >=3.13, the machine has 3.12.3" in problems
    assert "compiled-1.0-cp311-cp311-manylinux_2_17_x86_64.whl: not installable by CPython 3.12.3 on x86-64 Linux" \
        in problems
    assert "gamma-3.0-py3-none-any.whl: gamma is already on the machine (carry only what it lacks)" in problems
    assert "omega missing (dcac-reid needs omega)" in problems
    assert "compiled 1.0 is carried but nothing needs it" in notes


def test_requirements_are_checked_against_the_machines_recorded_versions(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(str(folder), "alpha", "1.2", requires=["beta>=2", "gamma>=3", "delta>=1", "requests[socks]"])
    make_wheel(str(folder), "beta", "1.0")
    problems, notes = device_check.wheel_problems(str(folder), MACHINE, write_project(tmp_path, ["alpha"]))
    # requests[socks]: what the extra pulls in (PySocks) is read from this machine's requests.
    assert problems == ["beta 1.0 does not satisfy beta>=2 (needed by alpha 1.2)",
                        "gamma 2.5 does not satisfy gamma>=3 (needed by alpha 1.2)",
                        "pysocks missing (requests needs PySocks!=1.5.7,>=1.5.6)"]
    assert notes == ["not checked here, the machine's version not being recorded (deps checks them there): "
                     "delta>=1 (alpha 1.2)"]
