"""The transcoder service: pulls work for a pool and runs ffmpeg with live progress."""

from services.transcoder.config import TranscoderSettings
from services.transcoder.service import Transcoder

__all__ = ["Transcoder", "TranscoderSettings"]
