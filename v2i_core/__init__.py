"""V2I-DETR: video-to-image knowledge distillation for medical video lesion detection."""

__version__ = "0.1.0"
