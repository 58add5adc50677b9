"""What one server process holds, shared by the API and the page."""

from __future__ import annotations

from dataclasses import dataclass

from .media import PlayableVideos
from .models import ServedModel
from .paths import AllowedRoots
from .uploads import UploadStore
from .worker import ModelWorker


@dataclass
class ServerContext:
    models: list[ServedModel]
    worker: ModelWorker
    uploads: UploadStore
    roots: AllowedRoots
    playable: PlayableVideos
    max_upload_bytes: int

    def model(self, model_id: str | None) -> ServedModel | None:
        """The model with this id; None for an unknown id."""
        return next((m for m in self.models if m.id == model_id), None)
