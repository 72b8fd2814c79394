"""FFmpeg's log, the readers' signal of damage a decoder conceals: PyAV's capture of its lines
(ffmpeg_capture, OpenLog), and in a decoder process what C code writes on file descriptor 2 (NativeStderr:
decord's FFmpeg logs there); decord's and FFmpeg's messages cleaned to one line (clean_decoder_message).
No torch (decoder processes import it).
"""

from __future__ import annotations

import os
import re
import tempfile

import av
import decord

# FFmpeg error codes that decord prints as bare numbers
_AVERRORS = {"-1094995529": "invalid data", "-11": "resource temporarily unavailable (EAGAIN)",
             "-541478725": "unexpected end of file"}


def clean_decoder_message(exc: BaseException | str) -> str:
    """decord's text minus its '[hh:mm:ss] /src/file.cc:123:' prefixes and C++ check
    expressions, on one line, with FFmpeg's numeric error codes named."""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+?:\d+: ", "", str(exc))
    text = re.sub(r"Check failed: .*? \((-?\d+) vs\. 0\) ",
                  lambda m: f"FFmpeg error {m.group(1)} ({_AVERRORS.get(m.group(1), 'see FFmpeg')}): ", text)
    text = re.sub(r"\[0x[0-9a-f]+\]|\[\S+ @ 0x[0-9a-f]+\] ", "", text)
    text = " ".join(text.split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


def ffmpeg_capture(local: bool = False) -> av.logging.Capture:
    """PyAV's capture of FFmpeg's log lines at error level and above, from every thread (a decoder's
    slice threads log too), one line per message. PyAV's default level (None) hands every line to
    FFmpeg's own printer, so a capture alone sees nothing; repeats are not folded, else one video's
    last line would be reported in the next one's."""
    av.logging.set_skip_repeated(False)
    if av.logging.get_level() is None or av.logging.get_level() < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    return av.logging.Capture(local)


class OpenLog:
    """An ffmpeg_capture held open across a reader's life (its decoding is a generator): `lines`
    fills while it is open, `end()` closes it once, whoever calls it first. `local`: only the lines
    of FFmpeg calls made in this thread (a reader in a thread beside others: nvdec.DeviceReader)."""

    def __init__(self, local: bool = False):
        self._capture = ffmpeg_capture(local)
        self.lines = self._capture.__enter__()

    def end(self) -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None


# how FFmpeg starts a line it logs: "[h264 @ 0x55d0c8a0] error while decoding MB 8 5", a demuxer by its
# formats ("[matroska,webm @ 0x...]"); decord's FFmpeg logs a packet a damaged container cuts short
# with no name at all ("Truncating packet of size 5484 to 2572")
_FFMPEG_LINE = re.compile(r"^(\[[\w,-]+ @ 0x[0-9a-f]+\] |Truncating packet of size )", re.M)


class NativeStderr:
    """What C code writes on file descriptor 2 (decord's 'ERROR opening', FFmpeg's own lines), caught
    so it is folded into the tool's one line per video instead of reaching the user's terminal.

    Only for decoder processes (fd 2 is the whole process's): `install()` sends fd 2 to a file for
    the process's life (decord's decoder thread also logs between calls). There, decord's FFmpeg
    logs its errors, so the damage it conceals (macroblocks it could not decode, filled in: the frame
    is still returned) is seen, and decord's try counts as failed (decord cannot say which frames it
    repaired; PyAV, which counts them, read the video first). PyAV's own FFmpeg logs through PyAV's
    capture (ffmpeg_capture), not here."""

    _sink = None

    @classmethod
    def install(cls) -> None:
        cls._sink = tempfile.TemporaryFile()
        os.dup2(cls._sink.fileno(), 2)
        decord.logging.set_level(decord.logging.ERROR)

    @classmethod
    def text(cls) -> str:
        """Everything written since the last call (raw), or "" where not installed."""
        if cls._sink is None:
            return ""
        cls._sink.seek(0)
        text = cls._sink.read().decode("utf-8", "replace")
        cls._sink.seek(0)
        cls._sink.truncate()
        return text


def damage_lines(text: str) -> list[str]:
    """The lines of caught native output that FFmpeg logged: errors it concealed, among others."""
    return [line for line in text.splitlines() if _FFMPEG_LINE.match(line)]


def damage_since(offset: int) -> tuple[list[str], int]:
    """FFmpeg's lines among the complete lines NativeStderr caught past byte `offset`, and the offset
    after those lines. One fstat when nothing was written; the file is read with pread, so neither
    its offset (where fd 2 writes) nor its text (NativeStderr.text) changes."""
    sink = NativeStderr._sink
    if sink is None:
        return [], offset
    size = os.fstat(sink.fileno()).st_size
    if size <= offset:
        return [], offset
    data = os.pread(sink.fileno(), size - offset, offset)
    end = data.rfind(b"\n") + 1  # a line FFmpeg is still writing is looked at next time
    return damage_lines(data[:end].decode("utf-8", "replace")), offset + end
