"""The web page's work (app.py lays it out and serves it): a reference photo and the mask SAM2
makes of its clicks, a search folder checked against the page's root and limits, the search
(utils/photo_search.py, as search_photos.py runs it), and its results as the page shows them.
Each search writes its folder under <output_dir>/searches/ (the "Your own photos" layout, the
search's outputs in results/, metrics.json with the page's run record); what the browser gets is
copied to a folder of its own, under names nobody can guess. Everything a request may ask is
bounded by `Limits`; an error is a message with file names only, never a path of this machine.
"""
import hashlib
import io
import json
import re
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from utils.errors import UserError
from utils.images import PHOTO_SUFFIXES, decode, image_size, read_mask
from utils.io import atomic_write_bytes, save_png, write_metrics
from utils.loaders.custom import Bounds, Library, library_files
from utils.photo_search import Models, search, shot_masks_of, summary_metrics
from utils.prompts import Prompt, ReferenceFrame, mask_prompt, parse_prompt
from utils.pseudo_video import PseudoVideo, prepare_frame
from utils.search_outputs import mask_image, presence_ranges, result_overlay, video_frame_overlays
from utils.vis import overlay, with_prompt

SHOWN = 48  # results in the gallery (every one is in rankings.csv)
DISPLAY_SIDE = 1024  # the reference photo is shown at most this large; clicks are scaled back
CLIP_FRAMES, CLIP_SIDE = 120, 480  # a video result's clip: at most this many frames, this wide


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
        return display(result_overlay(results, library, name, row, self.options.video_fps))

    def clip(self, library: Library, results: Path, name: str, row: dict, served: Path) -> Path:
        """A video result's sampled frames with the masks overlaid, as an animated WebP."""
        frames = row["frames"][:: max(1, len(row["frames"]) // CLIP_FRAMES)][:CLIP_FRAMES]
        overlays = video_frame_overlays(results, library, name, row["image"], self.options.video_fps,
                                        {f["frame"] for f in frames})
        pictures = [display(overlays[frame["frame"]], CLIP_SIDE) for frame in frames]
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
