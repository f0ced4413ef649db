"""Real accidents: Ctrl-C, two runs on one folder, a damaged resume point, a full disk. Each ends
with one line (no traceback), leaves no half-written file, and a rerun finishes the work."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from ilias_data import make_ilias, source_args
from test_interrupted_runs import ENV, command, files, run
from train_data import write_revisitop


def wait_for(condition, process, seconds=120):
    start = time.perf_counter()
    while not condition():
        assert process.poll() is None, "the run ended before the accident"
        assert time.perf_counter() - start < seconds
        time.sleep(0.01)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilias_accidents")
    return root, make_ilias(root, distractor_shards=(3, 3, 40))


def features_command(shards, tiny_dinov2, out, workers=2):
    root, info = shards
    return command("precompute_features_ilias.py", *source_args(root, info), "--split", "distractors",
                   "--dinov2", tiny_dinov2, "--dinov2_resolution", 56, "--dinov2_batch_size", 2,
                   "--num_workers", workers, "--device", "cpu", "--output_dir", out)


def test_ctrl_c_stops_with_one_line_and_the_rerun_resumes(shards, tiny_dinov2, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "interrupted"
    run(features_command(shards, tiny_dinov2, reference))
    # Ctrl-C reaches the whole foreground process group: the script and its decoding workers
    process = subprocess.Popen(features_command(shards, tiny_dinov2, out), cwd=REPO, env=ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(lambda: (out / "distractors" / "distractors-000000.json").exists(), process)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted; rerun the same command to resume"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
    run(features_command(shards, tiny_dinov2, out))
    assert files(out) == files(reference)


def test_two_runs_on_one_folder(shards, tiny_dinov2, tmp_path):
    """A second run on a folder in use stops with one line; a killed run's lock does not block."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from utils.io import OutputLock\n"
                               f"with OutputLock({str(out)!r}):\n print('held', flush=True); time.sleep(600)"],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    second = subprocess.run(features_command(shards, tiny_dinov2, out), cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another run is writing to this folder" in lines[0] and str(out) in lines[0]
    assert not (out / "distractors").exists()  # it wrote nothing
    holder.send_signal(signal.SIGKILL)  # a run killed without cleaning up: its lock is gone with it
    holder.wait()
    assert (out / ".lock").exists()
    run(features_command(shards, tiny_dinov2, out))
    assert json.loads((out / "metrics.json").read_text())["distractors"]["images"] == 46


def test_a_full_disk_stops_with_one_line_and_the_rerun_resumes(shards, tiny_dinov2, tmp_path):
    """Files over 2 kB cannot be written (RLIMIT_FSIZE, as a full disk: the write fails): the two
    small shards are written, the large one fails; the rerun keeps the small ones and finishes.
    Decoding stays in the main process: the limit would also hit the workers' shared memory."""
    reference, out = tmp_path / "reference", tmp_path / "full"
    run(features_command(shards, tiny_dinov2, reference))

    def small_files_only():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    result = subprocess.run(features_command(shards, tiny_dinov2, out, workers=0), cwd=REPO, env=ENV,
                            capture_output=True, text=True, timeout=300, preexec_fn=small_files_only)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write output" in lines[0] and "distractors-000002" in lines[0]
    assert "free some space" in lines[0]
    finished = {name: (out / "distractors" / name).stat().st_mtime_ns
                for name in ("distractors-000000.npy", "distractors-000001.json")}
    run(features_command(shards, tiny_dinov2, out))
    assert {name: (out / "distractors" / name).stat().st_mtime_ns for name in finished} == finished  # not redone
    assert files(out) == files(reference)


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_resume_point_is_one_line(damage, tiny_sam2, tmp_path):
    import train_revisitop
    from utils.errors import UserError

    cfg, ckpt = tiny_sam2
    data = write_revisitop(tmp_path / "revisitop")
    argv = ["--dataset_file", "roxford5k", "--data_path", str(data), "--sam2_cfg", str(cfg), "--sam2_checkpoint",
            str(ckpt), "--device", "cpu", "--epochs", "2", "--samples_per_epoch", "2", "--triplets_per_step", "2",
            "--num_negatives", "2", "--val_fraction", "0.4", "--val_anchors", "2", "--val_negatives", "2",
            "--output_dir", str(tmp_path / "out")]
    train_revisitop.main(train_revisitop.get_args_parser().parse_args([*argv, "--epochs", "1"]))
    last = tmp_path / "out" / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        torch.save({"weights": torch.zeros(3)}, last)
    with pytest.raises(UserError) as err:
        train_revisitop.main(train_revisitop.get_args_parser().parse_args([*argv, "--resume"]))
    assert "last.pt" in err.value.where and "without --resume" in err.value.fix
