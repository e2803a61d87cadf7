"""Building blocks of the UNet and the autoencoder (see docs/ARCHITECTURE.md, "nn/")."""

from ldmkit.nn.attention import CrossAttention, SelfAttentionBlock, multi_head_attention, resolve_heads
from ldmkit.nn.embeddings import TimestepEmbedding, timestep_embedding
from ldmkit.nn.norm import group_norm
from ldmkit.nn.norm_silu import group_norm_silu
from ldmkit.nn.resample import DownSample, UpSample
from ldmkit.nn.resnet import ResNetBlock
from ldmkit.nn.transformer import FeedForward, SpatialTransformer, TransformerBlock

__all__ = [
    "CrossAttention",
    "DownSample",
    "FeedForward",
    "ResNetBlock",
    "SelfAttentionBlock",
    "SpatialTransformer",
    "TimestepEmbedding",
    "TransformerBlock",
    "UpSample",
    "group_norm",
    "group_norm_silu",
    "multi_head_attention",
    "resolve_heads",
    "timestep_embedding",
]
