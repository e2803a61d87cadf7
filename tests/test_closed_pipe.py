"""`ldm train ... 2>&1 | head -1`: the reader leaves after one line and the run goes on to its end
(it stopped at the next log line, unsaved, with exit status 0)."""
from __future__ import annotations

import io
import subprocess
import sys

from ldmkit.cli.closed_pipe import OutputAfterReaderLeft
from ldmkit.train import load_inference_file
from test_train_e2e import write_color_dataset
from test_train_paths import QUICK


def test_a_training_run_outlives_the_reader_of_its_output(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=4, size=8)
    command = [sys.executable, "-m", "ldmkit.cli", "train", *QUICK, "--steps", "4", "--set", "log_every=1",
               "--data", str(data), "--out", str(tmp_path / "run")]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = run.stdout.readline()
    run.stdout.close()  # `head -1` has what it wanted and leaves
    assert first and run.wait(timeout=300) == 0
    assert load_inference_file(tmp_path / "run")[2]["step"] == 4  # trained to the end and saved


def test_writes_after_the_reader_left_are_dropped_not_raised():
    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    out = OutputAfterReaderLeft(Gone())
    assert out.write("a line\n") == 7 and out.reader_left
    out.flush()
    assert out.write("another\n") == 8
