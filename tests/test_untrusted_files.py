"""No file is unpickled but through the restricted unpickler; every torch.load is weights_only;
transformers never runs remote code."""
import re
import subprocess

import pytest

from conftest import REPO, run_script
from utils.errors import UserError
from utils.safe_pickle import load_npy, load_pickle

RESTRICTED_UNPICKLER = "utils/safe_pickle.py"


def tracked_python_files():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    return {name: (REPO / name).read_text() for name in files if (REPO / name).is_file() and
            not name.startswith("tests/")}


def test_no_unrestricted_unpickling():
    for name, text in tracked_python_files().items():
        assert not re.search(r"pickle\.loads?\(|allow_pickle\s*=\s*True|np\.load\([^)]*allow_pickle=True", text), name
        if name != RESTRICTED_UNPICKLER:
            assert "Unpickler" not in text, name


def test_torch_load_is_weights_only():
    for name, text in tracked_python_files().items():
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{name}: {call}"


def test_no_remote_code():
    for name, text in tracked_python_files().items():
        assert not re.search(r"trust_remote_code\s*=\s*True", text), name


def test_the_files_are_checked():
    files = tracked_python_files()
    assert RESTRICTED_UNPICKLER in files and len(files) > 10
    assert sum(len(re.findall(r"torch\.load\(", text)) for text in files.values()) >= 4


class RunsCode:
    """An object whose unpickling runs a shell command (what a tampered mirror would ship)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def tampered_dataset(kind: str, root, marker):
    """A PerMIRS or revisitop folder whose pickle, once loaded, would create `marker`."""
    import pickle

    import numpy as np
    from conftest import write_permirs
    from train_data import write_revisitop

    if kind == "permirs":
        write_permirs(root, num_videos=2)
        np.save(root / "video_1" / "masks.npz.npy", np.array([RunsCode(marker)] * 3, dtype=object), allow_pickle=True)
        return root / "video_1" / "masks.npz.npy"
    write_revisitop(root)
    path = root / "roxford5k" / "gnd_roxford5k.pkl"
    gnd = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps({**gnd, "imlist": RunsCode(marker)}))
    return path


@pytest.mark.parametrize("kind", ["permirs", "revisitop"])
def test_a_tampered_pickle_runs_no_code(kind, tiny_sam2, tmp_path):
    cfg, ckpt = tiny_sam2
    marker = tmp_path / "pwned"
    path = tampered_dataset(kind, tmp_path / "data", marker)
    script, dataset = ("sam2_permis.py", "permis") if kind == "permirs" else ("train_revisitop.py", "roxford5k")
    result = run_script(script, "--dataset_file", dataset, "--data_path", tmp_path / "data", "--output_dir",
                        tmp_path / "out", "--sam2_cfg", cfg, "--sam2_checkpoint", ckpt, "--device", "cpu")
    assert not marker.exists()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to unpickle" in lines[0] and str(path) in lines[0] and "posix.system" in lines[0]


@pytest.mark.parametrize("name", ["builtins.eval", "subprocess.Popen", "os.system", "numpy.load", "torch.load"])
def test_only_arrays_and_containers_are_rebuilt(name, tmp_path):
    module, attribute = name.rsplit(".", 1)
    # protocol 0 by hand: GLOBAL <module> <name>, an argument tuple, REDUCE
    (tmp_path / "evil.pkl").write_bytes(f"c{module}\n{attribute}\n(S'true'\ntR.".encode())
    with pytest.raises(UserError, match=f"refused to unpickle: it names {module}.{attribute}"):
        load_pickle(tmp_path / "evil.pkl")


def test_the_official_formats_load(tmp_path):
    """PDM's masks (numpy object array of dicts of bool arrays, C or Fortran order) and revisitop's
    gnd (lists, dicts, numbers, strings, and numpy arrays where a release stores them)."""
    import pickle

    import numpy as np

    masks = [{3: np.zeros((4, 5), bool)}, {3: np.asfortranarray(np.eye(4, 5, dtype=bool))}, {3: np.ones((4, 5), bool)}]
    np.save(tmp_path / "masks.npz.npy", np.array(masks, dtype=object), allow_pickle=True)
    loaded = load_npy(tmp_path / "masks.npz.npy")
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(loaded, masks))
    gnd = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"bbx": np.array([1.5, 2.0, 30.0, 40.0]),
                                                              "easy": np.array([0]), "hard": [1], "junk": []}]}
    for protocol in (2, 4, 5):
        (tmp_path / "gnd.pkl").write_bytes(pickle.dumps(gnd, protocol=protocol))
        back = load_pickle(tmp_path / "gnd.pkl")
        assert back["imlist"] == ["a", "b"] and np.array_equal(back["gnd"][0]["bbx"], gnd["gnd"][0]["bbx"])
    np.save(tmp_path / "plain.npy", np.arange(6))
    assert np.array_equal(load_npy(tmp_path / "plain.npy"), np.arange(6))
