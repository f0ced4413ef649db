"""One table of benchmarks (utils/benchmarks.py): the scripts' choices and default data paths and the
README's data table are read from it, and every benchmark says where its data comes from."""
from pathlib import Path

import sam2_permir_obj_scores
import sam2_permis
import train_revisitop
from utils.benchmarks import BENCHMARKS, markdown_table, names
from utils.cli import data_path

REPO = Path(__file__).resolve().parents[1]


def choices(module) -> list[str]:
    action = next(a for a in module.get_args_parser()._actions if a.dest == "dataset_file")
    return list(action.choices)


def test_the_scripts_offer_the_table_s_benchmarks():
    assert choices(sam2_permis) == names("segmentation") == ["perseg", "permis"]
    assert choices(sam2_permir_obj_scores) == names("retrieval") == ["permir"]
    assert set(names("training")) <= set(choices(train_revisitop))
    args = sam2_permis.get_args_parser().parse_args(["--dataset_file", "permis"])
    assert data_path(args) == Path(BENCHMARKS["permis"].default_path)


def test_segmentation_benchmarks_have_a_loader_and_an_aggregate():
    for name in names("segmentation"):
        assert callable(BENCHMARKS[name].episodes) and callable(BENCHMARKS[name].aggregate)


def test_the_readme_shows_the_table_and_every_data_folder_has_a_readme():
    assert markdown_table() in (REPO / "README.md").read_text()
    for benchmark in BENCHMARKS.values():
        assert (REPO / benchmark.default_path / "README.md").is_file(), benchmark.name
