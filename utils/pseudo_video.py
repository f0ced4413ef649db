"""The pseudo-video engine: reference frames with a prompt, then the frames that follow them.

Frames 0..n-1 of a pseudo-video are the reference images (each prompted with a mask, a box,
points, or a box and points; k-shot when n > 1), then come targets:
- `score_pairs` scores a batch of pseudo-videos [references, target], each target the last frame
  of its own video: what the official `SAM2VideoPredictor` computes for the last frame of the
  video [ref_1, ..., ref_n, target] whose references got the same prompts through `add_new_mask`
  / `add_new_points_or_box`;
- `track` follows objects through the frames of a real video, [references, frame_1, frame_2,
  ...]: what the official predictor's `propagate_in_video` computes for each frame, keeping only
  the memory window SAM2 reads (the reference frames and the last few frames), so that memory
  stays flat over a clip of any length.
tests/test_pseudo_video.py and tests/test_video.py check both against the official predictor
(SAM 2.1 and SAM 2.0 configs, frames of different sizes, objects present and absent, every
prompt kind), with differences that change no number:
- it keeps the predicted IoUs of the candidate masks, which `track_step` drops;
- it scores a batch of targets against their references at once, and tracks several objects
  through one pass over a video's frames;
- it encodes each image once per run: backbone features are cached by image id, and the
  memory encoder is not run on pair targets (nothing comes after them).
One difference does change numbers, on purpose: boxes and points are scaled to the model's input
by the size of the image they were drawn on. The official predictor scales them by the video's
size, which is its last frame's (`load_video_frames`), so on a pseudo-video whose frames differ
in size it would misplace the reference's prompt; both agree when the frames have one size (or
when the official predictor is given relative coordinates with `normalize_coords=False`).
The model is driven through `SAM2Base`'s own methods; nothing of sam2 is re-implemented.
"""
import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sam2.modeling.sam2_base import SAM2Base
from sam2.utils.misc import concat_points, fill_holes_in_mask_scores

from utils.amp import MatmulAttention, autocast, keep_fp32
from utils.images import Decoded
from utils.prompts import Prompt
from utils.sam2_fast import compile_modules, reuse_position_encoding

# sam2.utils.misc.load_video_frames normalises with these
IMG_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float32)[:, None, None]
IMG_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float32)[:, None, None]
SCORES = ("iou", "object", "iou_x_object")


@dataclass(frozen=True)
class Frame:
    """An image ready for SAM2: its pixels resized to the model's square input (still bytes, a
    quarter of their float32 size to hand over from a decoding worker and copy to a GPU:
    `normalise` finishes them on the model's device), and the image's own size."""
    pixels: torch.Tensor  # [3, S, S] uint8
    height: int
    width: int
    image_id: str | None = None  # frames with an id share one encoder pass per run


def prepare_frame(image: Image.Image | Decoded, image_size: int, image_id: str | None = None) -> Frame:
    """The first half of sam2's video frame loader (`_load_img_as_tensor`): PIL RGB,
    resize((S, S)) with PIL's default filter; `normalise` does the rest. An image decoded
    reduced (utils/images.py `Decoded`) keeps its photo's own size as the frame's size."""
    height, width = (image.height, image.width)
    if isinstance(image, Decoded):
        image = image.image
    resized = np.array(image.convert("RGB").resize((image_size, image_size)))  # a writable copy, as torch needs
    return Frame(torch.from_numpy(resized).permute(2, 0, 1).contiguous(), height, width, image_id)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """The rest of sam2's frame loader on a batch of `Frame` pixels, on their device: /255 in
    float64 (as numpy divides the uint8 array), float32, then ImageNet mean and std (the same
    operations in the same order as `load_video_frames`, so the same float32s)."""
    scaled = (pixels.to(torch.float64) / 255.0).float()
    return (scaled - IMG_MEAN.to(pixels.device)) / IMG_STD.to(pixels.device)


@dataclass
class Reference:
    """The memory of the reference frames, as the official predictor stores it after
    `propagate_in_video_preflight`: one conditioning output per reference frame; and each
    frame's (height, width)."""
    cond_outputs: dict[int, dict]
    sizes: list[tuple[int, int]]

    @property
    def num_frames(self) -> int:
        return len(self.cond_outputs)


@dataclass
class TargetScores:
    """What SAM2 predicts on a batch of targets (B targets, M candidate masks)."""
    ious: torch.Tensor  # [B, M] predicted IoU of each candidate mask
    iou: torch.Tensor  # [B] predicted IoU of the chosen mask (sam2 keeps the best one)
    object_score_logit: torch.Tensor  # [B] < 0 means "object absent" (sam2 then blanks the mask)
    low_res_masks: torch.Tensor | None = None  # [B, 1, h, w] mask logits of the model, holes filled
    sizes: list[tuple[int, int]] | None = None  # (height, width) of each target

    def score(self, kind: str) -> torch.Tensor:
        """The presence score of each target (see `presence_score`)."""
        return presence_score(self.iou, self.object_score_logit, kind)

    def mask_logit(self, row: int) -> torch.Tensor:
        """Target `row`'s mask logits at its own size, [H, W] float32 on the CPU (> 0: in the
        mask), upsampled as the official predictor does it for the video's frames."""
        with torch.no_grad():
            return F.interpolate(self.low_res_masks[row:row + 1], size=self.sizes[row], mode="bilinear",
                                 align_corners=False)[0, 0].cpu()


@dataclass
class Track:
    """One object followed through a video: its reference memory, and the outputs of the frames
    tracked so far that SAM2 still reads (the last `window` of them; older ones are dropped)."""
    reference: Reference
    window: int
    recent: dict[int, dict] = field(default_factory=dict)  # frame index in the video -> output

    def remember(self, frame_idx: int, output: dict) -> None:
        self.recent[frame_idx] = output
        for old in [t for t in self.recent if t <= frame_idx - self.window]:
            del self.recent[old]


def presence_score(iou: torch.Tensor, object_score_logit: torch.Tensor, kind: str) -> torch.Tensor:
    """`iou` (the chosen mask's predicted IoU), `object` (sigmoid of the object-score logit) or
    `iou_x_object` (their product)."""
    if kind == "iou":
        return iou
    if kind == "object":
        return torch.sigmoid(object_score_logit)
    if kind == "iou_x_object":
        return iou * torch.sigmoid(object_score_logit)
    raise ValueError(f"unknown score {kind!r}, expected one of {SCORES}")


class PseudoVideo:
    """Drives a frozen SAM2 (`SAM2Base`, as built by `utils.sam2_model`) on pseudo-videos.

    amp: bf16 autocast (give it `utils.amp.amp_enabled(...)`); the mask decoder, whose outputs are
    the scores and the mask logits, then computes in fp32 from the bf16 features, and reference
    memories are stored in bf16 as always. An amp engine prepares its model instance for bf16
    (fp32 decoder, channels-last convolutions after the trunk, which give the same bf16 numbers
    faster): give an fp32 engine a model of its own.
    compiled: `torch.compile` of the image encoder, memory attention and mask decoder
    (utils/sam2_fast.py `compile_modules`), with static shapes: batches of more than one image or pair are padded
    to `static_batch` (the pair batch size), so that each shape compiles once; give it a model of
    its own too.
    matmul_attention: with amp on a CPU (not compiled), run SAM2's attention as bf16 matrix
    products (utils/amp.py `MatmulAttention`); None: on CPUs without AMX, where PyTorch's kernel
    gains nothing in bf16 (decided by the CPU, not by a timing, so that every process and every
    run of a machine computes the same numbers; bench.py measures both). `attention` says which."""

    def __init__(self, model: SAM2Base, amp: bool = False, compiled: bool = False, static_batch: int = 1,
                 matmul_attention: bool | None = None):
        self.model = model
        self.device = model.device
        self.amp = amp
        chosen = matmul_attention if matmul_attention is not None else not torch.cpu._is_amx_tile_supported()
        self.attention = {"kind": "matmul" if amp and self.device.type == "cpu" and not compiled and chosen
                          else "kernel"}
        if amp:
            keep_fp32(model.sam_mask_decoder, self.device)
            # the trunk's features come out channels-last: convolutions that are too skip a reorder
            for module in (model.image_encoder.neck, model.sam_mask_decoder):
                module.to(memory_format=torch.channels_last)
        if compiled:
            compile_modules(model)  # the compiled graph computes the position encoding once per shape itself
        else:
            reuse_position_encoding(model)
        self.static_batch = static_batch if compiled else 1
        self.encoder_passes = 0  # images that went through the image encoder
        self._backbone_cache: dict[str, list[torch.Tensor]] = {}
        self._pos_enc: list[torch.Tensor] | None = None  # the same for every image
        self._maskmem_pos_enc: list[torch.Tensor] | None = None  # the same for every memory
        self._holes_unfillable = False

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def prepare(self, image: Image.Image, image_id: str | None = None) -> Frame:
        return prepare_frame(image, self.image_size, image_id)

    def forget(self, image_ids) -> None:
        """Drop cached encoder outputs that no later pair needs."""
        for image_id in image_ids:
            self._backbone_cache.pop(image_id, None)

    def clear(self) -> None:
        """Drop every cached encoder output and reset the pass counter: the engine is as new."""
        self._backbone_cache.clear()
        self.encoder_passes = 0

    @property
    def cached(self) -> list[str]:
        """The image ids whose encoder outputs are cached, oldest first."""
        return list(self._backbone_cache)

    def autocast(self):
        """bf16 autocast with amp (and attention as matrix products where chosen), else nothing."""
        if self.attention["kind"] == "kernel":
            return autocast(self.device, self.amp)
        stack = contextlib.ExitStack()
        stack.enter_context(autocast(self.device, self.amp))
        stack.enter_context(MatmulAttention())
        return stack

    def encode(self, frames: list[Frame]) -> None:
        """Run the image encoder once on the frames not cached yet (one batch), and cache them."""
        frames = [f for f in frames if f.image_id is not None]
        if frames:  # none when every target of a step could not be read
            self._features(frames)

    @torch.no_grad()
    def _features(self, frames: list[Frame]):
        """Backbone features of a batch, encoding only the images not seen before."""
        to_encode = {}  # image id (or position, for frames without id) -> frame
        for i, frame in enumerate(frames):
            if frame.image_id is None:
                to_encode[i] = frame
            elif frame.image_id not in self._backbone_cache:
                to_encode.setdefault(frame.image_id, frame)
        fresh = {}
        if to_encode:
            # pinned frames (utils/feed.py) are copied to the GPU without blocking
            pixels = normalise(torch.stack([f.pixels.to(self.device, non_blocking=True) for f in to_encode.values()]))
            with self.autocast():
                backbone_out = self.model.forward_image(self._padded(pixels))
            self.encoder_passes += len(to_encode)
            if self._pos_enc is None:
                self._pos_enc = [pos[:1].clone() for pos in backbone_out["vision_pos_enc"]]
            for j, (key, frame) in enumerate(to_encode.items()):
                levels = [level[j:j + 1] for level in backbone_out["backbone_fpn"]]
                if frame.image_id is None:
                    fresh[key] = levels
                else:  # a clone, so the cache does not hold the whole batch alive
                    self._backbone_cache[frame.image_id] = [level.clone() for level in levels]
        per_frame = [self._backbone_cache[f.image_id] if f.image_id is not None else fresh[i]
                     for i, f in enumerate(frames)]
        batch = len(frames)
        backbone_out = {
            "backbone_fpn": [torch.cat(levels) for levels in zip(*per_frame)],
            "vision_pos_enc": [pos.expand(batch, -1, -1, -1) for pos in self._pos_enc],
        }
        _, vision_feats, vision_pos_embeds, feat_sizes = self.model._prepare_backbone_features(backbone_out)
        return vision_feats, vision_pos_embeds, feat_sizes

    def _mask_prompt(self, mask) -> torch.Tensor:
        """As `add_new_mask`: bilinear (antialiased) resize to S x S, then >= 0.5."""
        mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool)[None, None].float().to(self.device)
        size = self.image_size
        if mask.shape[-2:] != (size, size):
            mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=True)
            mask = (mask >= 0.5).float()
        return mask

    def _point_prompt(self, prompt: Prompt, frame: Frame) -> dict:
        """As `add_new_points_or_box` in one call: the box corners first, as points with labels 2
        and 3, then the points with theirs, scaled from the frame's pixels to the model's input."""
        coords = [list(prompt.box[:2]), list(prompt.box[2:])] if prompt.box is not None else []
        labels = [2, 3] if prompt.box is not None else []
        coords += [list(point) for point in prompt.points]
        labels += list(prompt.labels)
        points = torch.tensor(coords, dtype=torch.float32).reshape(1, -1, 2)
        points = points / torch.tensor([frame.width, frame.height]) * self.image_size
        return concat_points(None, points.to(self.device), torch.tensor([labels], dtype=torch.int32).to(self.device))

    def _fill_holes(self, low_res_masks: torch.Tensor) -> torch.Tensor:
        """sam2's hole filling, as the official predictor applies it. Where sam2 cannot run it
        (no CUDA extension, or masks on the CPU) it warns and returns the masks unchanged, on
        every call: the engine notes that once and then skips it (README: Troubleshooting)."""
        area = getattr(self.model, "fill_hole_area", 0)
        if area <= 0 or self._holes_unfillable:
            return low_res_masks
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            filled = fill_holes_in_mask_scores(low_res_masks, area)
        self._holes_unfillable = bool(skipped)
        return filled

    @torch.no_grad()
    def encode_reference(self, frames: list[Frame], prompts: list[Prompt]) -> Reference:
        """Build the reference memory, frame i prompted by prompts[i]. With a mask the memory is
        made from the mask itself (sam2's `_use_mask_as_output`); with a box or points, from the
        decoder's prediction (`reference_masks` gives it)."""
        if len(prompts) != len(frames) or not frames:
            raise ValueError("one prompt per reference frame, at least one frame")
        model, n = self.model, len(frames)
        cond_outputs = {}
        for idx, (frame, prompt) in enumerate(zip(frames, prompts)):
            mask = prompt.mask_for(frame.height, frame.width)
            vision_feats, vision_pos_embeds, feat_sizes = self._features([frame])
            with self.autocast():
                out = model.track_step(
                    frame_idx=idx, is_init_cond_frame=True, current_vision_feats=vision_feats,
                    current_vision_pos_embeds=vision_pos_embeds, feat_sizes=feat_sizes,
                    point_inputs=self._point_prompt(prompt, frame) if mask is None else None,
                    mask_inputs=self._mask_prompt(mask) if mask is not None else None,
                    output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                    num_frames=n, run_mem_encoder=False)
                pred_masks = self._fill_holes(out["pred_masks"])
                # the official preflight encodes memory from the stored low-res mask, upsampled
                high_res = F.interpolate(pred_masks, size=(self.image_size, self.image_size),
                                         mode="bilinear", align_corners=False)
                maskmem_features, maskmem_pos_enc = model._encode_new_memory(
                    current_vision_feats=vision_feats, feat_sizes=feat_sizes,
                    pred_masks_high_res=high_res, object_score_logits=out["object_score_logits"],
                    is_mask_from_pts=True)
            if self._maskmem_pos_enc is None:  # one copy for all references, as sam2 keeps it
                self._maskmem_pos_enc = maskmem_pos_enc
            cond_outputs[idx] = {
                # stored in bf16 by the official predictor; the rounding is part of its output
                "maskmem_features": maskmem_features.to(torch.bfloat16),
                "maskmem_pos_enc": self._maskmem_pos_enc,
                "pred_masks": pred_masks,
                "obj_ptr": out["obj_ptr"],
                "object_score_logits": out["object_score_logits"],
            }
        return Reference(cond_outputs, [(frame.height, frame.width) for frame in frames])

    def reference_mask(self, reference: Reference, index: int) -> np.ndarray:
        """The mask SAM2 makes on reference frame `index` from its prompt, at the frame's size: what
        the official predictor returns for that frame when the prompt is added (the decoder's
        low-resolution logits, holes filled, upsampled bilinearly, > 0). For a mask prompt it is
        the mask-as-output SAM2 stores (the prompt itself is the mask to show)."""
        logits = reference.cond_outputs[index]["pred_masks"].float()
        return (F.interpolate(logits, size=reference.sizes[index], mode="bilinear",
                              align_corners=False)[0, 0] > 0).cpu().numpy()

    def score_pairs(self, references: list[Reference], frames: list[Frame], with_masks: bool = True,
                    grad: bool = False) -> TargetScores:
        """Score a batch of pseudo-videos [references[b], frames[b]] (references with the same
        number of frames). With grad, autograd records the SAM2 heads, so that a trainable score
        head learns; everything before them runs without gradients (frozen weights)."""
        count = len(frames)
        padding = self._padding(count)  # copies of the last pair, whose results are dropped
        references, frames = references + references[-1:] * padding, frames + frames[-1:] * padding
        with torch.enable_grad() if grad else torch.no_grad():
            vision_feats, vision_pos_embeds, feat_sizes = self._features(frames)
            num_frames = references[0].num_frames
            cond_outputs = _batched_memory(references)
            with self.autocast():
                _, sam_outputs, _, _ = self.model._track_step(
                    frame_idx=num_frames, is_init_cond_frame=False,
                    current_vision_feats=vision_feats, current_vision_pos_embeds=vision_pos_embeds,
                    feat_sizes=feat_sizes, point_inputs=None, mask_inputs=None,
                    output_dict={"cond_frame_outputs": cond_outputs, "non_cond_frame_outputs": {}},
                    num_frames=num_frames + 1, track_in_reverse=False, prev_sam_mask_logits=None)
        _, _, ious, low_res_masks, _, _, object_score_logits = (output[:count] for output in sam_outputs)
        if with_masks:
            with torch.no_grad():
                low_res_masks = self._fill_holes(low_res_masks.float())
        ious = ious.float() if grad else ious.float().cpu()
        object_score_logit = object_score_logits.float()[:, 0]
        return TargetScores(ious=ious, iou=ious.max(dim=1).values,
                            object_score_logit=object_score_logit if grad else object_score_logit.cpu(),
                            low_res_masks=low_res_masks if with_masks else None,
                            sizes=[(f.height, f.width) for f in frames[:count]] if with_masks else None)

    def _padding(self, count: int) -> int:
        """Rows to add to a batch of `count`: compiled, a batch of several is padded to the static
        size (a single image or pair keeps its own shape: reference frames come one by one)."""
        return self.static_batch - count if 1 < count < self.static_batch else 0

    def _padded(self, pixels: torch.Tensor) -> torch.Tensor:
        padding = self._padding(len(pixels))
        return torch.cat([pixels, pixels[-1:].expand(padding, -1, -1, -1)]) if padding else pixels

    def track(self, reference: Reference) -> Track:
        """A new track of the object of `reference` (see `track_frame`). Its window holds the
        frames SAM2 reads back: the last `num_maskmem - 1` memories (every
        `memory_temporal_stride_for_eval`-th frame) and `max_obj_ptrs_in_encoder - 1` object
        pointers."""
        model = self.model
        stride = model.memory_temporal_stride_for_eval
        return Track(reference, max((model.num_maskmem - 1) * stride + 1, model.max_obj_ptrs_in_encoder))

    @torch.no_grad()
    def track_frame(self, tracks: list[Track], frame: Frame, position: int, frames_in_video: int) -> list[TargetScores]:
        """Track each object into the next frame of its video, as the official predictor's
        `propagate_in_video` does for the video [its references, frame 0, frame 1, ...]: the frame
        at `position` among the tracked frames (0 for the first) attends to its reference
        memories and to the memories and object pointers of the frames before it; its own
        memory is encoded for the frames after it. `frames_in_video`: how many frames are tracked
        (the official predictor's video length is that plus the references); any larger number
        gives the same numbers once the video reaches `max_obj_ptrs_in_encoder` frames. The frame
        is encoded once for all the tracks."""
        vision_feats, vision_pos_embeds, feat_sizes = self._features([frame])
        results = []
        for track in tracks:
            frame_idx = track.reference.num_frames + position
            output_dict = {"cond_frame_outputs": track.reference.cond_outputs, "non_cond_frame_outputs": track.recent}
            with self.autocast():
                out, sam_outputs, _, _ = self.model._track_step(
                    frame_idx=frame_idx, is_init_cond_frame=False, current_vision_feats=vision_feats,
                    current_vision_pos_embeds=vision_pos_embeds, feat_sizes=feat_sizes, point_inputs=None,
                    mask_inputs=None, output_dict=output_dict,
                    num_frames=track.reference.num_frames + frames_in_video, track_in_reverse=False,
                    prev_sam_mask_logits=None)
                _, _, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits = sam_outputs
                self.model._encode_memory_in_output(vision_feats, feat_sizes, None, True, high_res_masks,
                                                    object_score_logits, out)
            pred_masks = self._fill_holes(low_res_masks.float())
            if self._maskmem_pos_enc is None:
                self._maskmem_pos_enc = [pos[:1].clone() for pos in out["maskmem_pos_enc"]]
            track.remember(frame_idx, {
                # stored in bf16 by the official predictor (`_run_single_frame_inference`)
                "maskmem_features": out["maskmem_features"].to(torch.bfloat16),
                "maskmem_pos_enc": self._maskmem_pos_enc, "pred_masks": pred_masks, "obj_ptr": obj_ptr,
                "object_score_logits": object_score_logits})
            ious = ious.float().cpu()
            results.append(TargetScores(ious=ious, iou=ious.max(dim=1).values,
                                        object_score_logit=object_score_logits.float()[:, 0].cpu(),
                                        low_res_masks=pred_masks, sizes=[(frame.height, frame.width)]))
        return results

def _batched_memory(references: list[Reference]) -> dict:
    """The conditioning outputs of a batch of references: views of one reference repeated (no
    copy), or the references' memories stacked along the batch."""
    if len({r.num_frames for r in references}) != 1:
        raise ValueError("references of one batch need the same number of frames")
    batch, first = len(references), references[0]
    repeated = all(r is first for r in references)

    def along_batch(t: int, key: str) -> torch.Tensor:
        tensor = first.cond_outputs[t][key]
        if repeated:
            return tensor.expand(batch, *tensor.shape[1:])
        return torch.cat([r.cond_outputs[t][key] for r in references])

    return {t: {"maskmem_features": along_batch(t, "maskmem_features"),
                # the positional encoding is the same for every memory (one shared copy)
                "maskmem_pos_enc": [p.expand(batch, *p.shape[1:]) for p in out["maskmem_pos_enc"]],
                "obj_ptr": along_batch(t, "obj_ptr")}
            for t, out in first.cond_outputs.items()}
