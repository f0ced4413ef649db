"""bench.py runs every suite on shrunk models and small workloads, so it cannot rot. Timings are
reported, never asserted; what is asserted is what the bench promises: each phase's encoder passes
equal its distinct images, its derived figures follow from its own measurements (the floor's
formula, speed-ups, projections), each suite's workload is the one it says, and the report has
its columns and a row for every suite."""
import json
import math

import pytest

from conftest import run_script

SUITE_ROWS = {"retrieval": ["all_pairs", "k_candidates"], "segmentation": ["segmentation:"],
              "attention": ["attention 4096"], "preview": ["the page's preview"], "feed": ["feed, 72 x 96", "feed, 144 x 192"], "compile": ["--compile"],
              "features": ["features @56"], "topk": ["top-K 3,000"], "photos": ["all pairs: s", "shortlist of 2"],
              "photo_index": ["first search", "second search", "after adding 1 percent", "projected"],
              "library": ["JPEG", "reduced", "HEIC", "H.264 clip", "every frame", "DINOv2 index"],
              "video_memory": ["a 0.5-minute clip at 2 frames/s"]}


@pytest.fixture(scope="module")
def bench(tiny_sam2, tiny_dinov2, tmp_path_factory):
    cfg, _ = tiny_sam2
    out = tmp_path_factory.mktemp("bench")
    # the compile suite's code runs, its compiler does not (test_feed_and_compile.py tests that)
    result = run_script("bench.py", "--quick", "--sam2_cfg", cfg, "--dinov2", tiny_dinov2, "--dinov2_resolution", 56,
                        "--image_size", 72, 96, "--topk_database", 3000, "--topk_shard", 500, "--topk_queries", 12,
                        "--index_photos", 40, "--video_minutes", 0.5, "--device", "cpu", "--output_dir", out, env={"TORCHDYNAMO_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), result.stdout, out


def test_every_phase_encodes_each_image_once_and_its_floor_is_its_formula(bench):
    results, _, out = bench
    assert not (out / "bench_results.json").exists()  # one file: metrics.json
    floor = results["floor"]
    for workload, (queries, shared, distinct) in {"all_pairs": (2, 3, 2 + 3), "k_candidates": (2, 2, 2 + 2 + 2 * 2)}.items():
        row = results["retrieval"][workload]
        assert row["distinct_images"] == distinct
        for precision in ("fp32", "amp"):
            r = row[precision]
            assert r["encoder_passes"] == row["distinct_images"]  # each image encoded once
            want = (distinct * floor[precision]["t_encode_s"] + row["pairs"] * floor[precision]["t_pair_s"]) / row["pairs"]
            assert r["floor_s_per_pair"] == pytest.approx(want)
            assert r["vs_floor"] == pytest.approx(r["s_per_pair"] / r["floor_s_per_pair"])
            assert r["speedup_vs_official"] == pytest.approx(row["official_s_per_pair"] / r["s_per_pair"])
        assert row["amp_speedup"] == pytest.approx(row["fp32"]["s_per_pair"] / row["amp"]["s_per_pair"])
        assert row["max_score_diff"] < 0.01 and row["tied_share_amp"] <= row["tied_share_fp32"]  # amp makes no new ties
    assert results["retrieval"]["all_pairs"]["pairs"] == 2 * 3 and results["retrieval"]["k_candidates"]["pairs"] == 2 * 4
    assert set(results["floor_after"]) == {"fp32", "amp"}  # measured again after the workloads
    assert results["flops"]["encode"] > results["flops"]["pair"] > 0  # counted, attention included
    segmentation = results["segmentation"]
    assert segmentation["targets"] == 2 and segmentation["masks_not_blank"] and segmentation["mask_agreement"] > 0.99


def test_each_suite_measures_what_it_says(bench):
    results, _, _ = bench
    machine = results["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and {"avx512_bf16", "amx"} <= set(machine)
    workers = [str(w) for w in range(machine["cores"] + 1)]
    feed = results["feed"]  # images/s delivered with 0 .. cores decoding workers, beside the encode rate
    assert [list(feed[name]["images_per_s"]) for name in ("scene", "photo")] == [workers, workers]
    assert feed["encode_images_per_s"]["fp32"] == pytest.approx(1 / results["floor"]["fp32"]["t_encode_s"])
    attention = results["attention"]  # an amp engine on a CPU without AMX uses the matrix products
    assert attention["engine_uses"] == ("matmul" if results["amp_native"] and not machine["amx"] else "kernel")
    for precision in ("fp32", "amp"):  # the preview: a click on a photo seen before does not encode it again
        assert results["preview"][precision]["encoder_passes"] == 1  # three clicks, one encode
    for precision in ("fp32", "amp"):  # compile: its cost, and when it would pay
        row = results["compile"][precision]
        saving = (results["floor"][precision]["t_encode_s"] + results["floor"][precision]["t_pair_s"]
                  - row["t_encode_s"] - row["t_pair_s"])
        assert row["pays_after_targets"] == (pytest.approx(row["compile_s"] / saving) if saving > 0 else None)
    features = results["features"]
    assert features["images"] == 16 and features["resolution"] == 56 and features["min_cosine_fp32_amp"] > 0.99
    assert results["topk"]["identical"] is True and results["topk"]["database"] == 3000
    photos = results["photos"]  # your photos: each photo encoded once (the references, and box shots' masks, too)
    assert photos["fp32_all_pairs"]["encoder_passes"] == 6 + 4 + 2 and photos["fp32_all_pairs"]["sam2_pairs"] == 2 * 6
    assert photos["fp32_shortlist"]["sam2_pairs"] == 2 * 2 and photos["fp32_shortlist"]["encoder_passes"] <= 4 + 4 + 2
    index = results["photo_index"]  # built once, then reused, then only the new photos embedded
    assert index["first"]["added"] == 40 and index["second"] == {**index["second"], "added": 0, "kept": 40}
    assert index["after_adding_1_percent"]["added"] == 1
    assert index["projection_100k"]["first_search_s"] == pytest.approx(100_000 * index["first"]["seconds"] / 40)
    library = results["library"]  # real-size photos and a clip, at the quick scale
    assert library["photo_size"] == [756, 1008] and library["clip_frames"] == 30
    for name in ("jpeg_whole", "jpeg_reduced", "heic", "clip_sampled_2fps", "clip_every_frame"):
        assert list(library[name]) == workers
    assert set(library["index"]) == {"fp32_whole", "fp32_reduced", "amp_whole", "amp_reduced"}
    per_photo = 1 / library["index"]["amp_reduced" if results["amp_native"] else "fp32_reduced"]
    assert library["projection_100k_index_hours"] == pytest.approx(100_000 * per_photo / 3600)
    memory = results["video_memory"]  # one search per clip length, its peak memory measured
    assert memory["minutes"] == [1, 0.5] and memory["0.5min"]["frames_tracked"] == 60 and memory["1min"]["peak_rss_mb"] > 0
    compared = library["reduced_vs_whole"]
    assert -1 <= compared["dinov2_min_cosine"] <= compared["dinov2_mean_cosine"] <= 1 + 1e-6
    assert 0 <= compared["sam2_mask_agreement"] <= 1 and math.isfinite(compared["sam2_max_score_diff"])


def test_the_report_has_its_columns_and_a_row_per_suite(bench):
    _, stdout, _ = bench
    header = stdout.splitlines()[0].split()
    assert header == ["measure", "fp32", "amp", "amp", "speed-up", "notes"]
    assert "peak matmul" in stdout and "floor: t_encode | t_pair" in stdout and "of peak" in stdout
    for suite, rows in SUITE_ROWS.items():
        for row in rows:
            assert row in stdout, (suite, row)
    assert stdout.rstrip().splitlines()[-2].startswith("machine: ")
