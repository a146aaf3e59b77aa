"""The HTTP service: erase concepts and generate with per-request erasure sets over one shared pipeline."""
