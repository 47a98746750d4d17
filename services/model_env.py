"""What every service needs to find and place its models, decided once from the settings."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefetch.locate import is_present, locate

from .vram import VramOffloader


@dataclass(frozen=True)
class ModelEnv:
    models_dir: Path
    profile: str  # colab | local | smoke
    device: str  # cuda | cpu
    dtype: str  # float16 | bfloat16 | float32 (services/device.py policy)
    vram: VramOffloader
    data_dir: Path

    def locate(self, key: str) -> Path:
        """The model's folder, or ModelUnavailable naming the prefetch command."""
        return locate(key, self.models_dir, self.profile)

    def present(self, key: str) -> bool:
        return is_present(key, self.models_dir, self.profile)
