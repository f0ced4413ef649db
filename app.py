"""Find your object in your photos and videos, on a web page: the search of search_photos.py, with a browser.

    python app.py --sam2_cfg configs/sam2.1/sam2.1_hiera_t.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_tiny.pt
    python app.py ... --dinov2 facebook/dinov2-small --shortlist 100     # large folders: a DINOv2 shortlist
    python app.py ... --host 0.0.0.0 --photos_root /data/photos           # for colleagues on the network

Serves a Gradio page on http://127.0.0.1:7860. Upload a photo of your object and show it: click on
it (a point on the object; a right click, or the toggle, for a point not on it), drag a box around
it, or paint over it, or upload its mask; the mask SAM2 makes of your clicks appears at once, and
is exactly what the search tracks. "Add this reference" keeps it and takes another photo of the
same object (k-shot). Then give a folder under --photos_root or upload photos and videos, press
Search and watch the progress bar. The results are the photos and videos ranked by SAM2's score,
each with its mask where the object is found (a video: its best frame, the times where the object
is present, and a clip of its frames with the masks), and downloads of rankings.csv and the masks.

A shared machine is the expected case (README "On a web page"): the page reads only under
--photos_root (default: the current folder), links resolved, and never its own --output_dir; it
serves only files it made for a search, under names nobody can guess; the queue is the only way to
run a search (one at a time, --queue_size waiting, --time_limit each, a Cancel button); requests
for another host name than the served ones are refused (DNS rebinding); uploads, files, pixels and
references are limited by flags; searches are removed after --keep_hours or beyond
--max_storage_mb. Each search writes its folder (the "Your own photos" layout, search_photos.py's
outputs in results/, their metrics.json with the page's run record) under <output_dir>/searches/;
a folder's DINOv2 photo index is kept in <output_dir>/index/. The page calls the same code as
search_photos.py: the same prompts and checks (utils/prompts.py), the same search
(utils/photo_search.py), the same metrics writer.
"""
import hashlib
import io
import json
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image
from starlette.middleware.trustedhost import TrustedHostMiddleware

from utils import dinov2
from utils.cli import (CliParser, add_sam2_args, add_search_args, positive_int, run_cli, run_record, sam2_run,
                       search_options, setup, write_metrics)
from utils.errors import UserError
from utils.images import PHOTO_SUFFIXES, decode, image_size, read_mask
from utils.io import atomic_write_bytes, save_png
from utils.loaders.custom import Bounds, Library, library_files
from utils.photo_search import (Models, mask_image, photo_mask_file, search, shot_masks_of, summary_metrics,
                                video_frame_images, video_mask_file)
from utils.prompts import Prompt, ReferenceFrame, mask_prompt, parse_prompt
from utils.pseudo_video import SCORES, PseudoVideo, prepare_frame
from utils.video import VIDEO_SUFFIXES
from utils.vis import overlay, with_prompt

SHOWN = 48  # results in the gallery (every one is in rankings.csv)
DISPLAY_SIDE = 1024  # the reference photo is shown at most this large; clicks are scaled back
CLIP_FRAMES, CLIP_SIDE = 120, 480  # a video result's clip: at most this many frames, this wide
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Clicks on the reference photo: a click adds a point, a drag draws a box, a right click adds a
# point not on the object. Each goes to the page through the hidden #click_event box, in the
# displayed image's natural pixels (the image is drawn with object-fit: contain).
CLICKS_JS = """
<script>
(() => {
  let start = null;
  const shown = () => document.querySelector('#preview img');
  const natural = (img, e) => {
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const left = r.left + (r.width - img.naturalWidth * scale) / 2;
    const top = r.top + (r.height - img.naturalHeight * scale) / 2;
    return [(e.clientX - left) / scale, (e.clientY - top) / scale, scale];
  };
  const send = (event) => {
    const box = document.querySelector('#click_event textarea, #click_event input');
    box.value = JSON.stringify({...event, nonce: Math.random()});
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const onPhoto = (e) => e.target === shown();
  document.addEventListener('mousedown', (e) => {
    if (onPhoto(e) && e.button === 0) { start = natural(shown(), e); e.preventDefault(); }
  });
  document.addEventListener('mouseup', (e) => {
    const img = shown();
    if (!start || !img || e.button !== 0) { start = null; return; }
    const [x, y, scale] = natural(img, e), size = [img.naturalWidth, img.naturalHeight];
    const [x0, y0] = start;
    start = null;
    if (Math.hypot(x - x0, y - y0) * scale < 6) send({kind: 'point', x: x0, y: y0, size, button: 'left'});
    else send({kind: 'box', x: x0, y: y0, x2: x, y2: y, size});
  });
  document.addEventListener('contextmenu', (e) => {
    if (!onPhoto(e)) return;
    e.preventDefault();
    const [x, y] = natural(shown(), e);
    send({kind: 'point', x, y, size: [shown().naturalWidth, shown().naturalHeight], button: 'right'});
  });
})();
</script>
"""
CSS = "#click_event {display: none !important}"


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_sam2_args(parser)
    add_search_args(parser, visualize=False)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--allowed_hosts", nargs="+", default=None,
                        help="host names a browser may use to reach the page (default: loopback names, --host, and "
                             "this machine's name and addresses); other Host headers are refused")
    parser.add_argument("--photos_root", default=".",
                        help="every folder and file a search reads must be under it, links resolved (default: the "
                             "current folder); --output_dir is never searched")
    parser.add_argument("--output_dir", default="outputs/app", help="searches and photo indexes")
    limits = Limits()
    for flag, field, what in LIMIT_FLAGS:
        parser.add_argument(f"--{flag}", type=float if field == "keep_hours" else positive_int,
                            default=getattr(limits, field), help=what)
    parser.add_argument("--seed", type=int, default=0)
    return parser


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the page; each a flag (`LIMIT_FLAGS`), these its defaults."""
    upload_mb: int = 100
    files: int = 5000
    megapixels: int = 100
    references: int = 8
    queue: int = 16
    seconds: int = 1800
    keep_hours: float = 24
    storage_mb: int = 5000

    @property
    def pixels(self) -> int:
        return self.megapixels * 10**6


LIMIT_FLAGS = (  # flag, Limits field, what it limits
    ("max_upload_mb", "upload_mb", "size of an uploaded file, in MB"),
    ("max_files", "files", "photos and videos per search (uploaded, or in the folder)"),
    ("max_megapixels", "megapixels", "pixels of a photo or video frame, read from its header before decoding"),
    ("max_references", "references", "reference photos per object"),
    ("queue_size", "queue", "searches waiting at most"),
    ("time_limit", "seconds", "seconds a search may run"),
    ("keep_hours", "keep_hours", "searches older than this are removed"),
    ("max_storage_mb", "storage_mb", "the searches' folders together; beyond it, the oldest are removed"),
)


class PhotoSearchPage:
    """The page's work: references and their previews, a search folder, the search, the results."""

    def __init__(self, models: Models, options, run, output_dir: Path, photos_root: Path, record: dict,
                 limits: Limits):
        self.models, self.options, self.run, self.record, self.limits = models, options, run, record, limits
        self.output_dir, self.photos_root = Path(output_dir).resolve(), Path(photos_root).resolve()
        self.served = Path(tempfile.mkdtemp(prefix="sam2_page_"))  # what a search hands to the browser
        engine = models.sam2.engine
        # the reference preview has an engine of its own (the same model): its cache keeps the last
        # photos clicked on, so that a click costs the decoder only
        self.preview_engine = PseudoVideo(engine.model, engine.amp, models.sam2.identity["compile"],
                                          engine.static_batch)
        self.preview_lock, self.cancelled = threading.Lock(), {}

    # -- the reference and its prompt ---------------------------------------------------------

    def decode(self, photo: str):
        """An uploaded photo as the search decodes it (pixels checked from the header first)."""
        side = None if self.options.full_decode else self.models.sam2.engine.image_size
        return decode(photo, exif=True, min_side=side, max_pixels=self.limits.pixels)

    def reference_loaded(self, photo: str | None):
        """A new reference photo: (its picture to click on, the painting canvas, prompt, mask,
        message)."""
        if not photo:
            return None, None, "", None, ""
        try:
            shown = display(self.decode(photo).image)
        except UserError as err:
            return None, None, "", None, self.message(err)
        return shown, {"background": shown, "layers": [], "composite": shown}, "", None, \
            "Now click on your object (right click: a point not on it), drag a box around it, or paint over it"

    def clicked(self, photo: str | None, prompt: str, negative: bool, event: str) -> str:
        """A click (a point) or a drag (the box) on the shown photo, added to the prompt's text."""
        if not photo or not event:
            return prompt
        try:  # the shown picture is the photo, upright, scaled by one factor
            click = json.loads(event)
            height, width = image_size(photo, exif=True, max_pixels=self.limits.pixels)
        except (UserError, ValueError):  # the photo's own message came with its upload
            return prompt
        scale = width / click["size"][0]
        if click["kind"] == "box":
            x1, x2 = sorted((click["x"] * scale, click["x2"] * scale))
            y1, y2 = sorted((click["y"] * scale, click["y2"] * scale))
            box = [min(max(v, 0), limit) for v, limit in ((x1, width), (y1, height), (x2, width), (y2, height))]
            lines = [line for line in prompt.splitlines() if len(line.split()) != 4]  # one box: the new one
            return "\n".join([" ".join(f"{v:.1f}" for v in box), *lines])
        label = 0 if negative or click["button"] == "right" else 1
        x, y = min(max(click["x"] * scale, 0), width), min(max(click["y"] * scale, 0), height)
        return "\n".join([*prompt.splitlines(), f"{x:.1f} {y:.1f} {label}"])

    def preview(self, photo: str | None, prompt: str = "", painted: dict | None = None,
                mask_upload: str | None = None):
        """The reference photo with the mask SAM2 makes of its prompt, and that mask (what the
        search tracks: `shot_masks_of`, the engine's frame-0 result): (picture, mask, message).
        Also the API's "preview"."""
        if not photo:
            return None, None, ""
        try:
            shot = self.shot(photo, prompt, painted, mask_upload)
            if shot is None:
                return display(self.decode(photo).image), None, ""
            picture, mask = self.shot_picture(shot)
        except UserError as err:
            return None, None, self.message(err)
        text = f"SAM2's mask of your object ({prompt_summary(shot.prompt)}): {int(mask.sum()):,} pixels"
        return picture, Image.fromarray(mask_image(mask)), text

    def shot_picture(self, shot: ReferenceFrame) -> tuple[Image.Image, np.ndarray]:
        """A reference with SAM2's mask of its prompt overlaid and the prompt drawn, and the mask.
        The preview engine keeps the last photos' features: a new click runs the decoder only."""
        decoded = self.decode(shot.image)
        with self.preview_lock:
            frame = prepare_frame(decoded, self.preview_engine.image_size,
                                  f"{shot.image}:{Path(shot.image).stat().st_mtime_ns}")
            mask = shot_masks_of(self.preview_engine, [frame], [shot.prompt])[0]
            self.preview_engine.forget(self.preview_engine.cached[:-4])
        prompt = shot.prompt
        return display(with_prompt(overlay(decoded.image, mask), None, prompt.box, prompt.points, prompt.labels)), mask

    def shot(self, photo: str, prompt: str, painted: dict | None, mask_upload: str | None) -> ReferenceFrame | None:
        """The reference photo with its prompt, checked as a prompt file is (utils/prompts.py): a
        painted mask, else an uploaded mask, else the clicks' text; None if none is given."""
        height, width = image_size(photo, exif=True, max_pixels=self.limits.pixels)
        mask = painted_mask(painted, height, width)
        if mask is None and mask_upload:
            mask = read_mask(mask_upload, exif=True)
        if mask is not None:
            return ReferenceFrame(photo, mask_prompt(mask, height, width, "mask"))
        if not prompt.strip():
            return None
        return ReferenceFrame(photo, parse_prompt(prompt, height, width, "prompt"))

    def add_reference(self, references: list, photo, prompt, painted, mask_upload):
        """"Add this reference": (references, their pictures, message, and the inputs emptied)."""
        try:
            references = references + [self.checked_shot(references, photo, prompt, painted, mask_upload)]
        except UserError as err:
            return references, self.reference_gallery(references), self.message(err), gr.update(), gr.update()
        return references, self.reference_gallery(references), f"{len(references)} reference(s) of your object; " \
            "add another, or search", None, ""

    def checked_shot(self, references: list, photo, prompt, painted, mask_upload) -> ReferenceFrame:
        if not photo:
            raise UserError("no reference photo", "reference photo", "upload a photo of your object")
        shot = self.shot(photo, prompt, painted, mask_upload)
        if shot is None:
            raise UserError("no point, box or mask", "reference photo",
                            "click on your object, drag a box around it, paint over it, or upload its mask")
        if len(references) >= self.limits.references:
            raise UserError(f"more than {self.limits.references} references", "references",
                            "search with these, or start the page with a larger --max_references")
        return shot

    def reference_gallery(self, references: list) -> list:
        """Each reference kept, with its own prompt and SAM2's mask of it."""
        return [(self.shot_picture(r)[0], f"reference {k}: {prompt_summary(r.prompt)}")
                for k, r in enumerate(references, start=1)]

    # -- the search ---------------------------------------------------------------------------

    def search(self, references: list, photo: str | None = None, prompt: str = "", painted: dict | None = None,
               mask_upload: str | None = None, name: str = "my_object", folder: str | None = None,
               uploads: list | None = None, score: str = "iou", request: gr.Request = None,
               progress=gr.Progress(track_tqdm=True)):  # noqa: ARG002 (gradio shows the search's own bars)
        """The Search button (and the API's "search"): (gallery, clips, downloads, ranking, skipped,
        message). Nothing of a search stays in the engine, whether it ends well or not."""
        session = request.session_hash if request is not None else "api"
        self.cancelled[session] = threading.Event()
        root = self.output_dir / "searches" / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(8)}"
        try:
            self.sweep()
            shots = list(references or [])
            if photo and (prompt or "").strip() or painted_mask(painted) is not None or (photo and mask_upload):
                shots.append(self.checked_shot(shots, photo, prompt or "", painted, mask_upload))
            if not shots:
                raise UserError("no reference", "reference photo", "upload a photo of your object and click on it, "
                                "drag a box around it, paint it, or upload its mask")
            library, index_dir = self.library(root, safe_name(name), shots, folder, uploads)
            summary = search(library, self.models, replace(self.options, score=score, index_dir=index_dir),
                             root / "results", self.run, self.interrupt(session))
            write_metrics(root / "results", summary_metrics(summary, score), self.record,
                          encoder_passes=summary["encoder_passes"], index=summary["index"],
                          search={"references": len(shots), "folder": folder if not uploads else None,
                                  "uploaded": len(uploads or [])})
        except UserError as err:
            shutil.rmtree(root, ignore_errors=True)  # a failed search leaves nothing behind
            return [], [], None, None, "", self.message(err)
        finally:
            self.models.sam2.reset()
            self.cancelled.pop(session, None)
        return self.results(library, summary, root / "results")

    def interrupt(self, session: str):
        """Called between units of work: stops a search that was cancelled or ran too long."""
        deadline, cancelled = time.monotonic() + self.limits.seconds, self.cancelled[session]

        def check():
            if cancelled.is_set():
                raise UserError("search cancelled", "Cancel", "press Search to start again")
            if time.monotonic() > deadline:
                raise UserError(f"the search took longer than the page's limit of {self.limits.seconds} s",
                                "search", "search fewer photos, or ask for a larger --time_limit")
        return check

    def cancel(self, request: gr.Request = None) -> str:
        event = self.cancelled.get(request.session_hash if request is not None else "api")
        if event is None:
            return "No search is running"
        event.set()
        return "Cancelling the search..."

    def library(self, root: Path, name: str, shots: list[ReferenceFrame], folder: str | None,
                uploads: list | None) -> tuple[Library, Path | None]:
        """The search's folder in the "Your own photos" layout (its prompts written beside their
        photos, for the record) and the library read from it; and the photo index's folder."""
        objects = []
        for k, shot in enumerate(shots, start=1):
            stem = name if k == 1 else f"{name}_{k}"
            suffix = Path(shot.image).suffix.lower() if Path(shot.image).suffix.lower() in PHOTO_SUFFIXES else ".jpg"
            image = f"references/{stem}{suffix}"
            atomic_write_bytes(root / image, Path(shot.image).read_bytes())
            if shot.prompt.mask is not None:
                save_png(root / "references" / f"{stem}.mask.png", mask_image(shot.prompt.mask))
            else:
                atomic_write_bytes(root / "references" / f"{stem}.txt", shot.prompt.text().encode())
            objects.append(ReferenceFrame(image, shot.prompt))
        bounds = Bounds(self.photos_root, excluded=(self.output_dir,), own=(root.resolve(),))
        if uploads:
            if len(uploads) > self.limits.files:
                raise UserError(f"{len(uploads)} files uploaded, more than the page's {self.limits.files}",
                                "photos", "upload fewer, or give a folder")
            for k, upload in enumerate(uploads):
                atomic_write_bytes(root / "images" / f"{k:05d}_{safe_name(Path(upload).name)}",
                                   Path(upload).read_bytes())
            index_dir = None
        else:
            photos = self.photo_folder(folder)
            (root / "images").symlink_to(photos, target_is_directory=True)
            index_dir = self.output_dir / "index" / hashlib.sha1(str(photos).encode()).hexdigest()[:16]
        photos, videos, skipped = library_files(root, bounds, self.limits.pixels)
        if len(photos) + len(videos) > self.limits.files:
            raise UserError(f"the folder holds {len(photos) + len(videos)} photos and videos, more than the page's "
                            f"{self.limits.files}", "folder",
                            "choose a smaller folder, or ask for a larger --max_files")
        return Library(root, {name: objects}, photos, videos, skipped, bounds), index_dir

    def photo_folder(self, folder: str | None) -> Path:
        if not folder or not folder.strip():
            raise UserError("no photos to search", "photos", "give a folder, or upload photos and videos")
        given = Path(folder.strip()).expanduser()
        path = (given if given.is_absolute() else self.photos_root / given).resolve()
        if not path.is_relative_to(self.photos_root) or path.is_relative_to(self.output_dir):
            raise UserError("this folder cannot be searched from here", f"folder {folder.strip()}",
                            "choose a folder under the page's photo folder, or upload the photos")
        if not path.is_dir():
            raise UserError("folder not found", f"folder {folder.strip()}", "give the path of a folder of photos")
        return path

    def results(self, library: Library, summary: dict, results: Path):
        """(gallery, clips of found videos, downloads, ranking, skipped files, message)."""
        name = next(iter(summary["rankings"]))
        ranked = summary["rankings"][name]
        served = self.served / secrets.token_hex(8)
        gallery = [(self.result_picture(library, results, name, row), f"{rank}. {caption(row)}")
                   for rank, row in enumerate(ranked[:SHOWN], start=1)]
        clips = [(str(self.clip(library, results, name, row, served)), caption(row))
                 for row in ranked[:SHOWN] if "frames" in row and row["found"]]
        found = len(summary["found"][name])
        skipped = "\n".join(f"- {s.file}: {s.reason}" for s in summary["skipped"])
        text = (f"Found in {found} of {len(ranked)} photos and videos searched ({summary['photos']} photos and "
                f"{summary['videos']} videos in the folder); best first, masks overlaid where found"
                + (f"; {len(summary['skipped'])} files skipped (below)" if summary["skipped"] else ""))
        return gallery, clips, downloads(results, served), ranking_json(ranked), skipped, text

    def result_picture(self, library: Library, results: Path, name: str, row: dict) -> Image.Image:
        if "frames" in row:
            image = video_frame_images(library, row["image"], self.options.video_fps, {row["frame"]})[row["frame"]]
            mask_file = results / video_mask_file(library, name, row["image"], row["frame"])
        else:
            image, mask_file = library.open(row["image"]), results / photo_mask_file(library, name, row["image"])
        return display(overlay(image, read_mask(mask_file)) if mask_file.is_file() else image)

    def clip(self, library: Library, results: Path, name: str, row: dict, served: Path) -> Path:
        """A video result's sampled frames with the masks overlaid, as an animated WebP."""
        frames = row["frames"][:: max(1, len(row["frames"]) // CLIP_FRAMES)][:CLIP_FRAMES]
        images = video_frame_images(library, row["image"], self.options.video_fps, {f["frame"] for f in frames})
        pictures = []
        for frame in frames:
            mask_file = results / video_mask_file(library, name, row["image"], frame["frame"])
            image = images[frame["frame"]]
            pictures.append(display(overlay(image, read_mask(mask_file)) if mask_file.is_file() else image, CLIP_SIDE))
        buffer = io.BytesIO()
        step_ms = 1000 * (frames[1]["time"] - frames[0]["time"]) if len(frames) > 1 else 500
        pictures[0].save(buffer, format="WEBP", save_all=True, append_images=pictures[1:], duration=max(40, step_ms),
                         loop=0, quality=80)
        return atomic_write_bytes(served / f"{library.result_stem(row['image']).replace('/', '_')}.webp",
                                  buffer.getvalue())

    def sweep(self) -> None:
        """Remove the searches older than --keep_hours, then the oldest while they pass
        --max_storage_mb (and what was handed to the browser for them)."""
        folders = sorted(p for p in (self.output_dir / "searches").glob("*") if p.is_dir()) \
            if (self.output_dir / "searches").is_dir() else []
        served = sorted(self.served.glob("*"))
        now, keep = time.time(), self.limits.keep_hours * 3600
        sizes = {f: sum(p.stat().st_size for p in f.rglob("*") if p.is_file() and not p.is_symlink()) for f in folders}
        total = sum(sizes.values())
        for folder in folders:
            if now - folder.stat().st_mtime > keep or total > self.limits.storage_mb * 2**20:
                shutil.rmtree(folder, ignore_errors=True)
                total -= sizes[folder]
        for folder in served:
            if now - folder.stat().st_mtime > keep:
                shutil.rmtree(folder, ignore_errors=True)

    def message(self, err: UserError) -> str:
        """An error as the page shows it: no path of this machine, only file names."""
        return f"**{err.what}** ({hide_paths(err.where)}): {hide_paths(err.fix)}"


def hide_paths(text: str) -> str:
    """Absolute paths in `text` cut to their last part (a remote user sees file names only)."""
    return re.sub(r"(?<![\w.])/(?:[^\s/():,'\"]+/)*([^\s/():,'\"]*)", lambda m: m.group(1) or "/", text)


def display(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """A picture for the page: at most `side` pixels on its longer side."""
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def painted_mask(painted: dict | None, height: int | None = None, width: int | None = None) -> np.ndarray | None:
    """What was painted on the canvas (any layer's opaque pixels), at the photo's size, or None."""
    layers = (painted or {}).get("layers") or []
    masks = [np.asarray(Image.open(layer) if isinstance(layer, str) else layer)[..., -1] > 0 for layer in layers]
    mask = np.logical_or.reduce(masks) if masks else None
    if mask is None or not mask.any():
        return None
    if height is not None and mask.shape != (height, width):  # painted on the shown, smaller picture
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return mask


def prompt_summary(prompt: Prompt) -> str:
    """What a prompt holds, in words: `mask`, or `box, 2 points on it, 1 not`."""
    if prompt.mask is not None:
        return "mask"
    on = sum(prompt.labels)
    parts = (["box"] if prompt.box is not None else []) + ([f"{on} point{'s' * (on != 1)} on it"] if on else []) + \
        ([f"{len(prompt.labels) - on} not"] if len(prompt.labels) > on else [])
    return ", ".join(parts)


def safe_name(name: str | None) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or "").strip())
    return cleaned.strip("_.") or "my_object"


def caption(row: dict) -> str:
    where = Path(row["image"]).relative_to("images")
    text = f"{where} — {row['score']:.3f}" + (" · found" if row["found"] else "")
    if "frames" in row:
        from utils.photo_search import presence_ranges

        spans = ", ".join(f"{a:.1f}-{b:.1f} s" for a, b in presence_ranges(row["frames"]))
        text += f" · best at {row['time']:.1f} s" + (f" · present {spans}" if spans else "")
    return text


def downloads(results: Path, served: Path) -> list[str]:
    """rankings.csv, and the masks in one zip, copied where the page serves them from."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted((results / "masks").rglob("*.png")):
            bundle.write(path, path.relative_to(results))
    return [str(atomic_write_bytes(served / "rankings.csv", (results / "rankings.csv").read_bytes())),
            str(atomic_write_bytes(served / "masks.zip", buffer.getvalue()))]


def ranking_json(ranked: list[dict]) -> list[dict]:
    return [{"image": r["image"], "score": r["score"], "found": r["found"],
             **({"time": r["time"]} if "time" in r else {})} for r in ranked]


def build_page(page: PhotoSearchPage, dinov2_shortlist: bool) -> gr.Blocks:
    options = page.options
    media = ["image", "video", *PHOTO_SUFFIXES, *VIDEO_SUFFIXES]
    with gr.Blocks(title="Find your object in your photos", analytics_enabled=False,
                   delete_cache=(3600, int(page.limits.keep_hours * 3600))) as demo:
        gr.Markdown("# Find your object in your photos and videos\nSAM2 looks for the object of your reference "
                    "photo in every photo and video and segments it where it is found.")
        references = gr.State([])
        with gr.Row():
            with gr.Column():
                photo = gr.File(file_types=["image", *PHOTO_SUFFIXES], label="1. A photo of your object",
                                elem_id="reference")
                shown = gr.Image(label="click on your object (right click: not on it), or drag a box around it",
                                 interactive=False, elem_id="preview", buttons=[])
                with gr.Row():
                    negative = gr.Checkbox(label="clicks are points NOT on the object", elem_id="negative")
                    undo = gr.Button("Undo", size="sm", elem_id="undo")
                    clear = gr.Button("Clear", size="sm", elem_id="clear")
                prompt = gr.Textbox(label="its prompt: a box 'x1 y1 x2 y2' and points 'x y 1' (on it) or 'x y 0' "
                                    "(filled by your clicks)", lines=3, elem_id="prompt")
                click_event = gr.Textbox(elem_id="click_event")
                mask = gr.Image(label="the mask SAM2 tracks", interactive=False, elem_id="reference_mask",
                                image_mode="L", format="png", buttons=[])
                with gr.Accordion("...or its mask", open=False):
                    painted = gr.ImageEditor(label="paint over your object", type="numpy", sources=(),
                                             brush=gr.Brush(colors=["#ff3030"], default_size=20),
                                             transforms=(), elem_id="paint")
                    mask_upload = gr.File(file_types=["image"], label="or upload its mask (white on black, the "
                                          "photo's size)", elem_id="mask_upload")
                name = gr.Textbox(value="my_object", label="its name", elem_id="name")
                add = gr.Button("Add this reference (more photos of the object: better results)", elem_id="add")
                added = gr.Gallery(label="references", columns=4, height=160, elem_id="references")
            with gr.Column():
                folder = gr.Textbox(label="2. A folder of photos and videos under the page's photo folder",
                                    elem_id="folder")
                uploads = gr.File(file_count="multiple", file_types=media, label="...or upload photos and videos",
                                  elem_id="uploads")
                score = gr.Dropdown(list(SCORES), value=options.score, label="ranked by the SAM2 score")
                gr.Markdown(f"A DINOv2 shortlist of {options.shortlist} photos and videos goes to SAM2"
                            if dinov2_shortlist else "Every photo and video goes to SAM2 (start the page with --dinov2 "
                            "for large folders)")
                with gr.Row():
                    go = gr.Button("Search", variant="primary", elem_id="search")
                    stop = gr.Button("Cancel", elem_id="cancel")
                status = gr.Markdown(elem_id="status")
        results = gr.Gallery(label="photos and videos, best first (click one to see it large)", columns=6,
                             height="auto", elem_id="results")
        clips = gr.Gallery(label="videos where the object is found: their frames with the masks", columns=3,
                           height="auto", elem_id="clips")
        files = gr.File(label="downloads: rankings.csv and the masks", file_count="multiple", elem_id="downloads")
        with gr.Accordion("skipped files", open=False):
            skipped = gr.Markdown(elem_id="skipped")
        with gr.Accordion("ranking (JSON)", open=False):
            ranking = gr.JSON(elem_id="ranking")

        light = {"concurrency_limit": 2, "concurrency_id": "light", "api_visibility": "private"}
        private = {"queue": False, "api_visibility": "private"}
        previewed = {"concurrency_limit": 1, "concurrency_id": "preview", "trigger_mode": "always_last"}
        photo.upload(page.reference_loaded, photo, [shown, painted, prompt, mask, status], **light)
        click_event.change(page.clicked, [photo, prompt, negative, click_event], prompt, **private)
        undo.click(lambda text: "\n".join(text.splitlines()[:-1]), prompt, prompt, **private)
        clear.click(lambda: "", None, prompt, **private)
        prompt.change(page.preview, [photo, prompt, painted, mask_upload], [shown, mask, status], api_name="preview",
                      **previewed)
        for source in (painted.change, mask_upload.change):
            source(page.preview, [photo, prompt, painted, mask_upload], [shown, mask, status],
                   api_visibility="private", **previewed)
        add.click(page.add_reference, [references, photo, prompt, painted, mask_upload],
                  [references, added, status, photo, prompt], **light)
        go.click(page.search, [references, photo, prompt, painted, mask_upload, name, folder, uploads, score],
                 [results, clips, files, ranking, skipped, status], api_name="search", concurrency_id="sam2",
                 concurrency_limit=1)
        stop.click(page.cancel, None, status, **private)
    return demo.queue(api_open=False, max_size=page.limits.queue, default_concurrency_limit=1)


def allowed_hosts(host: str, given: list[str] | None) -> list[str]:
    """Host names a request may carry: as given, else loopback, --host and this machine's names."""
    if given:
        return given
    names = {*LOOPBACK_HOSTS, socket.gethostname(), socket.getfqdn()}
    if host not in ("0.0.0.0", "::"):
        names.add(host)
    else:
        try:
            names.update(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            pass
    return sorted(names)


def page_from_args(args) -> tuple[PhotoSearchPage, gr.Blocks]:
    run = setup(args, distributed=False)
    models = Models(sam2_run(args, run), dinov2.load_dinov2(args.dinov2, run.device, run.amp) if args.dinov2 else None,
                    args.dinov2)
    photos_root = Path(args.photos_root).expanduser().resolve()
    if not photos_root.is_dir():
        raise UserError("folder not found", f"--photos_root {args.photos_root}",
                        "give the folder that holds the photos")
    limits = Limits(**{field: getattr(args, flag) for flag, field, _ in LIMIT_FLAGS})
    page = PhotoSearchPage(models, search_options(args), run, Path(args.output_dir), photos_root,
                           run_record(args, run), limits)
    return page, build_page(page, args.dinov2 is not None)


def web_app(page: PhotoSearchPage, demo: gr.Blocks, hosts: list[str]) -> FastAPI:
    """The page as an ASGI app: requests for other host names refused, uploads limited, no file
    served but those a search made (Gradio's cache)."""
    app = FastAPI()
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    return gr.mount_gradio_app(app, demo, path="", max_file_size=f"{page.limits.upload_mb}mb", allowed_paths=[],
                               head=CLICKS_JS, css=CSS, show_error=False, footer_links=[])


def serve(page: PhotoSearchPage, demo: gr.Blocks, host: str, port: int, hosts: list[str]) -> uvicorn.Server:
    """The page's server (run it with `.run()`, or in a thread)."""
    return uvicorn.Server(uvicorn.Config(web_app(page, demo, hosts), host=host, port=port, log_level="warning"))


def main(args) -> None:
    page, demo = page_from_args(args)
    page.sweep()
    hosts = allowed_hosts(args.host, args.allowed_hosts)
    print(f"the page: http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port} "
          f"(host names accepted: {', '.join(hosts)}; photos under {page.photos_root})")
    serve(page, demo, args.host, args.port, hosts).run()


if __name__ == "__main__":
    run_cli(main, get_args_parser())
