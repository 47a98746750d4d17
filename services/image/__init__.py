"""Image family: SDXL-Lightning text-to-image, its cache, and the magic prompt."""
from .cache import ImageCache
from .params import FORMATS, MAX_SEED, STEPS, ImageLimits, ImageRequest
from .service import JOB_KIND, MODEL_NAME, ImageService, model_id

__all__ = ["FORMATS", "JOB_KIND", "MAX_SEED", "MODEL_NAME", "STEPS", "ImageCache", "ImageLimits", "ImageRequest",
           "ImageService", "model_id"]
