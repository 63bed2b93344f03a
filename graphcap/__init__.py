"""graphcap's public API: caption photos with a released model in three lines.

    from graphcap import Captioner
    captioner = Captioner.from_pretrained("models/release")  # a release folder or its Hub id
    captioner.caption(["photo.jpg", pil_image])               # one caption per image

``push_to_hub`` uploads a release folder; ``CaptionModel`` is the trainable module alone (it
reads cached features, as the trainer does).
"""
from pipeline.captioner import Captioner
from train.model import Captioner as CaptionModel
from train.model import push_to_hub

__all__ = ["Captioner", "CaptionModel", "push_to_hub"]
