"""From video files to per-video features: finding videos, decoding, clips, batches, engines."""
