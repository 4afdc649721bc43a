"""Files on a local disk or an object store (``gs://``), behind one set of functions: every other
module asks :func:`is_object_store` only through these.

An object store has no folders, renames or appends: a rename is a copy and delete, an append a
rewrite of the whole object, and a file read by a library that needs a local path (safetensors
memory-maps) is copied to a scratch folder first.
"""

from __future__ import annotations

import math
import os
import time

from etils import epath


def is_object_store(path) -> bool:
  """Whether ``path`` is on an object store (``gs://``…): no folders, no renames, no appends."""
  return "://" in str(path)


def replace_text(path: epath.Path, text: str) -> None:
  """Replaces a file's whole content: through a rename locally; in one upload on an object store
  (an object is replaced atomically, and renames there are copies)."""
  if is_object_store(path):
    path.write_text(text)
    return
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def move_folder(src: epath.Path, dst: epath.Path) -> None:
  """Renames a local folder; on object stores (no folders, no renames) copies each object and
  deletes it: the source prefix is gone once it holds no objects."""
  if not is_object_store(src):
    src.rename(dst)
    return
  bucket_path = str(src).split("://", 1)[1]  # walk yields folders without the scheme
  for folder, _, files in src.walk():  # one listing of the prefix (no recursive glob on gcs)
    relative = os.path.relpath(str(folder).split("://")[-1], bucket_path)
    for name in files:
      item = src / relative / name
      item.copy(dst / relative / name, overwrite=True)
      item.unlink()


def local_copy(folder: str, scratch: str) -> str:
  """``folder`` itself when local; an object-store folder (``gs://``) copied into ``scratch``
  (safetensors are memory-mapped from local files)."""
  if not is_object_store(folder):
    return folder
  target = epath.Path(scratch) / folder.replace("://", "_").replace("/", "_")
  target.mkdir(parents=True, exist_ok=True)
  for item in epath.Path(folder).iterdir():
    item.copy(target / item.name, overwrite=True)
  return str(target)


def copy_folder_into(local: str, folder: epath.Path) -> None:
  """Copies every file of the local folder ``local`` into ``folder`` (local or object store)."""
  folder.mkdir(parents=True, exist_ok=True)
  for name in os.listdir(local):
    epath.Path(local, name).copy(folder / name, overwrite=True)


class LineFile:
  """A text file that grows by whole lines: a local file is appended to; an object-store file
  (no appends there) is rewritten whole from the text kept here, at most once every
  ``upload_every_s`` seconds (and on :meth:`flush`), so a long run does not upload its whole
  history with every line.

  Args:
    path: the file (local or ``gs://``).
    text: its current content on an object store (None: read it, "" when it does not exist).
    upload_every_s: the least time between two uploads of an object-store file; 0 uploads on
      every append.
  """

  def __init__(self, path, text: str | None = None, upload_every_s: float = 0.0):
    self.path = epath.Path(path)
    self.remote = is_object_store(path)
    if self.remote and text is None:
      text = self.path.read_text() if self.path.exists() else ""
    self.text = text if self.remote else ""
    self.upload_every_s = upload_every_s
    self.uploaded_at = -math.inf
    self.pending = False

  def append(self, lines: list[str]) -> None:
    if not self.remote:
      with self.path.open("a", encoding="utf-8") as f:
        f.writelines(lines)
      return
    self.text += "".join(lines)
    self.pending = True
    if time.monotonic() - self.uploaded_at >= self.upload_every_s:
      self.flush()

  def flush(self) -> None:
    """Uploads what was appended since the last upload (an object store; a local file has
    nothing pending)."""
    if self.pending:
      self.path.write_text(self.text)
      self.uploaded_at, self.pending = time.monotonic(), False
