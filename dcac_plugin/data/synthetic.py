"""Procedural pedestrian images for two synthetic domains, in Market-1501's on-disk layout.

This is the package's embedded demo data: it lets a re-ID pipeline train on domain A and be
tested on domain B with no real dataset. The pictures are drawn, not photographed, but they
keep what re-ID relies on:

* an **identity** is a fixed outfit and body (clothing colours and pattern, hair, skin, build,
  accessory), so identities are learnable, and several of them share attributes, so the task
  is not trivial;
* a **camera** has a fixed viewpoint, background, illumination and framing, so cameras differ
  the way real ones do;
* every **image** jitters position, scale, walking pose, brightness and clothing colour, and is
  sometimes partly occluded, so no two images of one person are identical;
* a **domain** (:class:`DomainStyle`) decides the clothing palette, the kind of background and
  the sensor (saturation, contrast, gamma, blur, noise, JPEG quality): domain A is vivid, plain
  and sharp, domain B is muted, textured, soft and noisy.

Everything is derived from a seed through ``numpy.random.default_rng`` instances keyed by what
is being drawn, so one domain + :class:`SyntheticSpec` always gives byte-identical files.
"""
from __future__ import annotations

import colorsys
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from torchreid import data as reid_data

from ..utils.writable import writing

GENERATOR_VERSION = 1
MARKER_NAME = "SYNTHETIC.json"
IMAGE_HEIGHT, IMAGE_WIDTH = 128, 64  # Market-1501's crop size
# People are drawn at twice the resolution and averaged down, which anti-aliases their edges.
_SUPERSAMPLE = 2
# Backgrounds are rendered this many pixels larger on each side so that every image can crop a
# slightly shifted window of its camera's fixed scene.
_BACKGROUND_PAD = 4
_OCCLUSION_PROBABILITY = 0.12
# Identity keys for distractor people and junk fragments start above Market's largest pid, so
# they never reproduce a train or test identity.
_DISTRACTOR_KEY_BASE = 10_000
_JUNK_KEY_BASE = 20_000
# Independent random streams: each decision draws from a generator keyed by (seed, stream, keys),
# so one image's content does not depend on how many images were drawn before it.
_STREAM_LAYOUT, _STREAM_IDENTITY, _STREAM_CAMERA, _STREAM_IMAGE = range(4)

Colour = tuple[float, float, float]  # RGB in [0, 1]

_HAIR_COLOURS: tuple[Colour, ...] = (
    (0.07, 0.06, 0.05), (0.22, 0.14, 0.08), (0.40, 0.26, 0.14), (0.78, 0.64, 0.38),
    (0.62, 0.62, 0.60), (0.50, 0.20, 0.10),
)
_SKIN_TONES: tuple[Colour, ...] = (
    (0.96, 0.82, 0.70), (0.90, 0.72, 0.58), (0.80, 0.60, 0.45), (0.66, 0.46, 0.32),
    (0.50, 0.34, 0.22), (0.36, 0.24, 0.16),
)
_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "dots")
_PATTERN_WEIGHTS = (0.4, 0.15, 0.15, 0.15, 0.15)
_ACCESSORIES = ("none", "backpack", "bag", "hat")
_ACCESSORY_WEIGHTS = (0.45, 0.25, 0.18, 0.12)
_VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class DomainStyle:
    """Everything that differs between the synthetic domains; the drawing code is shared.

    Clothing colours come from an HSV grid (``palette_*``), which is what makes one domain's
    people vivid and the other's muted. Each camera's scene takes one of ``background_hues``
    (painted walls of any colour indoors, foliage, earth and sky outdoors).
    ``background_texture`` / ``background_grain`` scale
    low-frequency blotches and per-pixel grain of the scenery (0 gives plain indoor walls).
    The last group models the camera sensor and is applied to the finished image.
    """

    name: str
    default_seed: int
    palette_hues: tuple[float, ...]
    palette_saturations: tuple[float, ...]
    palette_values: tuple[float, ...]
    background_hues: tuple[float, ...]
    background_saturation: tuple[float, float]
    background_value: tuple[float, float]
    background_texture: float
    background_grain: float
    saturation_gain: float
    contrast: float
    gamma: float
    blur_radius: float
    noise_std: float
    jpeg_quality: int


DOMAINS: dict[str, DomainStyle] = {
    # Vivid, saturated clothing in plain, brightly lit indoor-ish scenes; sharp and clean.
    "synthetic_a": DomainStyle(
        name="synthetic_a", default_seed=0,
        palette_hues=(0.0, 0.08, 0.15, 0.33, 0.47, 0.55, 0.62, 0.75, 0.83, 0.92),
        palette_saturations=(0.95, 0.75), palette_values=(0.95, 0.65),
        background_hues=(0.0, 0.1, 0.15, 0.3, 0.5, 0.58, 0.7, 0.85),
        background_saturation=(0.04, 0.22), background_value=(0.62, 0.9),
        background_texture=0.008, background_grain=0.004,
        saturation_gain=1.15, contrast=1.1, gamma=1.0, blur_radius=0.0, noise_std=0.0,
        jpeg_quality=95,
    ),
    # Muted, pastel/earthy clothing from other hues, in darker textured outdoor-ish scenes;
    # washed-out tone curve, optical blur, sensor noise and stronger JPEG compression.
    "synthetic_b": DomainStyle(
        name="synthetic_b", default_seed=1,
        palette_hues=(0.04, 0.10, 0.13, 0.25, 0.40, 0.50, 0.58, 0.69, 0.80, 0.95),
        palette_saturations=(0.42, 0.25), palette_values=(0.82, 0.58),
        background_hues=(0.07, 0.11, 0.22, 0.3, 0.38, 0.56, 0.6),
        background_saturation=(0.12, 0.35), background_value=(0.35, 0.62),
        background_texture=0.1, background_grain=0.04,
        saturation_gain=0.8, contrast=0.85, gamma=0.8, blur_radius=0.7, noise_std=0.03,
        jpeg_quality=80,
    ),
}


@dataclass(frozen=True)
class SyntheticSpec:
    """How much data to generate. ``seed=None`` means the domain's own default seed.

    Every train identity is seen by 3 to ``num_cameras`` cameras. Every test identity has
    ``queries_per_test_id`` query images from distinct cameras and ``gallery_per_test_id``
    gallery images, at least one of them from a camera no query used. The gallery also gets
    ``num_distractors`` images with pid 0 and ``num_junk`` images with pid -1, as Market has.
    """

    num_train_ids: int = 64
    images_per_train_id: int = 16
    num_test_ids: int = 50
    queries_per_test_id: int = 2
    gallery_per_test_id: int = 8
    num_distractors: int = 30
    num_junk: int = 6
    num_cameras: int = 6
    seed: int | None = None

    def __post_init__(self) -> None:
        # torchreid's Market1501 loader asserts 1 <= camid <= 6 and 0 <= pid <= 1501.
        if not 2 <= self.num_cameras <= 6:
            raise ValueError(f"num_cameras must be in 2..6, got {self.num_cameras}")
        if not 1 <= self.queries_per_test_id < self.num_cameras:
            raise ValueError("queries_per_test_id must be in 1..num_cameras-1 so that every query "
                             "has a gallery match from another camera")
        for name in ("num_train_ids", "images_per_train_id", "num_test_ids", "gallery_per_test_id"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.num_distractors < 0 or self.num_junk < 0:
            raise ValueError("num_distractors and num_junk must not be negative")
        if self.num_train_ids + self.num_test_ids > 1501:
            raise ValueError("Market-1501 pids stop at 1501: use at most 1501 identities in total")

    def resolved(self, style: DomainStyle) -> SyntheticSpec:
        """This spec with ``seed`` filled in from the domain when it was left as None."""
        return self if self.seed is not None else replace(self, seed=style.default_seed)


# --------------------------------------------------------------------------- randomness, colour


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def _hsv(h: float, s: float, v: float) -> Colour:
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def _clothing_palette(style: DomainStyle, value_scale: float = 1.0) -> list[Colour]:
    """The domain's clothing colours, plus dark, mid and light neutrals that every domain wears.

    A discrete palette keeps colours far enough apart to tell identities apart, and makes
    several identities share a colour, as real crowds do.
    """
    colours = [_hsv(h, s, v * value_scale) for h in style.palette_hues
               for s in style.palette_saturations for v in style.palette_values]
    neutrals = [_hsv(0.0, 0.0, v * value_scale) for v in (0.12, 0.5, 0.92)]
    return colours + neutrals


def _jitter(colour: Colour, rng: np.random.Generator, std: float) -> Colour:
    return tuple(np.clip(np.asarray(colour) + rng.normal(0.0, std, 3), 0.0, 1.0).tolist())


def _rgba(colour: Colour, shade: float = 1.0) -> tuple[int, int, int, int]:
    r, g, b = (int(round(255 * min(1.0, c * shade))) for c in colour)
    return r, g, b, 255


# --------------------------------------------------------------------------- identities, cameras


@dataclass(frozen=True)
class _Identity:
    """A person's fixed appearance."""

    shirt: Colour
    shirt_second: Colour
    pattern: str
    pattern_period: float  # fraction of body height
    long_sleeves: bool
    trousers: Colour
    shorts: bool
    shoes: Colour
    hair: Colour
    long_hair: bool
    skin: Colour
    height_scale: float
    width_scale: float
    accessory: str
    accessory_colour: Colour


def _sample_identity(style: DomainStyle, seed: int, key: int) -> _Identity:
    """Draw identity ``key``'s outfit and build from the domain's palettes."""
    rng = _rng(seed, _STREAM_IDENTITY, key)
    tops = _clothing_palette(style)
    # Trousers are darker versions of the palette, which also keeps tops and bottoms apart.
    bottoms = _clothing_palette(style, value_scale=0.6)
    shirt_index = int(rng.integers(len(tops)))
    second_index = int((shirt_index + rng.integers(1, len(tops))) % len(tops))
    return _Identity(
        shirt=tops[shirt_index],
        shirt_second=tops[second_index],
        pattern=str(rng.choice(_PATTERNS, p=_PATTERN_WEIGHTS)),
        pattern_period=float(rng.uniform(0.04, 0.07)),
        long_sleeves=bool(rng.random() < 0.5),
        trousers=bottoms[int(rng.integers(len(bottoms)))],
        shorts=bool(rng.random() < 0.2),
        shoes=tops[int(rng.integers(len(tops)))] if rng.random() < 0.3 else
        _hsv(0.0, 0.0, float(rng.choice((0.1, 0.35, 0.9)))),
        hair=_HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))],
        long_hair=bool(rng.random() < 0.35),
        skin=_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))],
        height_scale=float(rng.uniform(0.9, 1.06)),
        width_scale=float(rng.uniform(0.85, 1.2)),
        accessory=str(rng.choice(_ACCESSORIES, p=_ACCESSORY_WEIGHTS)),
        accessory_colour=tops[int(rng.integers(len(tops)))],
    )


@dataclass(frozen=True, eq=False)
class _Camera:
    """A camera's fixed viewpoint, illumination, framing and scene."""

    view: str  # 'front' | 'back' | 'side'
    mirrored: bool  # side views face left instead of right
    gain: float
    cast: Colour  # per-channel multipliers
    person_height: float  # fraction of the frame height
    centre_x: float  # fraction of the frame width
    background: np.ndarray  # float RGB, padded by _BACKGROUND_PAD on every side


def _sample_cameras(style: DomainStyle, seed: int, num_cameras: int) -> list[_Camera]:
    """The domain's cameras; viewpoints cycle through front/back/side so every domain mixes them."""
    order = _rng(seed, _STREAM_CAMERA, 0).permutation(len(_VIEWS))
    return [_sample_camera(style, _rng(seed, _STREAM_CAMERA, cam), _VIEWS[order[(cam - 1) % len(_VIEWS)]])
            for cam in range(1, num_cameras + 1)]


def _sample_camera(style: DomainStyle, rng: np.random.Generator, view: str) -> _Camera:
    cast = 1.0 + rng.uniform(-0.09, 0.09, 3)
    return _Camera(
        view=view,
        mirrored=view == "side" and bool(rng.random() < 0.5),
        gain=float(rng.uniform(0.8, 1.15)),
        cast=tuple((cast / cast.mean()).tolist()),  # a colour cast, not a brightness change
        person_height=float(rng.uniform(0.8, 0.9)),
        centre_x=float(rng.uniform(0.45, 0.55)),
        background=_render_background(style, rng),
    )


# --------------------------------------------------------------------------- drawing


def _render_background(style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """A camera's scene: a wall with a light gradient, a floor, and a few vertical bars
    (pillars and door frames indoors, trees and poles outdoors), textured by the domain."""
    height, width = IMAGE_HEIGHT + 2 * _BACKGROUND_PAD, IMAGE_WIDTH + 2 * _BACKGROUND_PAD
    hue = float(rng.choice(style.background_hues)) + rng.uniform(-0.03, 0.03)
    wall = np.asarray(_hsv(hue, rng.uniform(*style.background_saturation),
                           rng.uniform(*style.background_value)))
    floor = np.asarray(_hsv(hue + rng.uniform(-0.15, 0.15), rng.uniform(*style.background_saturation),
                            rng.uniform(0.45, 0.8) * style.background_value[1]))
    floor_y = int(height * rng.uniform(0.68, 0.85))
    rows = np.arange(height, dtype=np.float32)[:, None, None] / height
    image = np.where(rows < floor_y / height, wall, floor) * np.ones((height, width, 3))
    # Light from above (or below): a vertical brightness ramp of camera-specific strength.
    image *= 1.0 + rng.uniform(-0.25, 0.25) * (0.5 - rows)
    image[floor_y:floor_y + 2] *= 0.55  # skirting / kerb line where the floor starts
    for line_y in floor_y + np.cumsum(np.linspace(3, 10, 5)).astype(int):  # tiles / paving seams
        image[line_y:line_y + 1] *= 0.85
    for _ in range(int(rng.integers(0, 4))):
        x0 = int(rng.integers(0, width - 4))
        bar_width = int(rng.integers(3, 12))
        shade = rng.uniform(0.55, 1.3)
        image[:floor_y, x0:x0 + bar_width] = wall * shade * rng.uniform(0.9, 1.1, 3)
    image = image + _texture(rng, (height, width), style)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _texture(rng: np.random.Generator, size: tuple[int, int], style: DomainStyle) -> np.ndarray:
    """Low-frequency blotches (foliage, stains, dappled light) plus per-pixel grain (brick, asphalt)."""
    coarse = Image.fromarray(rng.normal(0.0, 1.0, (16, 8)).astype(np.float32), mode="F")
    blotches = np.asarray(coarse.resize((size[1], size[0]), Image.Resampling.BICUBIC))
    grain = rng.normal(0.0, 1.0, size)
    return (style.background_texture * blotches + style.background_grain * grain)[..., None]


@dataclass(frozen=True)
class _Body:
    """Maps body coordinates to canvas pixels: y in fractions of body height from the top of the
    head, x in fractions of body height (times the build's width) from the body's centre line."""

    centre_x: float
    top: float
    height: float
    width_scale: float

    def at(self, x: float, y: float) -> tuple[float, float]:
        return self.centre_x + x * self.height * self.width_scale, self.top + y * self.height

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [*self.at(x0, y0), *self.at(x1, y1)]

    def size(self, fraction: float) -> float:
        return fraction * self.height * self.width_scale


def _limb(draw: ImageDraw.ImageDraw, body: _Body, start: tuple[float, float], end: tuple[float, float],
          widths: tuple[float, float], fill: tuple[int, int, int, int]) -> None:
    """A tapered segment between two body points, with a rounded joint at its end."""
    (x0, y0), (x1, y1) = body.at(*start), body.at(*end)
    length = max(np.hypot(x1 - x0, y1 - y0), 1e-6)
    nx, ny = (y1 - y0) / length, -(x1 - x0) / length  # unit normal
    w0, w1 = body.size(widths[0]) / 2, body.size(widths[1]) / 2
    draw.polygon([(x0 + nx * w0, y0 + ny * w0), (x1 + nx * w1, y1 + ny * w1),
                  (x1 - nx * w1, y1 - ny * w1), (x0 - nx * w0, y0 - ny * w0)], fill=fill)
    draw.ellipse([x1 - w1, y1 - w1, x1 + w1, y1 + w1], fill=fill)


@dataclass(frozen=True)
class _Outfit:
    """One image's clothing colours: the identity's, slightly jittered, as PIL fills."""

    shirt: tuple[int, int, int, int]
    shirt_second: tuple[int, int, int, int]
    trousers: tuple[int, int, int, int]
    shoes: tuple[int, int, int, int]
    hair: tuple[int, int, int, int]
    skin: tuple[int, int, int, int]
    accessory: tuple[int, int, int, int]


def _outfit(identity: _Identity, rng: np.random.Generator, shade: float = 1.0) -> _Outfit:
    """Per-image colour jitter (dye, wear, local light); ``shade`` darkens limbs on the far side."""
    return _Outfit(*(_rgba(_jitter(colour, rng, std), shade) for colour, std in (
        (identity.shirt, 0.025), (identity.shirt_second, 0.025), (identity.trousers, 0.025),
        (identity.shoes, 0.02), (identity.hair, 0.01), (identity.skin, 0.01),
        (identity.accessory_colour, 0.025))))


def _draw_leg(draw: ImageDraw.ImageDraw, body: _Body, identity: _Identity, outfit: _Outfit,
              hip: tuple[float, float], knee: tuple[float, float], ankle: tuple[float, float],
              side_view: bool) -> None:
    if identity.shorts:
        # Shorts end two thirds down the thigh; the rest of the leg is bare.
        hem = (hip[0] + (knee[0] - hip[0]) * 0.67, hip[1] + (knee[1] - hip[1]) * 0.67)
        _limb(draw, body, hip, hem, (0.105, 0.09), outfit.trousers)
        _limb(draw, body, hem, knee, (0.07, 0.065), outfit.skin)
        _limb(draw, body, knee, ankle, (0.065, 0.05), outfit.skin)
    else:
        _limb(draw, body, hip, knee, (0.1, 0.075), outfit.trousers)
        _limb(draw, body, knee, ankle, (0.075, 0.06), outfit.trousers)
    toe = 0.035 if side_view else 0.0  # feet point the way the person walks
    draw.ellipse(body.box(ankle[0] - 0.045 + toe, ankle[1] - 0.01, ankle[0] + 0.045 + toe * 1.6,
                          ankle[1] + 0.04), fill=outfit.shoes)


def _legs(phase: float, view: str) -> list[tuple[tuple[float, float], ...]]:
    """(hip, knee, ankle) of the far and near leg at walking ``phase`` in [0, 1)."""
    swing = float(np.sin(2 * np.pi * phase))
    if view == "side":
        # Seen from the side the legs scissor: one foot forward, one back, knees bent forward.
        return [((0.0, 0.5), (0.07 * s + 0.02, 0.72), (0.14 * s, 0.955)) for s in (-swing, swing)]
    # Seen from the front or back the swinging foot rises and its leg looks shorter.
    legs = []
    for side in (-1, 1):
        lift = max(0.0, swing * side) * 0.03
        legs.append(((0.055 * side, 0.5), (0.05 * side, 0.73 - lift / 2),
                     ((0.05 + 0.012 * abs(swing)) * side, 0.955 - lift)))
    return legs


def _arm(draw: ImageDraw.ImageDraw, body: _Body, identity: _Identity, outfit: _Outfit,
         shoulder: tuple[float, float], elbow: tuple[float, float], wrist: tuple[float, float]) -> None:
    _limb(draw, body, shoulder, elbow, (0.065, 0.055), outfit.shirt)
    _limb(draw, body, elbow, wrist, (0.055, 0.045), outfit.shirt if identity.long_sleeves else outfit.skin)
    radius = 0.025
    draw.ellipse(body.box(wrist[0] - radius, wrist[1] - 0.005, wrist[0] + radius, wrist[1] + 0.045),
                 fill=outfit.skin)


def _torso_outline(view: str) -> list[tuple[float, float]]:
    """The shirt's outline; from the side the torso shows its depth, which is narrower."""
    if view == "side":
        return [(-0.03, 0.155), (-0.07, 0.18), (-0.078, 0.35), (-0.075, 0.53), (0.07, 0.53),
                (0.082, 0.28), (0.055, 0.175), (0.03, 0.155)]
    right = [(0.04, 0.155), (0.105, 0.165), (0.135, 0.205), (0.125, 0.3), (0.11, 0.44), (0.12, 0.53)]
    return [(-x, y) for x, y in right] + [(x, y) for x, y in reversed(right)]


def _draw_torso(layer: Image.Image, body: _Body, identity: _Identity, outfit: _Outfit, view: str) -> None:
    """The shirt, with its pattern in the second colour clipped to the shirt's outline."""
    outline = [body.at(x, y) for x, y in _torso_outline(view)]
    ImageDraw.Draw(layer).polygon(outline, fill=outfit.shirt)
    if identity.pattern == "solid":
        return
    region = Image.new("L", layer.size, 0)
    ImageDraw.Draw(region).polygon(outline, fill=255)
    pattern = Image.new("L", layer.size, 0)
    _draw_pattern(ImageDraw.Draw(pattern), identity.pattern, identity.pattern_period * body.height,
                  layer.size, body.top)
    layer.paste(outfit.shirt_second, (0, 0, *layer.size), ImageChops.multiply(region, pattern))


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: str, period: float, size: tuple[int, int],
                  origin_y: float) -> None:
    """A repeating pattern mask over the whole canvas; stripes are anchored at the head so they
    sit at the same place on the body in every image."""
    width, height = size
    half = period / 2
    rows = np.arange(origin_y % period - period, height, period)
    columns = np.arange(0.0, width, period)
    if pattern == "hstripes":
        for y in rows:
            draw.rectangle([0, y, width, y + half], fill=255)
    elif pattern == "vstripes":
        for x in columns:
            draw.rectangle([x, 0, x + half, height], fill=255)
    elif pattern == "checks":
        for i, y in enumerate(rows):
            for x in columns[i % 2::2]:
                draw.rectangle([x, y, x + period, y + period], fill=255)
    elif pattern == "dots":
        radius = period * 0.22
        for i, y in enumerate(rows):
            for x in columns + (half if i % 2 else 0.0):
                draw.ellipse([x - radius, y + half - radius, x + radius, y + half + radius], fill=255)


def _draw_head(draw: ImageDraw.ImageDraw, body: _Body, identity: _Identity, outfit: _Outfit, view: str) -> None:
    """Neck, head and hair; from behind the hair hides the face, from the side it covers the back."""
    _limb(draw, body, (0.0, 0.11), (0.0, 0.165), (0.045, 0.045), outfit.skin)
    if view == "front":
        if identity.long_hair:  # strands falling on both shoulders, framing the face
            for x0, x1 in ((-0.06, -0.03), (0.03, 0.06)):
                draw.rectangle(body.box(x0, 0.05, x1, 0.22), fill=outfit.hair)
        draw.ellipse(body.box(-0.05, 0.005, 0.05, 0.135), fill=outfit.skin)
        draw.chord(body.box(-0.055, -0.005, 0.055, 0.11), 180, 360, fill=outfit.hair)
    elif view == "back":
        draw.ellipse(body.box(-0.053, 0.0, 0.053, 0.135), fill=outfit.hair)
        if identity.long_hair:
            draw.rectangle(body.box(-0.055, 0.06, 0.055, 0.25), fill=outfit.hair)
    else:
        if identity.long_hair:
            draw.rectangle(body.box(-0.06, 0.05, -0.01, 0.24), fill=outfit.hair)
        draw.ellipse(body.box(-0.055, -0.005, 0.045, 0.13), fill=outfit.hair)
        draw.ellipse(body.box(-0.008, 0.035, 0.054, 0.135), fill=outfit.skin)
    if identity.accessory == "hat":
        draw.chord(body.box(-0.057, -0.02, 0.057, 0.1), 180, 360, fill=outfit.accessory)
        brim = (-0.045, 0.1) if view == "side" else (-0.075, 0.075)
        draw.rectangle(body.box(brim[0], 0.035, brim[1], 0.05), fill=outfit.accessory)


def _draw_backpack(draw: ImageDraw.ImageDraw, body: _Body, outfit: _Outfit, view: str) -> None:
    """From behind the whole pack shows, from the side it sticks out behind, from the front only
    the straps do."""
    if view == "back":
        draw.rounded_rectangle(body.box(-0.095, 0.19, 0.095, 0.45), radius=body.size(0.02), fill=outfit.accessory)
        draw.rectangle(body.box(-0.065, 0.34, 0.065, 0.43), fill=_darker(outfit.accessory))
    elif view == "side":
        draw.rounded_rectangle(body.box(-0.155, 0.19, -0.06, 0.45), radius=body.size(0.02), fill=outfit.accessory)
        _limb(draw, body, (-0.02, 0.17), (0.0, 0.42), (0.022, 0.022), outfit.accessory)
    else:
        for side in (-1, 1):
            _limb(draw, body, (0.075 * side, 0.165), (0.085 * side, 0.4), (0.025, 0.025), outfit.accessory)


def _draw_bag(draw: ImageDraw.ImageDraw, body: _Body, outfit: _Outfit, view: str) -> None:
    """A shoulder bag at the hip with its strap across the body (mirrored when seen from behind)."""
    if view == "side":
        _limb(draw, body, (0.0, 0.17), (0.0, 0.44), (0.015, 0.015), outfit.accessory)
        draw.rectangle(body.box(-0.05, 0.44, 0.07, 0.56), fill=outfit.accessory)
        return
    side = 1 if view == "front" else -1
    _limb(draw, body, (-0.09 * side, 0.17), (0.13 * side, 0.46), (0.015, 0.015), outfit.accessory)
    x0, x1 = sorted((0.11 * side, 0.21 * side))
    draw.rectangle(body.box(x0, 0.44, x1, 0.57), fill=outfit.accessory)


def _darker(fill: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return tuple(int(c * 0.7) for c in fill[:3]) + (255,)


def _draw_person(identity: _Identity, camera: _Camera, rng: np.random.Generator) -> Image.Image:
    """The person alone on a transparent layer at the final size, drawn in the painter's order
    of the camera's viewpoint, with per-image position, scale, pose and colour jitter."""
    width, height = IMAGE_WIDTH * _SUPERSAMPLE, IMAGE_HEIGHT * _SUPERSAMPLE
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    body_height = height * camera.person_height * identity.height_scale * rng.uniform(0.96, 1.04)
    feet = height * rng.uniform(0.955, 0.98)
    body = _Body(centre_x=width * camera.centre_x + rng.uniform(-3, 3) * _SUPERSAMPLE,
                 top=max(feet - body_height, 1.0), height=min(body_height, feet - 1.0),
                 width_scale=identity.width_scale)
    outfit = _outfit(identity, rng)
    view = camera.view
    phase = rng.random()
    far_leg, near_leg = _legs(phase, view)
    if view == "side":
        # The far limbs are partly in shadow; the near arm swings against the near leg.
        far = _outfit(identity, rng, shade=0.78)
        swing = float(np.sin(2 * np.pi * phase))
        _draw_leg(draw, body, identity, far, *far_leg, side_view=True)
        _arm(draw, body, identity, far, (0.0, 0.2), (0.05 * swing, 0.35), (0.11 * swing, 0.48))
        if identity.accessory == "backpack":
            _draw_backpack(draw, body, outfit, view)
        _draw_leg(draw, body, identity, outfit, *near_leg, side_view=True)
        _draw_torso(layer, body, identity, outfit, view)
        if identity.accessory == "bag":
            _draw_bag(draw, body, outfit, view)
        _arm(draw, body, identity, outfit, (0.0, 0.2), (-0.05 * swing, 0.35), (-0.11 * swing, 0.48))
    else:
        for leg in (far_leg, near_leg):
            _draw_leg(draw, body, identity, outfit, *leg, side_view=False)
        _draw_torso(layer, body, identity, outfit, view)
        for side in (-1, 1):
            _arm(draw, body, identity, outfit, (0.125 * side, 0.2), (0.15 * side, 0.35), (0.15 * side, 0.49))
    _draw_head(draw, body, identity, outfit, view)
    if view != "side" and identity.accessory == "backpack":
        _draw_backpack(draw, body, outfit, view)
    if view != "side" and identity.accessory == "bag":
        _draw_bag(draw, body, outfit, view)
    if camera.mirrored:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # RGBA resizing works on premultiplied alpha, so edges blend without dark fringes.
    return layer.resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.Resampling.BOX)


def _occlude(image: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> None:
    """Cover part of the frame with a box (a passer-by, a bin, a car) from the side or bottom."""
    height, width, _ = image.shape
    palette = _clothing_palette(style, value_scale=0.8)
    colour = np.asarray(palette[int(rng.integers(len(palette)))])
    shade = np.linspace(1.1, 0.8, height)[:, None, None]
    if rng.random() < 0.5:
        box_width = int(width * rng.uniform(0.25, 0.4))
        y0, y1 = sorted(int(v) for v in rng.uniform(0, height, 2))
        y1 = max(y1, y0 + height // 3)
        x0 = 0 if rng.random() < 0.5 else width - box_width
        image[y0:y1, x0:x0 + box_width] = (colour * shade)[y0:y1]
    else:
        y0 = int(height * rng.uniform(0.65, 0.8))
        image[y0:] = (colour * shade)[y0:]


# --------------------------------------------------------------------------- photometry


def _apply_illumination(image: np.ndarray, camera: _Camera, rng: np.random.Generator) -> np.ndarray:
    """The camera's gain and colour cast, times a per-image brightness fluctuation."""
    return image * (camera.gain * float(rng.normal(1.0, 0.06))) * np.asarray(camera.cast, dtype=np.float32)


def _apply_domain_style(image: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> Image.Image:
    """The domain's sensor: optical blur, then sensor noise, then its colour response
    (saturation, contrast, gamma), in the order light goes through a camera."""
    image = np.clip(image, 0.0, 1.0)
    if style.blur_radius > 0:
        blurred = Image.fromarray(np.round(image * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(style.blur_radius))
        image = np.asarray(blurred, dtype=np.float32) / 255
    if style.noise_std > 0:
        image = image + rng.normal(0.0, style.noise_std, image.shape)
    luminance = image @ np.asarray([0.299, 0.587, 0.114])
    image = luminance[..., None] + (image - luminance[..., None]) * style.saturation_gain
    image = 0.5 + (image - 0.5) * style.contrast
    image = np.clip(image, 0.0, 1.0) ** style.gamma
    return Image.fromarray(np.round(image * 255).astype(np.uint8))


# --------------------------------------------------------------------------- images, layout


@dataclass(frozen=True)
class _Shot:
    """One image to write."""

    folder: str  # 'bounding_box_train' | 'bounding_box_test' | 'query'
    pid: int  # Market pid: > 0 a person, 0 a distractor, -1 junk
    cam: int  # 1-based camera number
    frame: int
    content: str  # 'person' | 'background' | 'fragment'
    identity_key: int  # which identity is drawn (unused for backgrounds)

    @property
    def filename(self) -> str:
        # Market writes junk as "-1_c..." (not "-001_c..."); torchreid's regex reads both.
        pid = f"{self.pid:04d}" if self.pid >= 0 else str(self.pid)
        return f"{pid}_c{self.cam}s1_{self.frame:06d}_00.jpg"


def _render_shot(shot: _Shot, style: DomainStyle, seed: int, camera: _Camera,
                 identity: _Identity | None) -> Image.Image:
    """One finished image: the camera's scene, the person (if any), occlusion or a junk crop,
    then the camera's illumination and the domain's sensor."""
    rng = _rng(seed, _STREAM_IMAGE, shot.pid + 1, shot.cam, shot.frame)
    pad = _BACKGROUND_PAD
    dx, dy = (int(v) for v in rng.integers(-pad, pad + 1, 2))
    scene = camera.background[pad + dy:pad + dy + IMAGE_HEIGHT, pad + dx:pad + dx + IMAGE_WIDTH].copy()
    if identity is not None:
        person = np.asarray(_draw_person(identity, camera, rng), dtype=np.float32) / 255
        alpha = person[..., 3:]
        scene = scene * (1 - alpha) + person[..., :3] * alpha
    if shot.content == "fragment":
        scene = _bad_detection(scene, rng)
    elif rng.random() < _OCCLUSION_PROBABILITY:
        _occlude(scene, style, rng)
    return _apply_domain_style(_apply_illumination(scene, camera, rng), style, rng)


def _bad_detection(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A junk crop: a random part of the frame (head, legs, half a body) stretched to full size."""
    crop_height = int(IMAGE_HEIGHT * rng.uniform(0.25, 0.5))
    crop_width = int(IMAGE_WIDTH * rng.uniform(0.5, 0.9))
    y0 = int(rng.integers(0, IMAGE_HEIGHT - crop_height + 1))
    x0 = int(rng.integers(0, IMAGE_WIDTH - crop_width + 1))
    crop = Image.fromarray(np.round(scene[y0:y0 + crop_height, x0:x0 + crop_width] * 255).astype(np.uint8))
    return np.asarray(crop.resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.Resampling.BILINEAR), dtype=np.float32) / 255


def _train_cameras(rng: np.random.Generator, spec: SyntheticSpec) -> list[int]:
    """One camera per image of a train id; the id is seen by 3..num_cameras cameras."""
    cameras = np.arange(1, spec.num_cameras + 1)
    seen_by = min(int(rng.integers(min(3, spec.num_cameras), spec.num_cameras + 1)), spec.images_per_train_id)
    chosen = rng.choice(cameras, size=seen_by, replace=False)
    extra = rng.choice(chosen, size=spec.images_per_train_id - seen_by)
    return sorted(int(c) for c in [*chosen, *extra])


def _test_cameras(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[list[int], list[int]]:
    """Query cameras (distinct) and gallery cameras of a test id. The first gallery image comes
    from a camera no query used, so every query keeps a match after Market's protocol drops
    same-camera gallery images."""
    queries = spec.queries_per_test_id
    seen_by = int(rng.integers(max(queries + 1, min(3, spec.num_cameras)), spec.num_cameras + 1))
    chosen = [int(c) for c in rng.permutation(np.arange(1, spec.num_cameras + 1))[:seen_by]]
    gallery = [chosen[queries]] + [int(c) for c in rng.choice(chosen, size=spec.gallery_per_test_id - 1)]
    return chosen[:queries], gallery


def _plan_shots(spec: SyntheticSpec) -> list[_Shot]:
    """Every image of the dataset: split, pid, camera, frame number and content."""
    rng = _rng(spec.seed, _STREAM_LAYOUT)
    # Train and test pids interleave over 1..N as in Market; torchreid relabels train pids anyway.
    pids = [int(p) for p in rng.permutation(np.arange(1, spec.num_train_ids + spec.num_test_ids + 1))]
    train_pids, test_pids = sorted(pids[:spec.num_train_ids]), sorted(pids[spec.num_train_ids:])
    last_frame: dict[tuple[int, int], int] = {}

    def shot(folder: str, pid: int, cam: int, content: str, key: int) -> _Shot:
        # Frame numbers grow per (pid, camera), which keeps every file name unique.
        frame = last_frame.get((pid, cam), 0) + int(rng.integers(5, 60))
        last_frame[(pid, cam)] = frame
        return _Shot(folder, pid, cam, frame, content, key)

    shots = [shot("bounding_box_train", pid, cam, "person", pid)
             for pid in train_pids for cam in _train_cameras(rng, spec)]
    for pid in test_pids:
        query_cams, gallery_cams = _test_cameras(rng, spec)
        shots += [shot("query", pid, cam, "person", pid) for cam in query_cams]
        shots += [shot("bounding_box_test", pid, cam, "person", pid) for cam in gallery_cams]
    for i in range(spec.num_distractors):
        # Half empty scenes, half people who are in no split.
        content = "background" if i % 2 == 0 else "person"
        shots.append(shot("bounding_box_test", 0, int(rng.integers(1, spec.num_cameras + 1)), content,
                          _DISTRACTOR_KEY_BASE + i))
    shots += [shot("bounding_box_test", -1, int(rng.integers(1, spec.num_cameras + 1)), "fragment",
                   _JUNK_KEY_BASE + i) for i in range(spec.num_junk)]
    return shots


def _marker(domain: str, spec: SyntheticSpec) -> dict:
    """What SYNTHETIC.json holds; a dataset is reused only if its marker equals this exactly.
    The style is included so that retuning a domain regenerates its data."""
    style = DOMAINS[domain]
    return json.loads(json.dumps({
        "generator": __name__, "generator_version": GENERATOR_VERSION, "domain": domain,
        "spec": asdict(spec.resolved(style)), "style": asdict(style),
    }))


def _style_for(domain: str) -> DomainStyle:
    try:
        return DOMAINS[domain]
    except KeyError:
        raise KeyError(f"unknown synthetic domain {domain!r}; valid names: {sorted(DOMAINS)}") from None


def _replaceable(path: Path) -> bool:
    """Only ever replace a folder that looks like ours, never someone's real dataset."""
    entries = {p.name for p in path.iterdir()}
    return MARKER_NAME in entries or entries <= {"bounding_box_train", "bounding_box_test", "query"}


def write_market_layout(dataset_dir: str | Path, domain: str, spec: SyntheticSpec | None = None) -> Path:
    """Generate ``domain``'s images into ``dataset_dir`` in Market-1501's layout and return it.

    Writes ``bounding_box_train/``, ``bounding_box_test/`` and ``query/`` with Market file names
    (``{pid:04d}_c{cam}s1_{frame:06d}_00.jpg``, junk as ``-1_c...``) plus a ``SYNTHETIC.json``
    marker. Everything is written into a temporary sibling folder that is renamed into place
    only when complete, so a crash never leaves a half-written dataset under ``dataset_dir``.
    An existing ``dataset_dir`` is replaced only if it holds a marker or nothing but the three
    Market folders; anything else raises ``FileExistsError``.
    """
    style = _style_for(domain)
    spec = (spec or SyntheticSpec()).resolved(style)
    dataset_dir = Path(dataset_dir).expanduser().absolute()
    if dataset_dir.exists() and not _replaceable(dataset_dir):
        raise FileExistsError(f"{dataset_dir} exists and is not a synthetic dataset; not replacing it")
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    shots = _plan_shots(spec)
    print(f"Generating synthetic re-ID domain {domain!r}: {len(shots)} images -> {dataset_dir} ...",
          end="", flush=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}.tmp-", dir=dataset_dir.parent))
    try:
        _write_shots(staging, shots, style, spec)
        (staging / MARKER_NAME).write_text(json.dumps(_marker(domain, spec), indent=2, sort_keys=True) + "\n")
        _swap_into_place(staging, dataset_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f" done in {time.perf_counter() - started:.1f}s", flush=True)
    return dataset_dir


def _write_shots(out_dir: Path, shots: list[_Shot], style: DomainStyle, spec: SyntheticSpec) -> None:
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (out_dir / folder).mkdir()
    cameras = _sample_cameras(style, spec.seed, spec.num_cameras)
    identities: dict[int, _Identity] = {}
    for shot in shots:
        identity = None
        if shot.content != "background":
            if shot.identity_key not in identities:
                identities[shot.identity_key] = _sample_identity(style, spec.seed, shot.identity_key)
            identity = identities[shot.identity_key]
        image = _render_shot(shot, style, spec.seed, cameras[shot.cam - 1], identity)
        image.save(out_dir / shot.folder / shot.filename, format="JPEG", quality=style.jpeg_quality)


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename the finished folder onto ``target``; an old version is moved aside first and
    deleted only afterwards, so ``target`` is never half-deleted."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _has_every_split(dataset_dir: Path) -> bool:
    """Each image folder still holds images (one emptied by hand is generated again, rather than
    failing inside torchreid, which indexes the first image of each split)."""
    return all(any((dataset_dir / folder).glob("*.jpg")) for folder in ("bounding_box_train", "bounding_box_test",
                                                                           "query"))


def ensure_synthetic_dataset(root: str | Path, name: str, spec: SyntheticSpec | None = None) -> Path:
    """Return ``<root>/<name>``, generating it first unless a complete dataset for exactly this
    domain, spec and generator version is already there.

    ``name`` is a key of :data:`DOMAINS`; any other name raises ``KeyError`` listing them. A
    root that cannot be written raises :class:`~dcac_config.errors.UsageError` naming ``--root``.
    """
    style = _style_for(name)
    spec = (spec or SyntheticSpec()).resolved(style)
    dataset_dir = Path(root).expanduser().absolute() / name
    marker = dataset_dir / MARKER_NAME
    try:
        if json.loads(marker.read_text()) == _marker(name, spec) and _has_every_split(dataset_dir):
            return dataset_dir
    except (OSError, ValueError):
        pass  # no marker or an unreadable one: generate
    with writing(f"synthetic dataset {name!r}", str(dataset_dir),
                 "It is generated in the data root: pass --root /a/writable/folder (data.root in a config)."):
        return write_market_layout(dataset_dir, name, spec)


# --------------------------------------------------------------------------- torchreid datasets


class SyntheticMarket1501(reid_data.datasets.image.Market1501):
    """torchreid's Market1501 reader over a synthetic domain, generated on first use.

    Subclasses set ``dataset_dir`` to a key of :data:`DOMAINS`.
    """

    dataset_dir = ""
    dataset_url = None

    def __init__(self, root: str = "", **kwargs) -> None:
        ensure_synthetic_dataset(root, self.dataset_dir)
        # Our folders sit directly under the dataset dir, which Market1501 calls deprecated.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The current data structure is deprecated")
            super().__init__(root=root, **kwargs)

    def process_dir(self, dir_path: str, relabel: bool = False) -> list:
        # Market1501 keeps glob's order, which depends on the file system; the sampler's
        # batches follow that order, so sorting makes a seeded demo run reproducible.
        return sorted(super().process_dir(dir_path, relabel=relabel))


class SyntheticA(SyntheticMarket1501):
    """Synthetic domain A: vivid clothing, plain indoor scenes, sharp images."""

    dataset_dir = "synthetic_a"


class SyntheticB(SyntheticMarket1501):
    """Synthetic domain B: muted clothing, textured outdoor scenes, soft and noisy images."""

    dataset_dir = "synthetic_b"


SYNTHETIC_DATASETS: dict[str, type[SyntheticMarket1501]] = {"synthetic_a": SyntheticA, "synthetic_b": SyntheticB}

__all__ = [
    "DOMAINS", "DomainStyle", "GENERATOR_VERSION", "MARKER_NAME", "SYNTHETIC_DATASETS", "SyntheticA",
    "SyntheticB", "SyntheticMarket1501", "SyntheticSpec", "ensure_synthetic_dataset", "write_market_layout",
]
