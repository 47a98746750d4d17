"""Creator finishing tools: Real-ESRGAN upscaling and GFPGAN face restoration, loaded with spandrel."""
from .service import DEFAULT_FIDELITY, SCALES, RestoreConfig, RestoreService

__all__ = ["DEFAULT_FIDELITY", "SCALES", "RestoreConfig", "RestoreService"]
