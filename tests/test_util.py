"""The shared foundations: `write_atomic` replaces a file whole or not at all."""

import errno
import os

import pytest

from fastsr.util import write_atomic


def test_write_atomic_replaces_whole_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    write_atomic(path, b"old")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"old" and path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    def disk_full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        write_atomic(path, disk_full)
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]  # no temporary left
    write_atomic(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]
