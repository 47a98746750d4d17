"""Face family: InsightFace analysis (buffalo_l) and inswapper_128 face swap, images and video."""
from .models import INSWAPPER, PACK, FaceConfig
from .service import FaceService

__all__ = ["FaceConfig", "FaceService", "PACK", "INSWAPPER"]
