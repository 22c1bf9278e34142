"""CXRTrekNet in Flax NNX: configs, the model, its KV cache, LoRA and logical axes.

    from cxrtrek_jax.model import CXRTrekNet, get_config
    model = CXRTrekNet(get_config("tiny"), rngs=nnx.Rngs(0))
    logits, cache = model(tokens, images, image_mask, positions, segment_ids)
"""

from cxrtrek_jax.model.config import (
    ACTIVATIONS,
    COMPUTE_DTYPES,
    TOWERS,
    LoraConfig,
    ModelConfig,
    ProjectorConfig,
    TextConfig,
    VisionConfig,
    from_dict,
    get_config,
    override,
    preset_names,
    to_dict,
)
from cxrtrek_jax.model.cxrtreknet import CXRTrekNet
from cxrtrek_jax.model.kv_cache import KV_AXES, SLOT_AXES, KVCache
from cxrtrek_jax.model.logical import AXIS_NAMES, axis_rules, constrain, logical_to_spec
from cxrtrek_jax.model.lora import apply_lora, merge_lora, module_path, trainable_filter, trainable_mask
from cxrtrek_jax.model.splice import check_image_token_counts

__all__ = [
    "ACTIVATIONS", "COMPUTE_DTYPES", "TOWERS",
    "LoraConfig", "ModelConfig", "ProjectorConfig", "TextConfig", "VisionConfig",
    "from_dict", "get_config", "override", "preset_names", "to_dict",
    "CXRTrekNet", "KVCache", "KV_AXES", "SLOT_AXES",
    "AXIS_NAMES", "axis_rules", "constrain", "logical_to_spec",
    "apply_lora", "merge_lora", "module_path", "trainable_filter", "trainable_mask",
    "check_image_token_counts",
]
