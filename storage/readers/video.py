"""Video reader (optional extra ``video``: PyAV): frames decoded lazily, block by block.

Opening a video makes one demux pass over its packets (no decoding) to learn every
frame's presentation timestamp (pts) and where the keyframes are. Each dask block then
decodes forward only as far as its last frame, with a decoder that is already there when
blocks are read in order: open decoders are kept per process (see :class:`_Decoder`), each
positioned after the last frame it gave, and a block continues the one that gets to its
first frame soonest, waiting for a busy one if that is sooner than seeking. Only a block
asked for earlier than every decoder (or beyond the next keyframe) opens a new one at the
keyframe at or before its first frame, so reading a video in order costs one sequential
decode, and any block at most O(GOP + block), never O(video). A chain of empty "tickets"
makes dask run a whole-video job's blocks in frame order (see :func:`open_video`). PyAV
is imported only here, and only when a video is opened.
"""

from __future__ import annotations

import bisect
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, cast

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ..errors import CubepipeWarning, FormatError, MissingDependencyError
from ..layout import MAX_CHUNK_BYTES, default_chunks
from .base import ReaderSpec, register

if TYPE_CHECKING:  # PyAV is optional and imported only when a video is opened
    from av.container import InputContainer
    from av.video.format import VideoFormat
    from av.video.frame import VideoFrame

__all__ = ["FRAMES_PER_BLOCK", "MAX_IDLE_DECODERS", "close_decoders", "open_video"]

#: Frames decoded per dask block unless ``chunks["frame"]`` says otherwise.
FRAMES_PER_BLOCK = 8
#: In the per-frame seek plan: "no keyframe at or before this frame, decode from the start".
_FROM_START = np.iinfo(np.int64).min
#: Idle decoders kept open per process (all videos together); the least recently used is
#: closed first.
MAX_IDLE_DECODERS = 8
#: ISO base-media brands that are still images, not videos (HEIF, AVIF).
_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def _import_av() -> ModuleType:
    try:
        import av  # noqa: PLC0415
    except ImportError:
        raise MissingDependencyError("video ingest", "av", "video") from None
    return av


@dataclass(frozen=True)
class _Pixels:
    """How decoded frames become arrays: PyAV format, band names, dtype, bit depth."""

    fmt: str
    bands: tuple[str, ...]
    dtype: str
    bits: int

    @classmethod
    def of(cls, fmt: VideoFormat | None) -> _Pixels:
        """For a stream's pixel format (``None`` = unknown: 8-bit colour is assumed)."""
        bits = max([8, *(c.bits for c in fmt.components)] if fmt is not None else [8])
        deep = bits > 8
        if fmt is not None and len(fmt.components) <= 2 and not fmt.has_palette:
            # gray, gray10le, gray16le, ya8, monob ...
            return cls("gray16le" if deep else "gray", ("grey",), "u2" if deep else "u1", bits)
        return cls("rgb48le" if deep else "rgb24", ("R", "G", "B"), "u2" if deep else "u1", bits)

    def array(self, frame: VideoFrame, height: int, width: int) -> np.ndarray:
        """One decoded frame as ``(band, y, x)``, at the stream's own bit depth."""
        # uint8/uint16 for the integer formats of _Pixels (PyAV's stub lists float ones too)
        image: np.ndarray = frame.to_ndarray(format=self.fmt, width=width, height=height)
        if 8 < self.bits < 16:  # FFmpeg scaled it to 16 bits by bit replication: undo it
            image = image >> (16 - self.bits)
        return image.transpose(2, 0, 1) if image.ndim == 3 else image[None]


def _scan(av: ModuleType, path: Path) -> dict:
    """One demux pass: stream facts, sorted frame pts and each frame's keyframe seek point."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise FormatError(
            f"{path}: expected a video FFmpeg can open (mp4/mkv/avi/mov/webm), but it failed: "
            f"{exc}; check that the file is complete, or convert it with ffmpeg"
        ) from None
    with container:
        if not container.streams.video:
            raise FormatError(
                f"{path}: expected a video stream, found none (streams: "
                f"{[s.type for s in container.streams] or 'none'}); pass a file with video"
            )
        stream = container.streams.video[0]
        ctx = stream.codec_context
        facts = {
            "index": stream.index,
            "height": ctx.height,
            "width": ctx.width,
            "time_base": stream.time_base,
            "rate": stream.average_rate,
            "codec": ctx.name,
            "pix_fmt": ctx.format.name if ctx.format else "unknown",
            "pixels": _Pixels.of(ctx.format),
        }
        pts, keys = [], []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue  # the flush packet at the end; packets an edit list hides
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                raise FormatError(
                    f"{path}: expected timestamps on every video packet, found one without; "
                    "remux the file first, e.g. ffmpeg -i IN -c copy OUT.mkv"
                )
            pts.append(ts)
            if packet.is_keyframe:
                keys.append((ts, packet.dts if packet.dts is not None else ts))
    pts.sort()
    if not pts or len(set(pts)) != len(pts) or min(facts["height"], facts["width"]) < 1:
        raise FormatError(
            f"{path}: expected frames with distinct timestamps, got {len(pts)} packets "
            f"({len(pts) - len(set(pts))} repeated timestamps, frame size "
            f"{facts['width']}x{facts['height']}); re-encode it, e.g. "
            "ffmpeg -i IN -c:v ffv1 OUT.mkv"
        )
    keys.sort()
    key_pts = [k[0] for k in keys]
    if keys and pts[0] < key_pts[0]:
        # A cut stream: frames before its first keyframe reference data that is gone.
        skipped = bisect.bisect_left(pts, key_pts[0])
        warnings.warn(
            f"{path}: skipped the first {skipped} of {len(pts)} frames: they come before "
            "the first keyframe, so they cannot be decoded correctly",
            CubepipeWarning,
            stacklevel=3,
        )
        pts = pts[skipped:]
    seek = [
        keys[i - 1][1] if i else _FROM_START for i in (bisect.bisect_right(key_pts, t) for t in pts)
    ]
    facts["plan"] = np.array([pts, seek], dtype=np.int64).T.copy()
    return facts


class _Decoder:
    """One open container of one video stream, positioned after the last frame it gave.

    ``pos`` is that frame's pts (before the first frame: the seek point it started from);
    while a thread uses it, ``until`` is the last pts that thread wants. Only the thread
    that took it from the pool touches its container.
    """

    def __init__(self, key: tuple, start: int) -> None:
        self.key = key
        self.pos = start
        self.until = start
        self.busy = True
        self.exhausted = False
        self._container: InputContainer | None = None
        self._frames: Iterator[VideoFrame] = iter(())

    def open(self, av: ModuleType, path: str, index: int) -> None:
        """Open the file and seek to ``pos`` (a keyframe's dts, or :data:`_FROM_START`)."""
        self._container = av.open(path)
        stream = self._container.streams[index]
        if self.pos != _FROM_START:
            self._container.seek(self.pos, stream=stream, backward=True, any_frame=False)
        self._frames = cast("Iterator[VideoFrame]", self._container.decode(stream))

    def read_into(self, out: np.ndarray, want: dict, pixels: _Pixels) -> None:
        """Decode forward, putting the frames whose pts are keys of ``want`` into ``out``
        (popping them); stop after the last one, or past it when one never came."""
        last = max(want)
        for frame in self._frames:
            ts = frame.pts if frame.pts is not None else frame.dts
            if ts is None:
                continue
            self.pos = ts
            if ts in want:
                out[want.pop(ts)] = pixels.array(frame, *out.shape[-2:])
                if not want:
                    return
            if ts > last:
                return
        self.exhausted = True

    def close(self) -> None:
        if self._container is not None:
            self._container.close()


#: Every open decoder of this process, idle ones in least-recently-used order; guarded by
#: ``_CHANGED``, which is notified whenever one is given back.
_DECODERS: list[_Decoder] = []
_CHANGED = threading.Condition()
#: Decoders inherited by a forked child: never used nor closed there (their FFmpeg
#: threads stayed in the parent), only kept from being freed.
_INHERITED: list[_Decoder] = []


def _forget_decoders_after_fork() -> None:
    global _CHANGED
    _INHERITED.extend(_DECODERS)
    _DECODERS.clear()
    _CHANGED = threading.Condition()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_decoders_after_fork)


def close_decoders() -> None:
    """Close the idle decoders this process keeps open (busy ones close when given back)."""
    with _CHANGED:
        idle = [d for d in _DECODERS if not d.busy]
        for d in idle:
            _DECODERS.remove(d)
    for d in idle:
        d.close()


def _take_decoder(
    key: tuple, first: int, last: int, seek: int, *, new: bool
) -> tuple[_Decoder, bool]:
    """The cheapest decoder to reach pts ``first`` (marked busy until ``last``), and
    whether it must be opened.

    Costs count the pts this thread decodes, plus half those it waits for: an idle
    decoder before ``first`` continues (``first - pos``); a busy one that will stop before
    ``first`` is waited for (``first - until + (until - pos) / 2``); a new one starts at
    ``seek``, the keyframe at or before ``first`` (``first - seek``). Ties keep a decoder
    already open, so reading in order, even from several threads, decodes each frame
    about once. ``new``: always a new one.
    """
    with _CHANGED:
        while True:
            best, cost = None, float(first - seek)
            for d in _DECODERS if not new else ():
                if d.key != key or (d.until if d.busy else d.pos) >= first:
                    continue
                c = first - d.until + (d.until - d.pos) / 2 if d.busy else float(first - d.pos)
                if c < cost or (c == cost and (best is None or (best.busy and not d.busy))):
                    best, cost = d, c
            if best is not None and best.busy:
                _CHANGED.wait()
                continue
            opening = best is None
            if best is None:
                best = _Decoder(key, seek)
            else:
                best.busy = True
                _DECODERS.remove(best)
            _DECODERS.append(best)
            best.until = last
            return best, opening


def _give_back(decoder: _Decoder, *, keep: bool) -> None:
    closing = []
    with _CHANGED:
        decoder.busy = False
        if not keep or decoder.exhausted:
            _DECODERS.remove(decoder)
            closing.append(decoder)
        idle = [d for d in _DECODERS if not d.busy]
        for d in idle[: max(0, len(idle) - MAX_IDLE_DECODERS)]:
            _DECODERS.remove(d)
            closing.append(d)
        _CHANGED.notify_all()
    for d in closing:
        d.close()


def _read_block(
    out: np.ndarray,
    want: dict,
    av: ModuleType,
    path: str,
    index: int,
    pixels: _Pixels,
    stamp: tuple | None,
    *,
    seek: int,
    new: bool,
) -> bool:
    """Read ``want`` into ``out`` with a decoder from the pool (``new``: a new one at
    ``seek``), held by this thread meanwhile and given back unless reading failed.
    Returns whether that decoder was a new one started at ``seek``."""
    decoder, opening = _take_decoder((path, index, stamp), min(want), max(want), seek, new=new)
    keep = False
    try:
        if opening:
            decoder.open(av, path, index)
        decoder.read_into(out, want, pixels)
        keep = True
    finally:
        _give_back(decoder, keep=keep)
    return opening


def _read_frames(
    plan: np.ndarray,
    _order: np.ndarray | None = None,
    *,
    path: str,
    index: int,
    pixels: _Pixels,
    shape: tuple,
    stamp: tuple | None = None,
) -> np.ndarray:
    """Decode one block of frames (a dask block); ``plan`` rows are ``(pts, seek point)``;
    ``_order`` (the block's tickets, see :func:`open_video`) only orders the blocks.

    ``stamp`` identifies the file's version (e.g. inode, mtime, size): decoders kept open
    for one version are never used for another.
    """
    av = _import_av()
    out = np.empty((len(plan), *shape), dtype=np.dtype(pixels.dtype))
    want = {int(ts): i for i, ts in enumerate(plan[:, 0])}
    seek = int(plan[:, 1].min())
    args = (out, want, av, path, index, pixels, stamp)
    fresh = _read_block(*args, seek=seek, new=False)
    # A wanted frame never came: a decoder went past it. Retry with a new decoder at the
    # keyframe (unless that was the one), then from the start of the file: the fallback
    # for a seek that lands after a wanted frame (a demuxer with an inexact index), which
    # costs O(video), not O(GOP).
    if want and not fresh:
        _read_block(*args, seek=seek, new=True)
    if want and seek != _FROM_START:
        _read_block(*args, seek=_FROM_START, new=True)
    if not want:
        return out
    raise FormatError(
        f"{path}: expected frames with pts {sorted(want)[:5]} but decoding did not "
        "produce them; the file may be damaged: re-encode it, e.g. "
        "ffmpeg -i IN -c:v ffv1 OUT.mkv"
    )


def open_video(path: str | Path, *, chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    """Open the first video stream of a file lazily as a cube Dataset.

    Parameters
    ----------
    path
        An mp4, mkv, avi, mov or webm file (anything FFmpeg demuxes).
    chunks
        Chunk size per dim. ``frame`` sets the frames decoded per block (default
        :data:`FRAMES_PER_BLOCK`, fewer when a block would pass
        :data:`~cubepipe.storage.layout.MAX_CHUNK_BYTES`); the others follow
        :func:`~cubepipe.storage.layout.default_chunks`.

    Returns
    -------
    xarray.Dataset
        ``cube`` with dims ``(frame, band, y, x)``: ``band`` is ``R, G, B`` (or one
        ``grey`` band for grey pixel formats), uint8, or uint16 when the stream has more
        than 8 bits per sample, holding values at the stream's own depth (0..1023 for
        10-bit video; ``cube.attrs["bit_depth"]`` says which); alpha is dropped.
        Coordinates ``time`` (presentation time in seconds, float64, over ``frame``) and
        ``band_name``.

    Raises
    ------
    MissingDependencyError
        When PyAV (``av``) is not installed: ``pip install 'cubepipe[video]'``.
    FormatError
        When FFmpeg cannot open the file, it has no video stream, or its timestamps are
        unusable.

    Warns
    -----
    CubepipeWarning
        When frames before the stream's first keyframe (a cut stream) are skipped.

    Notes
    -----
    The frame count is the number of video packets found by one demux pass (which
    reads the file once but decodes nothing), less any before the first keyframe; the
    container's own ``frames`` field is not trusted since many containers (mkv, webm)
    leave it 0.

    Blocks read in frame order (by one thread or several) decode the video once, as
    plain PyAV does, and give the same frames bit for bit: decoders stay open between
    blocks, at most :data:`MAX_IDLE_DECODERS` idle ones per process (the file stays open
    meanwhile; :func:`close_decoders` closes them).
    """
    av = _import_av()
    p = Path(path)
    facts = _scan(av, p)
    pixels = facts["pixels"]
    dtype = np.dtype(pixels.dtype)
    n_frames, h, w = len(facts["plan"]), facts["height"], facts["width"]
    shape = (len(pixels.bands), h, w)
    frame_bytes = int(np.prod(shape)) * dtype.itemsize
    per_block = dict(chunks or {}).get("frame", FRAMES_PER_BLOCK)
    per_block = max(1, min(int(per_block), MAX_CHUNK_BYTES // frame_bytes or 1))
    sizes = {"frame": n_frames, "band": shape[0], "y": h, "x": w}
    want = default_chunks(sizes, dtype.itemsize, overrides={**(chunks or {}), "frame": per_block})
    frame_chunks = da.core.normalize_chunks(want["frame"], (n_frames,))[0]
    plan = da.from_array(facts["plan"], chunks=(frame_chunks, 2))
    st = p.stat()
    name = "cubepipe-ingest-read-video-" + tokenize(
        str(p.resolve()), st.st_mtime_ns, st.st_size, want
    )
    # dask orders the blocks of a whole-video job (a write, a reduction) by their keys as
    # strings ("10" before "2", often backwards), and each block read out of order decodes
    # from its keyframe again: O(video) per block for a one-keyframe video. Tickets, a
    # cumulative sum of zeros (ticket k depends on ticket k - 1, and costs nothing), rank
    # block k after block k - 1 so that such jobs decode forward, each frame once.
    tickets = da.zeros(plan.shape, chunks=plan.chunks, dtype=np.int8).cumsum(axis=0)
    frames = da.map_blocks(
        _read_frames,
        plan,
        tickets,
        name=name,
        chunks=(frame_chunks, *((n,) for n in shape)),
        new_axis=[2, 3],
        dtype=dtype,
        meta=np.empty((0, 0, 0, 0), dtype=dtype),
        path=str(p),
        index=facts["index"],
        pixels=pixels,
        shape=shape,
        stamp=(st.st_ino, st.st_mtime_ns, st.st_size),
    )
    frames = frames.rechunk(tuple(want[d] for d in sizes))
    time = facts["plan"][:, 0].astype(np.float64) * float(facts["time_base"])
    coords = {
        "time": ("frame", time, {"units": "s", "long_name": "presentation time"}),
        "band_name": ("band", np.array(pixels.bands, dtype=object)),
    }
    attrs = {"source": str(path), "format": "video", "codec": facts["codec"]}
    attrs |= {"pix_fmt": facts["pix_fmt"]}
    if facts["rate"]:
        attrs["fps"] = float(facts["rate"])
    cube = xr.Variable(("frame", "band", "y", "x"), frames, {"bit_depth": pixels.bits})
    return xr.Dataset({"cube": cube}, coords=coords, attrs=attrs)


def _sniff(head: bytes, path: Path) -> bool:
    """MP4/MOV (``ftyp`` box, not a HEIF/AVIF image), Matroska/WebM or AVI."""
    if head[4:8] == b"ftyp":
        return head[8:12] not in _IMAGE_BRANDS
    return head.startswith(b"\x1aE\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")


SPEC = register(
    ReaderSpec(
        name="video",
        suffixes=(".mp4", ".m4v", ".mkv", ".avi", ".mov", ".webm"),
        sniff=_sniff,
        open=open_video,
    )
)
