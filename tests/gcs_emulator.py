"""A loopback GCS for tests: gcp-storage-emulator plus the generation headers tensorstore reads.

  python tests/gcs_emulator.py PORT BUCKET

tensorstore (orbax's storage layer) takes an object's generation from the ``x-goog-generation``
header of a ranged media download; gcp-storage-emulator omits it, so every generation read back
is 0, and orbax's OCDBT manifest write, conditioned on that generation, fails with "Malformed
StorageGeneration". This wrapper adds the headers (the real service always sends them) and
changes nothing else.
"""

import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj["metageneration"])


objects.download = download_with_generation
from gcp_storage_emulator import server  # noqa: E402  (its routing table takes the patched handler)


def main() -> None:
  port, bucket = int(sys.argv[1]), sys.argv[2]
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main()
