"""launch/tpu_pod.sh: paths reach the remote shell quoted."""

import os

from tests.helpers import REPO


def test_the_tpu_launcher_quotes_paths_for_the_remote_shell(tmp_path):
  script = open(os.path.join(REPO, "launch", "tpu_pod.sh")).read()
  assert "--workdir=$WORKDIR" not in script.replace('"--workdir=$WORKDIR"', "")
  assert "printf '%q' \"--workdir=$WORKDIR\"" in script
  assert "printf '%q' \"--config.model.checkpoint=$CHECKPOINT\"" in script
