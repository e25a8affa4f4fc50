from __future__ import annotations

import os
import socket
import stat

from alice_gpu.discover import discover, is_media, walk

JPEG_HEAD = b"\xff\xd8\xff\xe0" + b"\0" * 32


def _make(root, name, data=JPEG_HEAD):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_walk_keeps_media_by_extension_and_by_content(tmp_path):
    _make(tmp_path, "a.jpg")
    _make(tmp_path, "sub/deeper/b.PNG", b"\x89PNG\r\n\x1a\n")
    _make(tmp_path, "noext", JPEG_HEAD)           # sniffed
    _make(tmp_path, "notes.txt", b"hello")
    _make(tmp_path, "data", b"not an image")       # no extension, wrong bytes
    found = sorted(os.path.relpath(e.path, tmp_path) for e in walk([tmp_path]))
    assert found == ["a.jpg", "noext", os.path.join("sub", "deeper", "b.PNG")]


def test_special_files_and_symlinks_are_not_followed(tmp_path):
    _make(tmp_path, "real.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.jpg"))
    os.symlink(tmp_path / "real.jpg", tmp_path / "link.jpg")
    os.symlink(tmp_path, tmp_path / "loop")          # a loop if followed
    os.symlink("/etc", tmp_path / "escape")          # a link out of the root
    try:
        os.mknod(tmp_path / "dev.jpg", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pass                                         # not root: the other cases still run
    try:
        names = [os.path.basename(e.path) for e in walk([tmp_path])]
    finally:
        sock.close()
    assert names == ["real.jpg"]


def test_change_detection_splits_todo_unchanged_removed(tmp_path):
    a = _make(tmp_path, "a.jpg")
    b = _make(tmp_path, "b.jpg")
    st = a.stat()
    known = {str(a): (st.st_size, st.st_mtime_ns),
             str(b): (b.stat().st_size, b.stat().st_mtime_ns - 1),   # changed mtime
             str(tmp_path / "gone.jpg"): (1, 1)}
    _make(tmp_path, "new.jpg")
    found = discover([tmp_path], known)
    assert [os.path.basename(e.path) for e in found.unchanged] == ["a.jpg"]
    assert sorted(os.path.basename(e.path) for e in found.todo) == ["b.jpg", "new.jpg"]
    assert found.removed == [str(tmp_path / "gone.jpg")]
    assert found.files_seen == 3


def test_missing_root_does_not_remove_anything(tmp_path):
    known = {str(tmp_path / "usb" / "x.jpg"): (1, 1)}
    found = discover([tmp_path / "usb"], known)
    assert found.removed == [] and found.files_seen == 0


def test_is_media_extension_is_case_insensitive(tmp_path):
    assert is_media(str(tmp_path / "X.JPEG"))
    assert not is_media(str(tmp_path / "x.txt"))
