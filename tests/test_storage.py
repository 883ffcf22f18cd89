"""Atomic writes: whole files or none, the same bytes for the same object, clear errors;
a writer that runs out of space at any point is one line and leaves the old file, on a
small file system filled part way and under a file-size limit alike."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from swimkit import SwimkitError
from swimkit.storage import atomic_save, atomic_write, atomic_write_text


def test_the_same_object_saved_twice_gives_the_same_bytes(tmp_path):
    """Saved through an open file: no temporary name inside, the same bytes each time."""
    obj = {"kind": "x", "w": torch.arange(10.0)}
    first, second = atomic_save(obj, tmp_path / "a.pt"), atomic_save(obj, tmp_path / "b.pt")
    assert first.read_bytes() == second.read_bytes()
    assert torch.equal(torch.load(first, weights_only=True)["w"], obj["w"])


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """A writer failing with ENOSPC: one error naming the file, the old file kept."""
    path = atomic_write_text("old", tmp_path / "r.json")

    def disk_full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SwimkitError, match=r"could not write .*r\.json \(No space left"):
        atomic_write(path, disk_full)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    """A folder that cannot be made: one error saying to choose a writable folder."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SwimkitError, match="could not write .*choose a writable output"):
        atomic_write_text("x", blocker / "out" / "r.json")


# --- running out of space part way ---------------------------------------------------------

#: Each writer: (the file's name, the code writing a value of ``size`` to ``path``). The
#: same code writes the old file (small) and the new one (large).
WRITERS = {
    "torch file": ("w.pt", "from swimkit.storage import atomic_save\n"
                           "atomic_save({'w': torch.arange(float(size))}, path)"),
    "json file": ("r.json", "from swimkit.storage import atomic_write_json\n"
                            "atomic_write_json({'x': list(range(size))}, path)"),
    "plan": ("plan.pt", "import swimkit\n"
                        "swimkit.Plan.uniform({'w': torch.zeros(size)}, True).save(path)"),
    "points cache": ("points.json",
                     "from swimkit.caches import PointCache\n"
                     "from swimkit.montecarlo import MCResult\n"
                     "from swimkit.results import PlanCounts, Point\n"
                     "PointCache(Path(path), 'key').put('p', Point(\n"
                     "    'swim', 'm', 'speedup', 2.0, PlanCounts(1, 10, 8, 80), None,\n"
                     "    MCResult(torch.full((size,), 50.0))))"),
}
OLD, NEW = 10, 20_000  # sizes of the old value and of the new one


def _write(writer: str, path: Path, size: int, limit: int | None = None
           ) -> subprocess.CompletedProcess:
    """Run ``writer`` in a fresh process (under a file-size limit of ``limit`` bytes, with
    SIGXFSZ ignored, so a write past it fails as a full disk's does)."""
    lines = ["import sys", "from pathlib import Path", "import torch",
             "from swimkit import SwimkitError", f"path, size = {str(path)!r}, {size}"]
    if limit is not None:
        lines += ["import resource, signal", "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)",
                  f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))"]
    lines += ["try:", textwrap.indent(WRITERS[writer][1], "    "),
              "except SwimkitError as err:", "    print(err, file=sys.stderr)",
              "    sys.exit(2)"]
    return subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True,
                          text=True, timeout=300, check=False)


def _sizes(writer: str, folder: Path) -> tuple[bytes, int]:
    """The old file's bytes and the new file's size, written without a limit."""
    name = WRITERS[writer][0]
    for size in (OLD, NEW):
        done = _write(writer, folder / f"{size}-{name}", size)
        assert done.returncode == 0, done.stderr
    return (folder / f"{OLD}-{name}").read_bytes(), (folder / f"{NEW}-{name}").stat().st_size


def _refused_and_old_kept(done, path: Path, old: bytes) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and f"could not write {path}" in done.stderr
    assert "Traceback" not in done.stderr
    assert path.read_bytes() == old  # the old file as it was
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_past_a_file_size_limit_keeps_the_old_file(writer, tmp_path):
    """Under a file-size limit that stops the new file at its start, its middle or its
    last byte: one line naming the file, the old file as it was, no temporary left."""
    old, new_size = _sizes(writer, tmp_path / "sizes")
    assert new_size > len(old)
    for limit in (1, new_size // 2, new_size - 1):
        folder = tmp_path / f"limit-{limit}"
        folder.mkdir()
        path = folder / WRITERS[writer][0]
        path.write_bytes(old)
        _refused_and_old_kept(_write(writer, path, NEW, limit), path, old)


@pytest.fixture()
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root, where mounting is permitted): its folder."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def _fill(folder: Path, free: int) -> None:
    """Fill ``folder``'s file system up to ``free`` bytes."""
    stat = os.statvfs(folder)
    available = stat.f_bavail * stat.f_frsize
    (folder / f"filler-{uuid.uuid4().hex[:6]}").write_bytes(b"\0" * max(0, available - free))


@pytest.mark.slow
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_on_a_small_disk_filled_part_way_keeps_the_old_file(writer, small_disk,
                                                                    tmp_path):
    """On a tmpfs filled so that the new file stops part way (none, a quarter, half of
    it fits): one line naming the file, the old file as it was, no temporary left."""
    old, new_size = _sizes(writer, tmp_path / "sizes")
    inner = small_disk / "out"
    inner.mkdir()
    path = inner / WRITERS[writer][0]
    path.write_bytes(old)
    for free in (0, new_size // 4, new_size // 2):
        for filler in small_disk.glob("filler-*"):
            filler.unlink()
        _fill(small_disk, free)
        _refused_and_old_kept(_write(writer, path, NEW), path, old)


def _swimkit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """``swimkit args`` in a fresh process under a file-size limit of ``limit`` bytes."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from swimkit.cli import main\n"
            f"sys.exit(main({[str(a) for a in args]!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture()
def lenet_checkpoint(tmp_path):
    from swimkit import build_model
    from swimkit.checkpoints import save_checkpoint

    return save_checkpoint(tmp_path / "lenet.pt", build_model("lenet", seed=0),
                           model_name="lenet")


@pytest.mark.slow
@pytest.mark.parametrize("limit", [1, 300_000])
def test_select_on_a_nearly_full_disk_is_one_line(limit, lenet_checkpoint, tmp_path):
    """swimkit select whose plan does not fit: one line naming the plan file, exit 2,
    and no plan file or temporary left (no raw "unexpected pos" from torch)."""
    plan = tmp_path / "plans" / "plan.pt"
    done = _swimkit(["select", "--checkpoint", lenet_checkpoint, "--method", "magnitude",
                     "-o", plan, "--no-progress"], limit)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and f"could not write {plan}" in done.stderr
    assert "unexpected pos" not in done.stderr or "the disk may be full" in done.stderr
    assert not plan.parent.exists() or list(plan.parent.iterdir()) == []


@pytest.mark.slow
def test_select_on_a_small_disk_filled_part_way_is_one_line(lenet_checkpoint, small_disk):
    """The same on a tmpfs with a little space left."""
    _fill(small_disk, 100_000)
    plan = small_disk / "plan.pt"
    code = ("import sys\nfrom swimkit.cli import main\n"
            f"sys.exit(main(['select', '--checkpoint', {str(lenet_checkpoint)!r}, '--method', "
            f"'magnitude', '-o', {str(plan)!r}, '--no-progress']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and f"could not write {plan}" in done.stderr
    assert not plan.exists() and not list(small_disk.glob(".plan.pt.*"))


@pytest.mark.slow
def test_run_on_a_nearly_full_disk_is_one_line(fmnist, tmp_path):
    """swimkit run whose first checkpoint does not fit: one line naming the file, exit 2,
    the training folder without a partial checkpoint."""
    out = tmp_path / "run"
    done = _swimkit(["run", "--model", "lenet", "--dataset", "fashion-mnist", "--data-dir",
                     fmnist, "--epochs", "1", "--train-limit", "300", "--samples", "2",
                     "--out", out, "--no-progress"], 100_000)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "swimkit: error: could not write" in done.stderr
    assert not any(p.suffix == ".tmp" for p in out.rglob("*"))
    assert not list(out.rglob("*.pt"))


@pytest.mark.slow
def test_run_on_a_small_disk_is_one_line(fmnist, small_disk):
    """The same with --out on a small tmpfs."""
    out = small_disk / "run"
    code = ("import sys\nfrom swimkit.cli import main\n"
            f"sys.exit(main(['run', '--model', 'lenet', '--dataset', 'fashion-mnist', "
            f"'--data-dir', {str(fmnist)!r}, '--epochs', '1', '--train-limit', '300', "
            f"'--samples', '2', '--out', {str(out)!r}, '--no-progress']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "swimkit: error: could not write" in done.stderr
    assert "No space left on device" in done.stderr or "disk may be full" in done.stderr
    assert not any(p.suffix == ".tmp" for p in out.rglob("*"))
