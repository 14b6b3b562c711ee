"""PyAV decoding: sampled frames and 16 kHz mono audio of a clip or a window of a file.

`types` is the leaf (MediaError, DecodeConfig, Clip: it imports nothing of ours); `decode`
drives the container and uses `sampling` (frames and audio of the window), `durations`
(how long a file really is) and `bitstream` (where decoding can start cleanly).
"""

from mmsa_ray.media.decode import decode_clip, probe_duration, stream_audio
from mmsa_ray.media.types import Clip, DecodeConfig, MediaError

__all__ = ["Clip", "DecodeConfig", "MediaError", "decode_clip", "probe_duration", "stream_audio"]
