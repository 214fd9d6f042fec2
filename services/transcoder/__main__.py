"""`python -m services.transcoder` (or `vidmesh transcoder`)."""

from services.transcoder import Transcoder, TranscoderSettings
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("transcoder", TranscoderSettings, Transcoder)
