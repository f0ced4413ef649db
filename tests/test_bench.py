"""bench.py runs every suite on shrunk models and small workloads, so it cannot rot. Timings are
reported, never asserted; what is asserted is what the bench promises to measure."""
import json

from conftest import run_script


def test_bench_quick_on_tiny_models(tiny_sam2, tiny_dinov2, tmp_path):
    cfg, _ = tiny_sam2
    # the compile suite's code runs, its compiler does not (test_feed_and_compile.py tests that)
    result = run_script("bench.py", "--quick", "--sam2_cfg", cfg, "--dinov2", tiny_dinov2,
                        "--image_size", 72, 96, "--topk_database", 3000, "--topk_shard", 500,
                        "--topk_queries", 12, "--index_photos", 40, "--device", "cpu", "--output_dir", tmp_path,
                        env={"TORCHDYNAMO_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert not (tmp_path / "bench_results.json").exists()  # one file: metrics.json
    for workload in ("all_pairs", "k_candidates"):
        row = results["retrieval"][workload]
        for precision in ("fp32", "amp"):
            assert row[precision]["encoder_passes"] == row["distinct_images"]  # each image encoded once
            assert row[precision]["s_per_pair"] > 0 and row[precision]["floor_s_per_pair"] > 0
        assert row["official_s_per_pair"] > 0 and row["max_score_diff"] < 0.01
        assert row["tied_share_amp"] <= row["tied_share_fp32"]  # amp makes no new ties
    assert results["retrieval"]["k_candidates"]["distinct_images"] == 2 + 2 + 2 * 2  # 2 x 4 candidates, 2 shared
    assert results["retrieval"]["all_pairs"]["pairs"] == 2 * 3
    segmentation = results["segmentation"]
    assert segmentation["targets"] == 2 and segmentation["masks_not_blank"] and segmentation["mask_agreement"] > 0.99
    features = results["features"]
    assert features["fp32"]["pipeline_images_per_s"] > 0 and features["min_cosine_fp32_amp"] > 0.99
    assert results["topk"]["identical"] is True
    photos = results["photos"]  # your photos: each photo encoded once; a shortlist of 2 per object
    assert photos["fp32_all_pairs"]["encoder_passes"] == 6 + 4 and photos["fp32_all_pairs"]["sam2_pairs"] == 2 * 6
    assert photos["fp32_shortlist"]["sam2_pairs"] == 2 * 2 and photos["fp32_shortlist"]["encoder_passes"] <= 4 + 4
    assert "k_candidates" in result.stdout and "top-K" in result.stdout
    machine = results["machine"]  # what it ran on, and how far from that machine's peak
    assert machine["cpu"] and machine["peak_fp32_flops"] > 0 and machine["peak_bf16_flops"] > 0
    assert results["flops"]["encode"] > 0 and results["flops"]["pair"] > 0 and "of peak" in result.stdout
    feed = results["feed"]  # images/s delivered with 0 .. cores decoding workers, beside the encode rate
    for name in ("scene", "photo"):
        assert list(feed[name]["images_per_s"]) == [str(w) for w in range(machine["cores"] + 1)]
        assert all(rate > 0 for rate in feed[name]["images_per_s"].values())
    assert feed["encode_images_per_s"]["fp32"] > 0
    index = results["photo_index"]  # the photo index: built once, then reused, then only the new photos embedded
    assert index["first"]["added"] == 40 and index["second"] == {**index["second"], "added": 0, "kept": 40}
    assert index["after_adding_1_percent"]["added"] == 1 and index["projection_100k"]["first_search_s"] > 0
    for precision in ("fp32", "amp"):  # compile: seconds, steady times, speed-ups
        row = results["compile"][precision]
        assert row["t_encode_s"] > 0 and row["t_pair_s"] > 0 and "compile_s" in row and row["encode_speedup"] > 0
