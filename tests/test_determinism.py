"""The same seed gives byte-identical outputs on CPU, for every script (two runs each).
sam2_permis.py and train_revisitop.py are checked in their own test files."""
import json

import extract_candidates
import extract_images
import precompute_features_ilias
import sam2_permir_obj_scores
import sam2_reranking
import topk_candidates_ilias
from conftest import write_permirs
from ilias_data import source_args


def outputs(folder, names):
    """The files' bytes; for metrics.json, its numbers (the run record names the output folder)."""
    read = lambda name: ({k: v for k, v in json.loads((folder / name).read_text()).items() if k != "run"}
                         if name == "metrics.json" else (folder / name).read_bytes())
    return {name: read(name) for name in names}


def twice(module, make_argv, tmp_path, names):
    runs = []
    for run in ("first", "second"):
        module.main(module.get_args_parser().parse_args(make_argv(tmp_path / run)))
        runs.append(outputs(tmp_path / run, names))
    assert runs[0] == runs[1]


def test_permir(tiny_sam2, tmp_path):
    data = write_permirs(tmp_path / "permirs", num_videos=3)
    cfg, ckpt = tiny_sam2
    twice(sam2_permir_obj_scores, lambda out: ["--dataset_file", "permir", "--data_path", str(data),
                                               "--output_dir", str(out), "--sam2_cfg", str(cfg),
                                               "--sam2_checkpoint", str(ckpt), "--device", "cpu"],
          tmp_path, ["scores.npy", "permir_data.pt", "metrics.json"])


def test_ilias_pipeline(ilias, features, tiny_dinov2, tiny_sam2, tmp_path):
    root, info = ilias
    twice(precompute_features_ilias, lambda out: [*source_args(root, info), "--split", "queries", "--dinov2",
                                                  str(tiny_dinov2), "--dinov2_resolution", "56", "--num_workers", "1",
                                                  "--device", "cpu", "--output_dir", str(out)],
          tmp_path / "features", ["queries/queries-000000.npy", "queries/manifest.json"])
    twice(topk_candidates_ilias, lambda out: ["--features_dir", str(features), "--output_dir", str(out), "--topk", "12"],
          tmp_path / "topk", ["topk_indices.npy", "topk_scores.npy", "topk_meta.json", "metrics.json"])
    stage1 = tmp_path / "topk" / "first"
    for module, extra in ((extract_images, []), (extract_candidates, ["--rerank_depth", "4", "--topk_dir", str(stage1),
                                                                     "--features_dir", str(features)])):
        module.main(module.get_args_parser().parse_args([*source_args(root, info), "--images_dir",
                                                         str(stage1 / "images"), "--output_dir",
                                                         str(tmp_path / module.__name__), *extra]))
    cfg, ckpt = tiny_sam2
    twice(sam2_reranking, lambda out: ["--topk_dir", str(stage1), "--features_dir", str(features), "--images_dir",
                                       str(stage1 / "images"), "--output_dir", str(out), "--rerank_depth", "4", "--sam2_cfg",
                                       str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu"],
          tmp_path / "rerank", ["reranked_indices.npy", "reranked_scores.npy", "metrics.json"])
