"""Text encoders that turn prompts into cross-attention context (CLIP, through `transformers`)."""

from ldmkit.text.clip import CLIPTextEncoder, clip_config_from_weights, read_tokenizer_files

__all__ = ["CLIPTextEncoder", "clip_config_from_weights", "read_tokenizer_files"]
