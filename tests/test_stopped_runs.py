"""A run or tool that stops before its end (issue 26, POOR items): Ctrl-C, an unreadable image, a full
disk, SIGTERM while a checkpoint is written. Each ends in one line saying where it stopped and how
to go on; the way on it offers is then taken and must work; nothing kept is changed (bytes compared)
and nothing partial is left (no .tmp-* file).

A full disk is simulated by a write that raises ENOSPC once a few bytes went into the folder
under test; SIGTERM is sent by the process to itself in the middle of a checkpoint's write."""
import errno
import glob
import json
import os
import shutil
import signal

import pytest
from PIL import Image
from test_no_overwrite import digests

from dcac_config.shipped import demo_config_path
from dcac_plugin.cli import main
from dcac_plugin.engines.common import RunRecordMixin
from dcac_plugin.utils import atomic_files


def train(save_dir, root, *opts) -> int:
    """``dcac train`` of the tiny baseline config into ``save_dir`` on the datasets under ``root``."""
    return main(["train", "--config-file", demo_config_path("baseline"), "--root", str(root), "data.save_dir",
                 str(save_dir), "train.print_freq", "100", *opts])


def one_line(err: str) -> str:
    """The message of ``dcac``'s one error line, after checking that it is one line without a
    traceback (progress bars may precede it on stderr, ended by a carriage return)."""
    assert err.count("dcac: error: ") == 1 and "Traceback" not in err, err
    line = err[err.index("dcac: error: "):]
    assert line.count("\n") == 1 and line.endswith("\n"), err
    return line[len("dcac: error: "):-1]


def epoch_of(save_dir) -> int:
    with open(os.path.join(save_dir, "results.json"), encoding="utf-8") as handle:
        return json.load(handle)["results"]["synthetic_b"]["epoch"]


def leftovers(folder) -> list:
    return glob.glob(os.path.join(str(folder), "**", ".tmp-*"), recursive=True)


@pytest.fixture
def own_copy(baseline_run, tmp_path):
    """A copy of the session's finished one-epoch run, to continue to a second epoch."""
    return str(shutil.copytree(baseline_run, tmp_path / "run"))


@pytest.fixture
def own_data(data_root, tmp_path):
    """A copy of the synthetic datasets whose images a test may break."""
    root = tmp_path / "data"
    for name in ("synthetic_a", "synthetic_b"):
        shutil.copytree(os.path.join(data_root, name), root / name)
    return root


def break_image(root) -> str:
    """Truncate one training image of ``root``'s synthetic_a; returns its path."""
    path = sorted(glob.glob(str(root / "synthetic_a" / "bounding_box_train" / "*.jpg")))[5]
    with open(path, "r+b") as handle:
        handle.truncate(200)
    return path


# ------------------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_during_training_names_the_checkpoint_and_the_resume_that_then_works(own_copy, data_root,
                                                                                  monkeypatch, capsys):
    checkpoints = digests(os.path.join(own_copy, "model"))

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunRecordMixin, "train", interrupted)
    command = ("train.max_epoch", "2", "model.resume", own_copy)
    assert train(own_copy, data_root, *command) == 130
    latest = os.path.join(own_copy, "model", "latest.pth.tar")
    assert one_line(capsys.readouterr().err) == (
        f"Interrupted (Ctrl-C): the run in {own_copy} stopped; its last checkpoint is {latest}; run the same command "
        f"with model.resume {own_copy} to continue from it.")
    assert digests(os.path.join(own_copy, "model")) == checkpoints
    assert not os.path.exists(os.path.join(own_copy, "run.lock"))

    monkeypatch.undo()
    assert train(own_copy, data_root, *command) == 0
    assert epoch_of(own_copy) == 2


def test_ctrl_c_before_the_first_checkpoint_leaves_only_the_log_and_the_same_command_starts_again(
        data_root, tmp_path, monkeypatch, capsys):
    save_dir = tmp_path / "fresh"

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunRecordMixin, "train", interrupted)
    assert train(save_dir, data_root, "train.max_epoch", "1") == 130
    assert one_line(capsys.readouterr().err) == (
        f"Interrupted (Ctrl-C): the run in {save_dir} stopped before its first checkpoint, so it removed what it had "
        "written (config.yaml, 1 TensorBoard event file; its log stays); run the same command again to start it "
        "anew.")
    (log,) = os.listdir(save_dir)
    assert log.startswith("train.log-") and "Start training" in (save_dir / log).read_text()

    monkeypatch.undo()
    assert train(save_dir, data_root, "train.max_epoch", "1") == 0
    assert epoch_of(save_dir) == 1


def test_ctrl_c_in_a_tool_says_nothing_was_written(baseline_run, data_root, tmp_path, monkeypatch, capsys):
    import dcac_plugin.tools.extract

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dcac_plugin.tools.extract, "extract_features", interrupted)
    output = tmp_path / "gallery.safetensors"
    images = os.path.join(data_root, "synthetic_b", "query")
    assert main(["extract", baseline_run, images, "--output", str(output)]) == 130
    assert one_line(capsys.readouterr().err) == (
        "Interrupted (Ctrl-C): dcac extract stopped; its output is written whole at the end, so nothing was written; "
        "run the same command again.")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- a bad image

def test_a_bad_image_in_the_first_epoch_then_the_offered_fix_works(own_data, tmp_path, capsys):
    save_dir = tmp_path / "run"
    broken = break_image(own_data)
    assert train(save_dir, own_data, "train.max_epoch", "1") == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f'Cannot read image "{broken}": truncated or corrupt')
    assert ("Fix: remove or replace the file, or set data.skip_corrupt_images True to skip unreadable images with a "
            f"warning. The run in {save_dir} stopped before its first checkpoint, so it removed what it had written "
            "(config.yaml, 1 TensorBoard event file; its log stays): once this is fixed, run the same command again "
            "to start it anew.") in message
    assert [name[:10] for name in os.listdir(save_dir)] == ["train.log-"]

    assert train(save_dir, own_data, "train.max_epoch", "1", "data.skip_corrupt_images", "True") == 0
    assert "Skipping 1 unreadable image(s)" in capsys.readouterr().out
    assert epoch_of(save_dir) == 1


def test_a_bad_image_after_a_checkpoint_then_the_offered_resume_works(own_data, tmp_path, monkeypatch, capsys):
    save_dir = tmp_path / "run"
    write_checkpoints = RunRecordMixin.write_checkpoints
    broken = []

    def then_break_an_image(self, *args, **kwargs):
        write_checkpoints(self, *args, **kwargs)
        if not broken:  # the image goes bad once epoch 1 is saved: epoch 2 cannot read it
            broken.append(break_image(own_data))

    monkeypatch.setattr(RunRecordMixin, "write_checkpoints", then_break_an_image)
    assert train(save_dir, own_data, "train.max_epoch", "2", "test.eval_freq", "2") == 2
    message = one_line(capsys.readouterr().err)
    latest = os.path.join(str(save_dir), "model", "latest.pth.tar")
    assert message.startswith(f'Cannot read image "{broken[0]}"')
    assert message.endswith(f"The run in {save_dir} stopped; its last checkpoint is {latest}: once this is fixed, "
                            f"run the same command with model.resume {save_dir} to continue from it.")
    kept = digests(save_dir / "model")

    monkeypatch.undo()
    # Refused without the resume (the folder holds a run), as the message said ...
    assert train(save_dir, own_data, "train.max_epoch", "2", "data.skip_corrupt_images", "True") == 2
    assert f"To continue that run, set model.resume {save_dir}" in one_line(capsys.readouterr().err)
    assert digests(save_dir / "model") == kept
    # ... and continued with it.
    assert train(save_dir, own_data, "train.max_epoch", "2", "data.skip_corrupt_images", "True",
                 "model.resume", str(save_dir)) == 0
    assert f"Resumed from {latest} at epoch 1" in capsys.readouterr().out
    assert epoch_of(save_dir) == 2


# ----------------------------------------------------------------------- a full disk

class FullDisk:
    """A file handle that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def fill_disk(monkeypatch, folder, room: int = 1000) -> None:
    """Writes through atomic_files into ``folder`` fail with ENOSPC after ``room`` bytes."""
    fdopen = os.fdopen

    def opened(fd, *args, **kwargs):
        handle = fdopen(fd, *args, **kwargs)
        inside = os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder) + os.sep)
        return FullDisk(handle, room) if inside else handle

    monkeypatch.setattr(atomic_files.os, "fdopen", opened)


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_one_and_the_resume_works(own_copy, data_root,
                                                                                      monkeypatch, capsys):
    folder = os.path.join(own_copy, "model")
    kept = digests(folder)
    fill_disk(monkeypatch, folder)
    command = ("train.max_epoch", "2", "model.resume", own_copy)
    assert train(own_copy, data_root, *command) == 2
    message = one_line(capsys.readouterr().err)
    latest = os.path.join(folder, "latest.pth.tar")
    assert message.startswith(f"Disk full: no space left in {folder} while writing latest.pth.tar (about ")
    assert " MB needed, " in message and " free); the earlier latest.pth.tar is unchanged." in message
    assert message.endswith(f"The run in {own_copy} stopped; its last checkpoint is {latest}: once this is fixed, "
                            f"run the same command with model.resume {own_copy} to continue from it.")
    assert digests(folder) == kept and leftovers(own_copy) == []

    monkeypatch.undo()
    # A partial checkpoint left by a run killed outright is removed when the next run starts.
    partial = os.path.join(folder, ".tmp-killed")
    open(partial, "wb").close()
    assert train(own_copy, data_root, *command) == 0
    assert f"Removed 1 partial checkpoint file(s) left in {folder}" in capsys.readouterr().out
    assert epoch_of(own_copy) == 2 and leftovers(own_copy) == []


def test_a_full_disk_during_extract_overwrite_keeps_the_earlier_features(baseline_run, data_root, tmp_path,
                                                                         monkeypatch, capsys):
    output = tmp_path / "out" / "features.safetensors"
    output.parent.mkdir()
    output.write_bytes(b"earlier features")
    fill_disk(monkeypatch, output.parent)
    images = os.path.join(data_root, "synthetic_b", "query")
    assert main(["extract", baseline_run, images, "--output", str(output), "--overwrite"]) == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"Disk full: no space left in {output.parent} while writing features.safetensors "
                              "(about ")
    assert message.endswith("the earlier features.safetensors is unchanged. Free space on that disk (or write to "
                            "another one) and run again.")
    assert output.read_bytes() == b"earlier features" and os.listdir(output.parent) == ["features.safetensors"]


# -------------------------------------------------------------------------- SIGTERM

def test_sigterm_while_a_checkpoint_is_written_removes_the_partial_file(own_copy, data_root, monkeypatch, capsys):
    folder = os.path.join(own_copy, "model")
    kept = digests(folder)
    fdopen = os.fdopen

    class TerminatedMidWrite(FullDisk):
        def write(self, data) -> int:
            written = self.handle.write(data[:10])
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job would
            return written

    def opened(fd, *args, **kwargs):
        handle = fdopen(fd, *args, **kwargs)
        return TerminatedMidWrite(handle, 0) if os.readlink(f"/proc/self/fd/{fd}").startswith(folder) else handle

    monkeypatch.setattr(atomic_files.os, "fdopen", opened)
    assert train(own_copy, data_root, "train.max_epoch", "2", "model.resume", own_copy) == 143
    latest = os.path.join(folder, "latest.pth.tar")
    assert one_line(capsys.readouterr().err) == (
        f"Terminated (SIGTERM) while writing {latest}: the write was stopped and the earlier latest.pth.tar is "
        f"unchanged. The run in {own_copy} stopped; its last checkpoint is {latest}; run the same command with "
        f"model.resume {own_copy} to continue from it.")
    assert digests(folder) == kept and leftovers(own_copy) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the process's own handling is back
    assert not os.path.exists(os.path.join(own_copy, "run.lock"))


def test_an_unwritable_output_folder_is_refused_before_any_work(baseline_run, tmp_path, monkeypatch, capsys):
    """Simulated (the tests may run as root, who writes anywhere): creating a file there is refused."""
    import tempfile

    from dcac_plugin.tools import outputs

    folder = tmp_path / "read-only"
    folder.mkdir()
    temporary = tempfile.TemporaryFile

    def refused(*args, dir=None, **kwargs):
        if dir == str(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return temporary(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs.tempfile, "TemporaryFile", refused)
    for command in (["export", baseline_run, "--format", "onnx", "--output", str(folder / "encoder.onnx")],
                    ["visualize", "ranked", baseline_run, "--out", str(folder / "ranked")]):
        assert main(command) == 2
        assert one_line(capsys.readouterr().err) == (
            f"--{'output' if command[0] == 'export' else 'out'}: {folder} cannot be written (Permission denied). "
            f"Choose another --{'output' if command[0] == 'export' else 'out'}, in a folder you can write to.")
    assert os.listdir(folder) == []


def test_an_unwritable_folder_met_while_writing_is_one_line(tmp_path, monkeypatch):
    from dcac_config.errors import UsageError

    def refused(*args, **kwargs):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic_files.tempfile, "mkstemp", refused)
    with pytest.raises(UsageError) as error:
        atomic_files.atomic_write(str(tmp_path / "x.bin"), lambda handle: handle.write(b"x"))
    assert str(error.value) == (f"Cannot write x.bin into {tmp_path}: Read-only file system; no partial file was "
                                "left. Write it to a folder you can write to.")
    assert os.listdir(tmp_path) == []


def test_pictures_are_unchanged_by_a_stopped_write(tmp_path, monkeypatch):
    """The earlier file's bytes survive any failure of its replacement (here a picture)."""
    path = tmp_path / "grid.png"
    Image.new("RGB", (4, 4), "red").save(path)
    before = path.read_bytes()
    fill_disk(monkeypatch, tmp_path, room=10)
    with pytest.raises(atomic_files.DiskFullError, match=rf"Disk full: no space left in {tmp_path} while writing "
                                                         r"grid.png \(.* free\); the earlier grid.png is unchanged"):
        atomic_files.atomic_write(str(path), lambda handle: Image.new("RGB", (64, 64)).save(handle, format="PNG"))
    assert path.read_bytes() == before and leftovers(tmp_path) == []
