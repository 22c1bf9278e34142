"""Typed, frozen configuration of CXRTrekNet and the preset registry.

A `ModelConfig` holds one config per tower (`vision`, `projector`, `text`)
plus the fields shared between the model and the tokenizer (`image_token_id`,
`max_images`, and `text.vocab_size`), the compute dtype and the optional
parameter-efficient fine-tuning set-up (`lora`, `frozen`).

Configs are plain frozen dataclasses of JSON-able values:
  * `override(cfg, {"text.num_layers": 4})` changes fields by dotted key;
    string values (from a command line) are parsed to the field's type;
  * `to_dict(cfg)` / `from_dict(d)` round-trip through JSON for checkpoints;
  * `get_config(name)` returns a preset ("tiny", "compact", "small", "cxrtreknet-7b", "medgemma-4b").

This module imports no JAX so that command-line parsing stays cheap.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from cxrtrek_jax import config_tree
from cxrtrek_jax.config_tree import override, to_dict

__all__ = [
    "VisionConfig",
    "ProjectorConfig",
    "TextConfig",
    "LoraConfig",
    "ModelConfig",
    "TOWERS",
    "TEXT_FAMILIES",
    "PROJECTOR_KINDS",
    "ACTIVATIONS",
    "COMPUTE_DTYPES",
    "get_config",
    "preset_names",
    "override",
    "to_dict",
    "from_dict",
]

# Activation names, spelled as in Hugging Face `ACT2FN`.
ACTIVATIONS = ("gelu", "gelu_pytorch_tanh", "quick_gelu")
# Compute dtypes (parameters are always float32).
COMPUTE_DTYPES = ("float32", "bfloat16")
# Top-level towers of the model, the units of freezing.
TOWERS = ("vision", "projector", "text")
# Decoder families (`TextConfig.family`) and projector kinds (`ProjectorConfig.kind`).
TEXT_FAMILIES = ("llama", "gemma3")
PROJECTOR_KINDS = ("mlp", "gemma3")
MLP_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full", "sliding")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _require_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}",
        )


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """SigLIP-style ViT encoder.

    Images enter as grayscale float32 in [0, 1]; the encoder replicates them
    to `num_channels` equal channels and normalises each with
    `(x - pixel_mean) / pixel_std` (SigLIP: 0.5 / 0.5, i.e. [-1, 1]), or, when
    `channel_mean` / `channel_std` are set (both, one value per channel, as
    an imported checkpoint's image processor has them, e.g. CLIP's), channel c
    with `(x - channel_mean[c]) / channel_std[c]`; they then override
    `pixel_mean` / `pixel_std` (`channel_normalisation`).

    `feature_layer` picks the hidden state handed to the projector, indexed
    like Hugging Face `hidden_states` (0 = patch + position embeddings,
    i = output of block i, negative counts from the end: -1 = last block).
    `feature_final_norm` applies the final LayerNorm to that state; it is
    only allowed when the feature layer is the last block.

    CLIP-style towers (LLaVA-1.5): `class_token` prepends a learned class
    embedding to the patch tokens (position embeddings then have
    grid_size**2 + 1 rows, row 0 the class token's); `pre_norm` applies a
    LayerNorm to the embedded tokens before the first block (CLIP's
    "pre_layrnorm"; hidden state 0 is taken after it); `patch_bias=False`
    drops the patch projection's bias. `feature_class_token` hands the class
    token's feature to the projector as well (Hugging Face strategy "full");
    by default it is dropped (strategy "default"), so the projector gets the
    grid_size**2 patch features either way. The defaults are SigLIP's.
    """

    image_size: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_channels: int = 3
    activation: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    feature_layer: int = -1
    feature_final_norm: bool = True
    class_token: bool = False
    pre_norm: bool = False
    patch_bias: bool = True
    feature_class_token: bool = False
    pixel_mean: float = 0.5
    pixel_std: float = 0.5
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        _require_positive(self, "image_size", "patch_size", "width", "depth", "num_heads",
                          "mlp_dim", "num_channels")
        _require(self.image_size >= self.patch_size,
                 f"VisionConfig.image_size ({self.image_size}) must be at least patch_size ({self.patch_size})")
        _require(self.width % self.num_heads == 0,
                 f"VisionConfig.width ({self.width}) must be a multiple of num_heads ({self.num_heads})")
        _require(self.activation in ACTIVATIONS,
                 f"VisionConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        _require(-(self.depth + 1) <= self.feature_layer <= self.depth,
                 f"VisionConfig.feature_layer ({self.feature_layer}) is out of range for "
                 f"depth {self.depth} (valid: {-(self.depth + 1)}..{self.depth})")
        _require(not self.feature_final_norm or self.feature_layer_index == self.depth,
                 "VisionConfig.feature_final_norm=True requires the feature layer to be the last "
                 f"block, got feature_layer={self.feature_layer} with depth {self.depth}")
        _require(self.class_token or not self.feature_class_token,
                 "VisionConfig.feature_class_token=True requires class_token=True (there is no class token to keep)")
        _require(self.pixel_std > 0, f"VisionConfig.pixel_std must be > 0, got {self.pixel_std}")
        for name in ("channel_mean", "channel_std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        _require((self.channel_mean is None) == (self.channel_std is None),
                 "VisionConfig.channel_mean and channel_std must be set together (or both None), got "
                 f"{self.channel_mean} and {self.channel_std}")
        if self.channel_mean is not None:
            _require(len(self.channel_mean) == len(self.channel_std) == self.num_channels,
                     f"VisionConfig.channel_mean and channel_std need {self.num_channels} values "
                     f"(num_channels), got {self.channel_mean} and {self.channel_std}")
            _require(min(self.channel_std) > 0, f"VisionConfig.channel_std must be > 0, got {self.channel_std}")

    @property
    def channel_normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per input channel: `channel_mean/std`, else `pixel_mean/std` on every channel."""
        if self.channel_mean is not None:
            return self.channel_mean, self.channel_std
        return (self.pixel_mean,) * self.num_channels, (self.pixel_std,) * self.num_channels

    @property
    def grid_size(self) -> int:
        """Patches per image side; trailing pixels beyond grid_size * patch_size are
        ignored, like a 'valid' strided convolution (SigLIP-so400m/14 at 384 px: 27)."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Rows of the position embedding: grid_size**2 patches, plus 1 with a class token."""
        return self.grid_size**2 + int(self.class_token)

    @property
    def tokens_per_image(self) -> int:
        """Feature tokens per image handed to the projector: grid_size**2 patches, plus the class
        token's with `feature_class_token`."""
        return self.grid_size**2 + int(self.feature_class_token)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def feature_layer_index(self) -> int:
        """`feature_layer` resolved to 0..depth (number of blocks run)."""
        return self.feature_layer % (self.depth + 1)


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """The multi-modal projector.

    kind "mlp": LLaVA's 2-layer MLP, vision width -> text embed -> text embed
    (`activation`, `use_bias`); one token per patch.
    kind "gemma3": Gemma 3's projector: the patch grid average-pooled to
    `tokens_per_image` tokens (a square whose side divides the grid side),
    a Gemma RMSNorm (weight + 1, `norm_eps`), one linear map without bias.
    """

    activation: str = "gelu"
    use_bias: bool = True
    kind: str = "mlp"
    tokens_per_image: int | None = None
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _require(self.activation in ACTIVATIONS,
                 f"ProjectorConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        _require(self.kind in PROJECTOR_KINDS,
                 f"ProjectorConfig.kind must be one of {PROJECTOR_KINDS}, got {self.kind!r}")
        if self.kind == "gemma3":
            n = self.tokens_per_image
            _require(isinstance(n, int) and n > 0 and round(n**0.5) ** 2 == n,
                     f"ProjectorConfig.tokens_per_image must be a positive square for kind 'gemma3', got {n!r}")
        else:
            _require(self.tokens_per_image is None,
                     "ProjectorConfig.tokens_per_image is only for kind 'gemma3' (the MLP keeps every patch)")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The decoder: rotate-half RoPE, GQA, a gated MLP.

    family "llama": RMSNorm, SwiGLU, two norms per block, the fields below
    the first group at their defaults. family "gemma3" (`model/gemma3.py`):
    RMSNorm as x * (1 + weight), query/key norms, four norms per block,
    embeddings scaled by sqrt(embed_dim), and

      mlp_activation         gate activation ("gelu_pytorch_tanh" in Gemma 3)
      query_pre_attn_scalar  attention logits scaled by its -1/2 power (None: head_dim)
      layer_types            "full" / "sliding" per layer (() = all full)
      sliding_window         keys within this many slots (query's included) for "sliding" layers
      local_rope_theta       RoPE base of the sliding layers (None: rope_theta)
      rope_scaling_factor    linear RoPE scaling (positions / factor) of the full layers
      bidirectional_image_attention  the tokens of one image attend to each other both ways
    """

    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_positions: int = 2048
    family: str = "llama"
    mlp_activation: str = "silu"
    query_pre_attn_scalar: int | None = None
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    local_rope_theta: float | None = None
    rope_scaling_factor: float = 1.0
    bidirectional_image_attention: bool = False

    def __post_init__(self) -> None:
        _require_positive(self, "vocab_size", "embed_dim", "num_layers", "num_heads",
                          "num_kv_heads", "head_dim", "mlp_dim", "max_positions")
        _require(self.family in TEXT_FAMILIES,
                 f"TextConfig.family must be one of {TEXT_FAMILIES}, got {self.family!r}")
        _require(self.mlp_activation in MLP_ACTIVATIONS,
                 f"TextConfig.mlp_activation must be one of {MLP_ACTIVATIONS}, got {self.mlp_activation!r}")
        _require(not self.layer_types or len(self.layer_types) == self.num_layers,
                 f"TextConfig.layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        _require(all(t in LAYER_TYPES for t in self.layer_types),
                 f"TextConfig.layer_types entries must be in {LAYER_TYPES}, got {self.layer_types}")
        _require("sliding" not in self.layer_types or (isinstance(self.sliding_window, int)
                                                        and self.sliding_window > 0),
                 f"TextConfig.sliding_window must be a positive integer with sliding layers, got "
                 f"{self.sliding_window!r}")
        _require(self.rope_scaling_factor > 0,
                 f"TextConfig.rope_scaling_factor must be > 0, got {self.rope_scaling_factor}")
        if self.family == "llama":
            gemma_only = {"mlp_activation": "silu", "query_pre_attn_scalar": None, "layer_types": (),
                          "sliding_window": None, "local_rope_theta": None, "rope_scaling_factor": 1.0,
                          "bidirectional_image_attention": False}
            changed = [name for name, default in gemma_only.items() if getattr(self, name) != default]
            _require(not changed, f"TextConfig fields {changed} are only for family 'gemma3' (the Llama "
                                  "decoder implements none of them)")
        _require(self.num_heads % self.num_kv_heads == 0,
                 f"TextConfig.num_heads ({self.num_heads}) must be a multiple of "
                 f"num_kv_heads ({self.num_kv_heads})")
        _require(self.head_dim % 2 == 0,
                 f"TextConfig.head_dim must be even for rotate-half RoPE, got {self.head_dim}")
        _require(self.rope_theta > 0, f"TextConfig.rope_theta must be > 0, got {self.rope_theta}")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the linear layers whose module path matches `targets`.

    `targets` is a regular expression matched in full (`re.fullmatch`) against
    dotted module paths such as "text.layers.3.attn.q_proj" or
    "projector.linear_1". The adapter adds `dropout(x) @ A @ B * alpha / rank`.
    """

    targets: str = r"text\.layers\.\d+\.(attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _require_positive(self, "rank")
        _require(0.0 <= self.dropout < 1.0, f"LoraConfig.dropout must be in [0, 1), got {self.dropout}")
        try:
            re.compile(self.targets)
        except re.error as err:
            raise ValueError(f"LoraConfig.targets is not a valid regular expression: {err}") from err

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole CXRTrekNet.

    `image_token_id`, `max_images` and `text.vocab_size` are set by the
    tokenizer / data side. `frozen` names towers (see `TOWERS`) whose base
    parameters are not trained; LoRA parameters are always trainable.
    `remat` rematerialises each transformer block in the backward pass.
    """

    vision: VisionConfig
    text: TextConfig
    image_token_id: int
    max_images: int
    projector: ProjectorConfig = ProjectorConfig()
    dtype: str = "float32"
    remat: bool = False
    lora: LoraConfig | None = None
    frozen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require_positive(self, "max_images")
        _require(0 <= self.image_token_id < self.text.vocab_size,
                 f"ModelConfig.image_token_id ({self.image_token_id}) must be in "
                 f"[0, text.vocab_size={self.text.vocab_size})")
        _require(self.dtype in COMPUTE_DTYPES,
                 f"ModelConfig.dtype must be one of {COMPUTE_DTYPES}, got {self.dtype!r}")
        unknown = [t for t in self.frozen if t not in TOWERS]
        _require(not unknown, f"ModelConfig.frozen names unknown towers {unknown}; known: {TOWERS}")
        if self.projector.kind == "gemma3":
            side, grid = round(self.projector.tokens_per_image**0.5), self.vision.grid_size
            _require(grid % side == 0, f"ProjectorConfig.tokens_per_image {self.projector.tokens_per_image} "
                                       f"({side} per side) must pool the {grid}x{grid} patch grid evenly")
            _require(not self.vision.feature_class_token,
                     "VisionConfig.feature_class_token=True cannot feed projector kind 'gemma3', which pools "
                     "the patch grid")

    @property
    def tokens_per_image(self) -> int:
        """Image tokens in the text per image: one per patch (MLP), or the pooled count (Gemma 3)."""
        if self.projector.kind == "gemma3":
            return self.projector.tokens_per_image
        return self.vision.tokens_per_image

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size


# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------

def _tiny() -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=64),
        text=TextConfig(vocab_size=512, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=128, max_positions=512),
        image_token_id=511,
        max_images=2,
    )


def _small() -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(image_size=128, patch_size=16, width=256, depth=6, num_heads=4, mlp_dim=1024),
        text=TextConfig(vocab_size=8192, embed_dim=384, num_layers=6, num_heads=6, num_kv_heads=2,
                        head_dim=64, mlp_dim=1024, max_positions=2048),
        image_token_id=8191,
        max_images=4,
    )


def _compact() -> ModelConfig:
    # Between tiny and small: 64 px images in 8 px patches (64 tokens each, as small has), a
    # 3-layer 128-wide decoder that holds the demo's 1,024-token chains and four images. About a
    # tenth of small's FLOPs per token, so a 2-core CPU trains it for hundreds of steps in minutes.
    return ModelConfig(
        vision=VisionConfig(image_size=64, patch_size=8, width=64, depth=3, num_heads=4, mlp_dim=256),
        text=TextConfig(vocab_size=4096, embed_dim=128, num_layers=3, num_heads=4, num_kv_heads=2,
                        head_dim=32, mlp_dim=512, max_positions=2048),
        image_token_id=4095,
        max_images=4,
    )


def _cxrtreknet_7b() -> ModelConfig:
    # SigLIP-so400m/14 at 384 px (729 tokens per image) + a Llama-2-7B-shaped decoder with GQA.
    return ModelConfig(
        vision=VisionConfig(image_size=384, patch_size=14, width=1152, depth=27, num_heads=16, mlp_dim=4304),
        text=TextConfig(vocab_size=32000, embed_dim=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                        head_dim=128, mlp_dim=11008, rope_theta=10_000.0, rms_norm_eps=1e-5,
                        max_positions=4096),
        image_token_id=31999,
        max_images=4,
        dtype="bfloat16",
        remat=True,
    )


def _medgemma_4b() -> ModelConfig:
    # MedGemma 4B (google/medgemma-4b-it; the shapes of Gemma 3 4B, google/gemma-3-4b-it), as in its
    # config.json: SigLIP-so400m/14 at 896 px (hidden 1152, mlp 4304, 27 layers, 16 heads, a 64x64
    # patch grid) pooled 4x4 to mm_tokens_per_image 256; Gemma 3 text: vocab 262208, hidden 2560,
    # intermediate 10240, 34 layers, 8 heads / 4 KV heads of head_dim 256, query_pre_attn_scalar 256,
    # sliding_window 1024 with every 6th layer global (sliding_window_pattern 6: layers 5, 11, 17,
    # 23, 29), rope_theta 1e6 with linear scaling factor 8 on the global layers,
    # rope_local_base_freq 1e4, max_position_embeddings 131072, rms_norm_eps 1e-6, gelu_pytorch_tanh,
    # tied embeddings; image_token_index 262144 (boi 255999, eoi 256000 are the tokenizer's).
    num_layers = 34
    return ModelConfig(
        vision=VisionConfig(image_size=896, patch_size=14, width=1152, depth=27, num_heads=16, mlp_dim=4304),
        text=TextConfig(vocab_size=262_208, embed_dim=2560, num_layers=num_layers, num_heads=8, num_kv_heads=4,
                        head_dim=256, mlp_dim=10_240, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                        tie_embeddings=True, max_positions=131_072, family="gemma3",
                        mlp_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256,
                        layer_types=tuple("full" if (i + 1) % 6 == 0 else "sliding" for i in range(num_layers)),
                        sliding_window=1024, local_rope_theta=10_000.0, rope_scaling_factor=8.0,
                        bidirectional_image_attention=True),
        projector=ProjectorConfig(kind="gemma3", tokens_per_image=256, norm_eps=1e-6),
        image_token_id=262_144,
        max_images=4,
        dtype="bfloat16",
        remat=True,
    )


_PRESETS = {
    "tiny": _tiny,
    "compact": _compact,
    "small": _small,
    "cxrtreknet-7b": _cxrtreknet_7b,
    "medgemma-4b": _medgemma_4b,
}


def preset_names() -> tuple[str, ...]:
    return tuple(_PRESETS)


def get_config(name: str) -> ModelConfig:
    """The preset called `name` (see `preset_names()`)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(_PRESETS)}")
    return _PRESETS[name]()


def from_dict(data: Mapping[str, Any], cls: type = ModelConfig) -> Any:
    """Build `cls` (default `ModelConfig`) from `data` as written by `to_dict`."""
    return config_tree.from_dict(data, cls)
