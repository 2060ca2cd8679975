"""What the README promises about installing: PyTorch's CPU build satisfies our pins, and so does
the lent GPU machine (scripts/device_machine_packages.txt), where scripts/device_wheels.sh carries
every package of ours it lacks."""
import os
import re

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from dcac_plugin.benchmarks import device_check

WHEELS_SCRIPT = os.path.join(device_check.REPO_ROOT, "scripts", "device_wheels.sh")


def install_requires() -> dict:
    return {Requirement(line).name: Requirement(line) for line in device_check.install_requires()}


def carried_by_the_wheels_script() -> dict:
    """device_wheels.sh's lists (WHEELS, BUILT_HERE): canonical name -> [versions]."""
    with open(WHEELS_SCRIPT, encoding="utf-8") as handle:
        text = handle.read()
    carried: dict = {}
    for block in re.findall(r"^(?:WHEELS|BUILT_HERE)=\($(.*?)^\)$", text, flags=re.MULTILINE | re.DOTALL):
        for name, version in re.findall(r"^\s*([A-Za-z0-9_.-]+)==([^\s#]+)", block, flags=re.MULTILINE):
            carried.setdefault(canonicalize_name(name), []).append(version)
    return carried


def test_pytorch_cpu_builds_satisfy_the_torch_pins():
    requires = install_requires()
    # PyTorch's CPU index names its builds with a local version label; pip must keep them.
    assert requires["torch"].specifier.contains("2.14.1+cpu")
    assert requires["torchvision"].specifier.contains("0.29.1+cpu")
    # ... and must not reach past the release the project is tested with.
    assert not requires["torch"].specifier.contains("2.15.0")


def test_the_gpu_machines_python_and_packages_satisfy_our_pins():
    machine = device_check.read_machine_packages()
    python_requires = SpecifierSet(device_check.setup_option("python_requires"))
    assert machine["python"] == "3.12.3" and python_requires.contains(machine["python"])
    requires = {canonicalize_name(name): requirement for name, requirement in install_requires().items()}
    checked = {}
    for name, requirement in requires.items():
        if machine.get(name):
            checked[name] = machine[name]
            assert requirement.specifier.contains(machine[name]), f"{requirement} refuses the machine's {machine[name]}"
    # The versions the machine's notes record, every one of which we depend on.
    assert checked == {"torch": "2.11.0", "torchvision": "0.26.0", "huggingface-hub": "1.33.0", "safetensors": "0.8.0",
                       "numpy": "2.5.2", "onnx": "1.23.1", "onnxruntime": "1.30.0"}
    assert requires["torch"].specifier.contains("2.11.0+cu130")  # torch.__version__ there


def test_every_requirement_is_on_the_gpu_machine_or_carried_by_the_wheels_script():
    machine = device_check.read_machine_packages()
    carried = carried_by_the_wheels_script()
    assert {"torchreid", "open-clip-torch", "diffusers", "yacs", "gdown"} <= set(carried)  # the list was read
    assert all(len(versions) == 1 for versions in carried.values()), carried  # one version of each
    assert not set(carried) & set(machine), "carry only what the machine lacks"
    for line in device_check.install_requires() + list(device_check.RUNTIME_REQUIRES):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in machine or name in carried, f"{name}: neither on the GPU machine nor in device_wheels.sh"
        if name in carried:
            assert requirement.specifier.contains(carried[name][0]), f"device_wheels.sh carries {name} outside {line}"


def test_the_wheel_holds_every_package_and_its_data(tmp_path):
    """What `pip install .` installs: the three packages, the shipped configs (now under
    dcac_config/configs), paper_results.csv and the SD1.5 configs. Built from a copy of the tracked
    files, so nothing is written into the working tree."""
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = device_check.REPO_ROOT
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    source = tmp_path / "source"
    for relative in filter(None, tracked.decode().split("\0")):
        if os.path.isfile(os.path.join(repo, relative)) and not os.path.islink(os.path.join(repo, relative)):
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(repo, relative), source / relative)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("dcac_reid-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [name for name in tracked.decode().split("\0")
                if name.startswith(("dcac_config/", "dcac_plugin/", "dcac_cli/"))
                and name.endswith((".py", ".yaml", ".txt", ".csv", ".json"))]
    assert len(expected) > 250 and "dcac_config/configs/demo_baseline.yaml" in expected
    assert sorted(set(expected) - names) == []
