"""Architecture hyperparameters of the models studied in the energy paper, as Hugging Face config dicts, so
random-weight twins can be built offline with AutoModelForCausalLM.from_config.

Each value of :data:`PAPER_CONFIGS` is a plain dict for ``transformers.AutoConfig.for_model(**d)``. Only the
architecture-defining fields of the model's real ``config.json`` are kept (no ``torch_dtype``,
``transformers_version``, ``architectures``, dropout or generation noise).

RoPE uses the transformers-5 ``rope_parameters`` form (Gemma 3 nests one dict per attention type).
transformers 5.23 also accepts the legacy ``rope_theta`` / ``rope_scaling`` / ``rotary_pct`` /
``rope_local_base_freq`` keys and converts them to this same form; the legacy values are quoted in comments.

A line ending in ``# unverified`` holds a value that no stored source confirmed for that exact checkpoint.
"""
from __future__ import annotations

PAPER_HUB_IDS: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "pythia-160m": "EleutherAI/pythia-160m",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "gemma-3-1b": "google/gemma-3-1b-pt",
    "deepseek-r1-distill-qwen-1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "smollm3-3b": "HuggingFaceTB/SmolLM3-3B",
}

# Llama 3.2 config.json: rope_theta=500000.0 + rope_scaling {rope_type: llama3, ...}; each entry copies it.
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
}

PAPER_CONFIGS: dict[str, dict] = {
    # huggingface.co/openai-community/gpt2 config.json + fine-tunes of it (activation, token ids). 124.4M.
    "gpt2": {
        "model_type": "gpt2",
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_ctx": 1024,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-05,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    },
    # huggingface.co/EleutherAI/pythia-160m config.json. 162,322,944 params.
    "pythia-160m": {
        "model_type": "gpt_neox",
        "vocab_size": 50304,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 2048,
        # config.json: rotary_emb_base=10000, rotary_pct=0.25
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        "use_parallel_residual": True,
        "attention_bias": True,
        "layer_norm_eps": 1e-05,
        "hidden_act": "gelu",
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    # Fine-tunes declaring _name_or_path "HuggingFaceTB/SmolLM2-135M" (hub config pages) and a printed
    # LlamaConfig of that id in a public README. 134,515,008 params.
    "smollm2-135m": {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},  # config.json: rope_theta=100000
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.041666666666666664,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    # huggingface.co/unsloth/SmolLM2-360M config.json (_name_or_path "HuggingFaceTB/SmolLM2-360M"; unsloth
    # padded vocab to 49153, the original is 49152 as in other SmolLM2-360M fine-tunes). 361,821,120 params.
    "smollm2-360m": {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},  # config.json: rope_theta=100000
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    # Fine-tunes declaring _name_or_path "HuggingFaceTB/SmolLM2-1.7B" (e.g. aloobun/Pruned-SmolLM2-1.4B keeps
    # every other field); the -Instruct config.json (HuggingFaceTB) agrees except bos/eos 1/2. 1,711,376,384.
    "smollm2-1.7b": {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "default", "rope_theta": 130000.0},  # config.json: rope_theta=130000
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    # Hub configs declaring _name_or_path "Qwen/Qwen2.5-1.5B" (mergekit-ties-kxlqekl, kaitchup AutoRound).
    # 1,543,714,304 params. Qwen sliding_window left out: inert (None) while use_sliding_window is False.
    "qwen2.5-1.5b": {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},  # config.json: rope_theta=1e6
        "use_sliding_window": False,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    # huggingface.co/unsloth/Qwen2.5-3B config.json (_name_or_path "Qwen/Qwen2.5-3B"). 3,085,938,688 params.
    "qwen2.5-3b": {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},  # config.json: rope_theta=1e6
        "use_sliding_window": False,
        "max_window_layers": 36,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    # huggingface.co/Emm9625/Llama-3.2-1B-chatml ("Duplicate from unsloth/Llama-3.2-1B", _name_or_path
    # "meta-llama/Llama-3.2-1B") and further copies. 1,235,814,400 params.
    "llama-3.2-1b": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rope_parameters": dict(_LLAMA3_ROPE),
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
    # huggingface.co/unsloth/Llama-3.2-3B-bnb-4bit (_name_or_path "meta-llama/Llama-3.2-3B") and
    # mlx-community/Llama-3.2-3B-bf16 config.json. 3,212,749,824 params.
    "llama-3.2-3b": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rope_parameters": dict(_LLAMA3_ROPE),
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
    # Hub config.json copies of gemma-3-1b (MatanBT/mia-target-model, GorankLabs/Rank-Embed-1B). 999,885,952
    # params. config.json: rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=6.
    "gemma-3-1b": {
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 1152,
        "intermediate_size": 6912,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 32768,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "sliding_window": 512,  # unverified: 512 in gemma-3-270m configs; the 1b copies were truncated
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)],
        "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "rms_norm_eps": 1e-06,
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    },
    # Hub configs declaring _name_or_path "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" (onnx-community ONNX
    # export, bluryar sft, ...). Untied head, rope_theta 10000 (unlike Qwen2.5-1.5B). 1,777,088,000 params.
    "deepseek-r1-distill-qwen-1.5b": {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},  # config.json: rope_theta=10000
        "use_sliding_window": False,
        "max_window_layers": 21,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    # SmolLM3 config.json copies on the hub (koutch/0.json_train_grpo_v1_dev, sweatSmile/...-SmolLM3-3B-...)
    # and public code quoting HuggingFaceTB/SmolLM3-3B(-Base). NoPE on every 4th layer. 3,075,098,624 params.
    "smollm3-3b": {
        "model_type": "smollm3",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "max_position_embeddings": 65536,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0},  # config.json: rope_theta=5e6
        "no_rope_layer_interval": 4,
        "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(36)],  # 1 = RoPE, 0 = NoPE
        "layer_types": ["full_attention"] * 36,
        "use_sliding_window": False,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": None,  # unverified: copies disagree (null vs 128000); -Base has 128000
        "eos_token_id": 128012,  # the -Base checkpoint uses 128001
        "pad_token_id": 128004,
    },
}
