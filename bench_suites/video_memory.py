"""Memory over a long video: search_photos.py, as a user runs it, on one clip of 1 minute and one of
--video_minutes (60 by default: a 1-hour clip; quick: 2), 640 x 360 at 10 frames/s, searched at
the default 2 frames/s; the peak resident memory of each run, which SAM2's memory window keeps
flat whatever the length. The model is SAM2.1-tiny shrunk to run the hour in minutes on a CPU
(utils/sam2_model.py `SHRUNK_OVERRIDES`): the window it holds per object is the same number of
frames as the full model's, each frame's memory smaller."""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from hydra import compose
from omegaconf import OmegaConf

from bench_suites.common import Context, timed
from utils.sam2_model import SAM2_1_MODELS, SHRUNK_OVERRIDES, build_sam2_model, lift_object_scores
from utils.synthetic import render_object, render_scene

REPO = Path(__file__).resolve().parents[1]


def write_long_clip(path: Path, minutes: float, rng) -> None:
    """An H.264 clip of a slowly panning scene: 640 x 360, 10 frames/s."""
    base = np.asarray(render_scene(rng, render_object(8), 360, 1280, scale=0.3)[0])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for k in range(int(minutes * 60 * 10)):
            offset = (k * 2) % 640
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, offset:offset + 640]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """(seconds, peak resident memory in MB) of a command run to its end: its VmHWM, read while it
    runs (not ru_maxrss, which a child inherits from its forking parent through exec)."""
    def run():
        errors = tempfile.TemporaryFile()  # not a pipe: a child that says much would wait on it
        process, peak = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors), 0.0
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                peak = max([peak] + [int(line.split()[1]) / 1024 for line in status.read_text().splitlines()
                                     if line.startswith("VmHWM:")])
            except OSError:  # it ended between the two looks
                pass
            time.sleep(0.1)
        if process.returncode:
            errors.seek(0)
            raise RuntimeError(f"search_photos.py failed: {errors.read().decode()[-2000:]}")
        return peak
    return timed(run)


def measure(ctx: Context) -> dict:
    folder, minutes = ctx.folder / "video_memory", ctx.args.video_minutes or (2 if ctx.quick else 60)
    cfg = folder / "shrunk.yaml"
    folder.mkdir()
    OmegaConf.save(compose(config_name=SAM2_1_MODELS["tiny"][0], overrides=SHRUNK_OVERRIDES), cfg)
    torch.manual_seed(ctx.args.seed)
    torch.save({"model": lift_object_scores(build_sam2_model(str(cfg), None)).state_dict()}, folder / "shrunk.pt")
    rng = np.random.default_rng(ctx.args.seed + 13)
    row = {"minutes": [1, minutes], "video_fps": 2}
    for length in (1, minutes):
        root = folder / f"{length}min"
        (root / "images").mkdir(parents=True)
        (root / "references").mkdir()
        image, mask = render_scene(rng, render_object(8), 360, 640, scale=0.3)
        image.save(root / "references" / "object.jpg")
        ys, xs = np.nonzero(mask)
        (root / "references" / "object.txt").write_text(f"{xs.min()} {ys.min()} {xs.max() + 1} {ys.max() + 1}\n")
        write_long_clip(root / "images" / "clip.mp4", length, rng)
        seconds, peak = peak_rss_mb([sys.executable, str(REPO / "search_photos.py"), "--data_path", str(root),
                                     "--output_dir", str(root / "out"), "--sam2_cfg", str(cfg), "--sam2_checkpoint",
                                     str(folder / "shrunk.pt"), "--device", "cpu", "--video_fps", "2"])
        with np.load(root / "out" / "parts" / "videos" / "chunk_00000.npz") as part:  # the video's saved part
            tracked = len(np.unique(part["frame"]))
        row[f"{length}min"] = {"seconds": seconds, "peak_rss_mb": peak, "frames_tracked": tracked}
    return row


def rows(results: dict) -> list[list]:
    r = results["video_memory"]
    short, long = (r[f"{m}min"] for m in r["minutes"])
    return [[f"a {r['minutes'][1]}-minute clip at 2 frames/s ({long['frames_tracked']} frames): peak memory, MB",
             f"{long['peak_rss_mb']:.0f}", "", "", f"a 1-minute clip: {short['peak_rss_mb']:.0f} MB; "
                                                  f"{long['seconds']:.0f} s for the long one (shrunk SAM2)"]]
